"""Log-likelihood multiple-choice evaluation (pipeline steps 1, 4, 5): scoring, metrics, `paw eval`."""

from paw.evaluate.metrics import (
    compute_metrics,
    load_records,
    mcnemar,
    paired_bootstrap,
    paired_bootstrap_diff,
    save_records,
)
from paw.evaluate.runner import evaluate_model
from paw.evaluate.scoring import ItemRecord, score_items, score_items_reference

__all__ = [
    "ItemRecord",
    "compute_metrics",
    "evaluate_model",
    "load_records",
    "mcnemar",
    "paired_bootstrap",
    "paired_bootstrap_diff",
    "save_records",
    "score_items",
    "score_items_reference",
]
