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


def test_assets_lists_embedded_models_and_task_counts(capsys):
    assert main(["assets"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "gemma3-270m" in out
    for task, cell in [("arc-challenge", "test* 1172"), ("arc-easy", "test* 2376"), ("piqa", "validation* 1838"),
                       ("hellaswag", "validation* 10042"), ("winogrande", "validation* 1267")]:
        assert any(line.split()[:1] == [task] and cell in line for line in out.splitlines()), task
    assert "openbookqa" in out and "boolq" in out


def test_unknown_embedded_model_is_one_line_exit_2(capsys):
    assert main(["assets", "--models", "gpt-17"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("paw: error: unknown embedded model(s) gpt-17; valid: smollm2-135m, gemma3-270m")
    assert "\n" not in err
