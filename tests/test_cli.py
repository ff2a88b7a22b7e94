import subprocess
import sys

from paw.cli import COMMANDS, main, normalize_argv


def test_dash_and_underscore_spellings_are_the_same():
    assert normalize_argv(["run", "--quick-test", "--sample-ratio=0.5", "--training.default-max-steps", "-1"]) == [
        "run", "--quick_test", "--sample_ratio=0.5", "--training.default_max_steps", "-1"]


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "paw", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


def test_unknown_subcommand_exits_nonzero(capsys):
    try:
        code = main(["frobnicate"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
