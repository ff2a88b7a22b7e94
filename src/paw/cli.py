"""`paw` command line: one subcommand per pipeline part, each defined in `paw/<part>/command.py`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from paw import __version__
from paw.errors import PawError

# Subcommand -> (module with add_arguments/main, one-line help). Imported lazily so `paw --help` is instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("paw.pipeline.command", "Run the six-step transfer experiment (eval, train, transfer, eval, eval, train)."),
    "eval": ("paw.evaluate.command", "Evaluate base models or adapters on multiple-choice benchmarks."),
    "train": ("paw.train.command", "Train a LoRA adapter with Lightning + PEFT."),
    "transfer": ("paw.transfer.command", "Move a LoRA adapter from its base model to a different base model."),
    "report": ("paw.report.command", "Rebuild experiment reports and compare many experiments."),
    "assets": ("paw.assets.command", "Show and prepare the embedded models and benchmark data."),
}


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Accept `--sample-ratio` and `--sample_ratio` alike: option names are spelled with underscores inside."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token.partition("=")
            token = "--" + name[2:].replace("-", "_") + eq + value
        out.append(token)
    return out


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paw",
        description="PAW — Parameter-Aware Weight Transfer: move a LoRA adapter to a different base LLM "
        "and measure how much of its skill survived. Options accept dashes or underscores.",
    )
    parser.add_argument("--version", action="version", version=f"paw {__version__}")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks for errors.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="Show full tracebacks.")
        if name == command:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    return next((token for token in argv if token in COMMANDS), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = normalize_argv(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    debug = "--debug" in argv or os.environ.get("PAW_DEBUG") == "1"
    try:
        parser = build_parser(command)
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        module = importlib.import_module(COMMANDS[args.command][0])
        if extra and not getattr(module, "ACCEPTS_OVERRIDES", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
        return int(module.main(args) or 0)
    except PawError as exc:
        if debug:
            raise
        print(f"paw: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("paw: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as other command-line tools do.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 — Python flushes stdout again at exit
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
