"""`paw eval`: score base models and LoRA adapters on multiple-choice benchmarks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paw.errors import PawError


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models_list", nargs="+", default=[], metavar="MODEL",
                        help="Base models (embedded name, folder under --models_dir, path, hub id) or adapter folders.")
    parser.add_argument("--adapter", action="append", default=[], metavar="DIR",
                        help="LoRA adapter folder to evaluate (repeatable), on --base_model_path or its recorded base.")
    parser.add_argument("--base_model_path", default=None, metavar="MODEL",
                        help="The base the adapters are attached to (default: the base recorded in each adapter).")
    parser.add_argument("--dataset", action="append", default=[], metavar="TASK", required=True,
                        help="Task to evaluate (repeatable), e.g. arc-challenge, piqa, winogrande.")
    parser.add_argument("--sample_ratio", type=float, default=1.0,
                        help="Fraction of each split to score; the same items for every model (default 1.0).")
    parser.add_argument("--batch_size", type=_batch_size, default=8,
                        help="Questions per forward pass, or 'auto' (halves on out-of-memory). Default 8.")
    parser.add_argument("--limit", type=int, default=None, help="Score at most N items per task (after sampling).")
    parser.add_argument("--split", default=None, help="Split to score (default: lm-evaluation-harness's for the task).")
    parser.add_argument("--output_dir", default="results", help="Where result files go (default: results/).")
    parser.add_argument("--force", action="store_true", help="Re-score even when a matching result exists.")
    parser.add_argument("--devices", type=int, default=1, help="Processes/devices for a Lightning job (default 1).")
    parser.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp (default auto).")
    parser.add_argument("--data_source", default="embedded", choices=("embedded", "hub", "local"),
                        help="Where task data comes from (default: embedded).")
    parser.add_argument("--data_dir", default=None, help="Folder or file for --data_source local.")
    parser.add_argument("--models_dir", default=None, help="Folder holding models by name (default ../models).")
    parser.add_argument("--dtype", default="auto",
                        help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16.")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from paw.evaluate.distributed import is_global_zero
    from paw.evaluate.runner import evaluate_model

    from paw.models import is_adapter_dir

    models = [*args.models_list, *args.adapter]
    if not models:
        raise PawError("nothing to evaluate; pass --models_list MODEL [MODEL ...] and/or --adapter DIR")
    if args.base_model_path and not any(is_adapter_dir(m) for m in models):
        raise PawError("--base_model_path is the base for adapters, but no adapter was given; pass --adapter DIR")
    summary = {}
    for model in models:
        summary = evaluate_model(
            model,
            args.dataset,
            sample_ratio=args.sample_ratio,
            batch_size=args.batch_size,
            split=args.split,
            limit=args.limit,
            base_model_path=args.base_model_path if is_adapter_dir(model) else None,
            output_dir=args.output_dir,
            force=args.force,
            devices=args.devices,
            strategy=args.strategy,
            data_source=args.data_source,
            data_dir=args.data_dir,
            models_dir=args.models_dir,
            dtype=args.dtype,
        )
    if is_global_zero():
        sys.stdout.write(Path(summary["markdown"]).read_text(encoding="utf-8"))
        print(f"results: {summary['csv']}, {summary['markdown']}")
    return 0
