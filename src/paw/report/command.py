"""`paw report EXPERIMENT_DIR...`: rebuild each experiment's reports and compare them in one table."""

from __future__ import annotations

import argparse
from pathlib import Path

from paw.io import atomic_write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiments", nargs="+", type=Path, metavar="EXPERIMENT_DIR",
                        help="Experiment folders made by `paw run`.")
    parser.add_argument("--output", type=Path, default=None,
                        help="Also write the comparison table to this Markdown file.")


def main(args: argparse.Namespace) -> int:
    from paw.report import comparison_markdown, write_reports

    for folder in args.experiments:
        write_reports(folder)
        print(f"rebuilt {folder / 'summary.md'}, summary.png, results.csv")
    table = comparison_markdown(args.experiments)
    print(table)
    if args.output:
        atomic_write_text(args.output, table)
    return 0
