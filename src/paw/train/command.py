"""`paw train`: train a LoRA adapter on one or more tasks' train split."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields
from typing import Any

from paw.train.config import PRECISIONS, PRESETS, STRATEGIES, TrainConfig

_CHOICES = {"preset": list(PRESETS), "precision": list(PRECISIONS), "strategy": list(STRATEGIES)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, with the field's help; unset options keep TrainConfig's defaults."""
    hints = typing.get_type_hints(TrainConfig)
    for spec in fields(TrainConfig):
        hint = hints[spec.name]
        default = spec.default_factory() if spec.default is MISSING else spec.default  # type: ignore[misc]
        help_text = spec.metadata["help"] + (f" (default: {default})" if default not in (None, "") else "")
        kwargs: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS, "help": help_text}
        names = [f"--{spec.name}"]
        if spec.name == "datasets":  # `--dataset a --dataset b` or `--datasets a b`
            names = ["--dataset", "--datasets"]
            kwargs.update(action="extend", nargs="+", metavar="TASK")
        elif hint is bool:
            kwargs["action"] = "store_true"
        elif list in (typing.get_origin(hint), *map(typing.get_origin, typing.get_args(hint))):
            kwargs["nargs"] = "+"
        else:
            scalar = next(t for t in (int, float, str) if t is hint or t in typing.get_args(hint))
            kwargs["type"] = scalar
            if spec.name in _CHOICES:
                kwargs["choices"] = _CHOICES[spec.name]
        parser.add_argument(*names, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {spec.name: getattr(args, spec.name) for spec in fields(TrainConfig) if hasattr(args, spec.name)}
    return TrainConfig(**given)


def main(args: argparse.Namespace) -> int:
    from paw.train.recipe import train_lora

    result = train_lora(config_from_args(args))
    if result.reused:
        print(f"reused the finished identical run (pass --force to retrain): {result.adapter_dir}")
    else:
        info = result.info
        print(f"trained {info['steps']} steps, final loss {result.final_loss:.4f}, "
              f"{info['tokens_per_s']:.0f} tokens/s: {result.adapter_dir}")
    if result.best_adapter_dir is not None:
        print(f"best validation accuracy {result.info['best']['val_acc']:.4f}: {result.best_adapter_dir}")
    return 0
