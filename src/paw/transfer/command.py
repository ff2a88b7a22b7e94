"""`paw transfer`: move a LoRA adapter to another base model and print what was transferred."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paw.errors import PawError
from paw.transfer.api import LAYER_MAPS, METHODS, format_report_table, transfer_adapter
from paw.transfer.distill import DISTILL_OBJECTIVES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source_adapter", required=True, help="PEFT LoRA adapter folder trained on the source model.")
    parser.add_argument("--source_model", required=True, help="Base model the adapter was trained on (name or path).")
    parser.add_argument("--target_model", required=True, help="Base model to move the adapter to (name or path).")
    parser.add_argument("--method", default="paw", choices=METHODS, help="Transfer method (default: paw).")
    parser.add_argument("--output_dir", required=True, help="Folder for the target adapter and transfer_report.json.")
    parser.add_argument("--rank", type=int, help="Rank of the written adapter (default: the source rank).")
    parser.add_argument("--similarity_threshold", type=float, default=0.0,
                        help="Skip modules whose normalised similarity (0..1, 1 = identical) is lower (default 0).")
    calibration = parser.add_mutually_exclusive_group()
    calibration.add_argument("--calibration_file", type=Path,
                             help="Unlabeled prompts: a .txt file (one per line) or .jsonl with a \"text\" field.")
    calibration.add_argument("--dataset", action="append", help="Task(s) whose unlabeled prompts calibrate paw.")
    parser.add_argument("--calibration_size", type=int, default=128, help="Calibration prompts used (default 128).")
    parser.add_argument("--distill_steps", type=int, default=0,
                        help="Distillation steps against the source+LoRA teacher after the transfer (default 0: off).")
    parser.add_argument("--distill_objective", choices=DISTILL_OBJECTIVES, default="shift",
                        help="shift: the target base moved by the source LoRA's change (default); teacher: imitate "
                             "source+LoRA itself.")
    parser.add_argument("--layer_map", choices=LAYER_MAPS,
                        help="Source-to-target layer map: cka (paw's default between bases of different depth) or depth.")
    parser.add_argument("--modules", nargs="+", metavar="NAME",
                        help="Transfer only these adapted modules, e.g. q_proj v_proj (default: all).")
    parser.add_argument("--models_dir", help="Folder of local models (see paw.models).")


def read_calibration_file(path: Path) -> list[str]:
    """Prompts from a text file (one per non-empty line) or a JSON-lines file with a "text" field."""
    if not path.is_file():
        raise PawError(f"calibration file {path} does not exist; pass a .txt (one prompt per line) or .jsonl file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    try:
        return [str(json.loads(line)["text"]) for line in lines]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise PawError(f"calibration file {path} is not JSON lines with a \"text\" field; fix it or use a .txt file") from None


def main(args: argparse.Namespace) -> int:
    result = transfer_adapter(
        args.source_adapter,
        source_model=args.source_model,
        target_model=args.target_model,
        method=args.method,
        output_dir=args.output_dir,
        rank=args.rank,
        similarity_threshold=args.similarity_threshold,
        calibration_texts=read_calibration_file(args.calibration_file) if args.calibration_file else None,
        calibration_tasks=args.dataset,
        calibration_size=args.calibration_size,
        distill_steps=args.distill_steps,
        distill_objective=args.distill_objective,
        layer_map=args.layer_map,
        modules=args.modules,
        models_dir=args.models_dir,
    )
    print(format_report_table(result.report))
    print(f"adapter written to {result.output_dir}")
    return 0
