"""`paw assets`: what the embedded default holds, and preparing it (GGUF -> HF conversion, once)."""

from __future__ import annotations

import argparse

from paw.errors import PawError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prepare", action="store_true",
                        help="Convert the embedded GGUF models into cached HF folders (once; later calls reuse them).")
    parser.add_argument("--models", nargs="*", default=None, metavar="NAME",
                        help="Only these embedded models (default: all).")


def main(args: argparse.Namespace) -> int:
    from paw.assets.embedded import embedded_models, prepare_model
    from paw.tasks import available_splits, get_task, task_names

    models = embedded_models()
    wanted = args.models or [m.name for m in models]
    unknown = sorted(set(wanted) - {m.name for m in models})
    if unknown:
        raise PawError(f"unknown embedded model(s) {', '.join(unknown)}; valid: {', '.join(m.name for m in models)}")
    if args.prepare:
        for name in wanted:
            print(f"preparing {name} ...", flush=True)
            print(f"  ready: {prepare_model(name)}", flush=True)
        models = embedded_models()

    print("Embedded models")
    for model in models:
        if model.name in wanted:
            state = "ready" if model.prepared else ("not converted (run `paw assets --prepare`)"
                                                    if model.installed else "package missing (run `make setup`)")
            print(f"  {model.name:<14} {model.family:<12} {state}  {model.path if model.prepared else ''}".rstrip())

    print("Embedded tasks (rows per split; * = default evaluation split)")
    for name in task_names():
        try:
            splits = available_splits(name, source="embedded")
        except PawError as exc:
            print(f"  {name:<14} unavailable: {exc}")
            continue
        default = get_task(name).default_eval_split
        cells = [f"{split}{'*' if split == default else ''} {count}" for split, count in splits.items()]
        print(f"  {name:<14} " + ", ".join(cells))
    return 0
