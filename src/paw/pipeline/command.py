"""`paw run`: the six-step experiment from a YAML config, with command-line overrides."""

from __future__ import annotations

import argparse
from importlib.resources import files
from pathlib import Path
from typing import Any

from paw.config import EXISTING_EXPERIMENT_ACTIONS, TRANSFER_METHODS, config_help, load_config
from paw.errors import PawError

# Unknown `--section.key value` options are config overrides (see the list in `paw run --help`).
ACCEPTS_OVERRIDES = True


def quick_test_config() -> Path:
    return Path(str(files("paw") / "configs" / "quick_test.yaml"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "Every config setting can be overridden as --SECTION.KEY VALUE:\n" + "\n".join(
        f"  --{key:<42} {help_text} (default: {default!r})" for key, help_text, default in config_help())
    parser.add_argument("--config", type=Path, help="YAML config (e.g. configs/server.yaml).")
    parser.add_argument("--quick_test", action="store_true",
                        help="The embedded default: gemma3-270m -> smollm2-135m on ARC-Easy, small sample, few steps.")
    parser.add_argument("--source_model", help="Override default_experiment.source_model.")
    parser.add_argument("--target_model", help="Override default_experiment.target_model.")
    parser.add_argument("--source_adapter", help="Use this existing source LoRA instead of training one (skips step 2).")
    parser.add_argument("--dataset", "--datasets", dest="datasets", action="append", nargs="+",
                        help="Task(s) to run (overrides training.datasets); one experiment each unless --mix_datasets.")
    parser.add_argument("--mix_datasets", action="store_true", help="Train one LoRA on all datasets mixed.")
    parser.add_argument("--method", "--methods", dest="methods", action="append", nargs="+",
                        choices=TRANSFER_METHODS, help="Transfer method(s) to compare (overrides transfer.methods).")
    parser.add_argument("--steps", help="Comma-separated subset of steps to run, e.g. 1,3,5 (default: all six).")
    parser.add_argument("--skip_train_target", action="store_true", help="Skip step 6 (training the target LoRA).")
    parser.add_argument("--sample_ratio", type=float, help="Override evaluation.sample_ratio.")
    parser.add_argument("--models_dir", help="Override paths.models_dir.")
    parser.add_argument("--experiments_dir", help="Override paths.experiments_dir.")
    parser.add_argument("--existing_experiment_action", choices=EXISTING_EXPERIMENT_ACTIONS,
                        help="What to do when the experiment folder exists.")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print the plan (steps, models, datasets, outputs) and exit without running.")


def parse_overrides(extra: list[str]) -> dict[str, Any]:
    """`--training.default_max_steps 200` / `--training.default_max_steps=200` -> {"training.default_max_steps": "200"}."""
    overrides: dict[str, Any] = {}
    tokens = list(extra)
    while tokens:
        token = tokens.pop(0)
        name, eq, value = token.partition("=")
        if not name.startswith("--") or "." not in name:
            raise PawError(f"unrecognized argument {token!r}; config overrides look like --training.default_max_steps 200 "
                           "(see `paw run --help`)")
        if not eq:
            if not tokens or tokens[0].startswith("--"):
                raise PawError(f"{name} needs a value, e.g. {name} VALUE")
            value = tokens.pop(0)
        overrides[name[2:]] = value
    return overrides


def parse_steps(text: str | None) -> set[int] | None:
    if not text:
        return None
    try:
        steps = {int(part) for part in text.replace(" ", "").split(",") if part}
    except ValueError:
        steps = set()
    if not steps or not steps <= set(range(1, 7)):
        raise PawError(f"--steps {text!r} is not a list of step numbers 1-6, e.g. --steps 1,3,5")
    return steps


def main(args: argparse.Namespace) -> int:
    from paw.pipeline.run import run_pipeline

    if args.config and args.quick_test:
        raise PawError("--quick_test uses its own config; pass either --config or --quick_test, not both")
    overrides = parse_overrides(args.extra)
    simple = {
        "default_experiment.source_model": args.source_model,
        "default_experiment.target_model": args.target_model,
        "default_experiment.source_adapter": args.source_adapter,
        "training.datasets": [d for group in args.datasets for d in group] if args.datasets else None,
        "training.mix_datasets": True if args.mix_datasets else None,
        "transfer.methods": [m for group in args.methods for m in group] if args.methods else None,
        "evaluation.sample_ratio": args.sample_ratio,
        "paths.models_dir": args.models_dir,
        "paths.experiments_dir": args.experiments_dir,
        "experiment_management.existing_experiment_action": args.existing_experiment_action,
    }
    overrides.update({key: value for key, value in simple.items() if value is not None})
    config = load_config(quick_test_config() if args.quick_test else args.config, overrides)
    folders = run_pipeline(config, steps=parse_steps(args.steps), skip_train_target=args.skip_train_target,
                           dry_run=args.dry_run)
    if not args.dry_run:
        for folder in folders:
            print(f"experiment finished: {folder}\n  summary: {folder / 'summary.md'}")
    return 0
