"""Accuracy metrics over item records, their uncertainty, and paired comparisons of two runs on the same items.

`acc_stderr` is lm-eval's (sample standard deviation / sqrt(n)). Bootstrap intervals resample items with a fixed
seed, so the same records always give the same interval; paired statistics resample the same items in every run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from paw.errors import PawError
from paw.evaluate.scoring import ItemRecord
from paw.io import atomic_write_jsonl

METRICS = ("acc", "acc_norm")
BOOTSTRAP_ITERS = 10_000
BOOTSTRAP_SEED = 1234


def correctness(records: Sequence[ItemRecord], metric: str = "acc") -> np.ndarray:
    """1.0 where the record's (normalised, for acc_norm) prediction is the gold choice, else 0.0."""
    if metric not in METRICS:
        raise PawError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    attr = "correct" if metric == "acc" else "correct_norm"
    return np.array([float(getattr(r, attr)) for r in records])


def sample_stderr(values: np.ndarray) -> float:
    """lm-eval's `mean_stderr`: sample standard deviation (n - 1) over sqrt(n)."""
    n = len(values)
    return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def paired_bootstrap(
    record_sets: Sequence[Sequence[ItemRecord]],
    statistic: Callable[..., np.ndarray],
    *,
    metric: str = "acc",
    iters: int = BOOTSTRAP_ITERS,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Bootstrap a statistic of several runs' accuracies, resampling the same items in every run.

    `statistic` gets one array of accuracies per record set (shape: resamples) and returns an array; e.g. the
    pipeline's recovery is `lambda base, tuned, tgt, moved: (moved - tgt) / (tuned - base)`. Returns the statistic
    on the full data (`value`) and the percentile interval (`low`, `high`); resamples where the statistic is not
    finite (a zero denominator) are dropped and counted in `dropped`.
    """
    matrix = np.stack([correctness(records, metric) for records in _aligned(record_sets)])  # (runs, items)
    n = matrix.shape[1]
    # Resampling items only changes how often each joint right/wrong pattern occurs, so drawing the pattern
    # counts from a multinomial is the same bootstrap at the cost of at most 2^runs categories, not n.
    patterns, counts = np.unique(matrix.T, axis=0, return_counts=True)
    rng = np.random.default_rng(seed)
    means = rng.multinomial(n, counts / n, size=iters) @ patterns / n  # (resamples, runs)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(statistic(*matrix.mean(axis=1)[:, None])[0])
        samples = np.asarray(statistic(*means.T), dtype=float)
    finite = samples[np.isfinite(samples)]
    alpha = (1.0 - confidence) / 2.0
    low, high = (np.quantile(finite, [alpha, 1.0 - alpha]) if len(finite) else (float("nan"), float("nan")))
    return {"value": value, "low": float(low), "high": float(high), "dropped": int(len(samples) - len(finite))}


def bootstrap_interval(
    records: Sequence[ItemRecord], metric: str = "acc", **kwargs: float | int
) -> tuple[float, float]:
    """Percentile bootstrap interval of one run's accuracy."""
    result = paired_bootstrap([records], lambda acc: acc, metric=metric, **kwargs)
    return result["low"], result["high"]


def paired_bootstrap_diff(
    records_a: Sequence[ItemRecord],
    records_b: Sequence[ItemRecord],
    *,
    metric: str = "acc",
    iters: int = BOOTSTRAP_ITERS,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> dict[str, float]:
    """acc(b) - acc(a) on the same items, with its paired bootstrap interval."""
    return paired_bootstrap(
        [records_a, records_b], lambda a, b: b - a, metric=metric, iters=iters, seed=seed, confidence=confidence
    )


def mcnemar(
    records_a: Sequence[ItemRecord], records_b: Sequence[ItemRecord], *, metric: str = "acc"
) -> dict[str, float]:
    """Exact (binomial) McNemar test on items where exactly one of two runs is right.

    Returns `a_only` (a right, b wrong), `b_only`, `n` items and the two-sided `p_value`.
    """
    a, b = (correctness(r, metric) for r in _aligned([records_a, records_b]))
    a_only, b_only = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    discordant = a_only + b_only
    tail = sum(math.comb(discordant, k) for k in range(min(a_only, b_only) + 1))
    p_value = min(1.0, 2.0 * tail / 2**discordant) if discordant else 1.0
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "p_value": p_value}


def compute_metrics(records: Sequence[ItemRecord], **bootstrap: float | int) -> dict[str, float]:
    """acc and acc_norm with lm-eval's standard errors and 95% bootstrap intervals (fixed seed), and n."""
    if not records:
        raise PawError("no records to compute metrics from; the task produced no items")
    out: dict[str, float] = {"n": len(records)}
    for metric in METRICS:
        values = correctness(records, metric)
        low, high = bootstrap_interval(records, metric, **bootstrap)
        out[metric] = float(values.mean())
        out[f"{metric}_stderr"] = sample_stderr(values)
        out[f"{metric}_ci_low"] = low
        out[f"{metric}_ci_high"] = high
    return out


def _aligned(record_sets: Sequence[Sequence[ItemRecord]]) -> list[list[ItemRecord]]:
    """The record sets, each ordered like the first; they must cover the same item ids."""
    first = [r.id for r in record_sets[0]]
    aligned = []
    for records in record_sets:
        by_id = {r.id: r for r in records}
        if len(by_id) != len(records) or set(by_id) != set(first):
            raise PawError(
                "compared runs must score the same items (same task, split and sample_ratio); "
                f"got {len(first)} and {len(records)} records with different ids"
            )
        aligned.append([by_id[i] for i in first])
    return aligned


def save_records(path: str | Path, records: Sequence[ItemRecord]) -> Path:
    """Per-item records as JSONL (one line per item), written atomically."""
    return atomic_write_jsonl(path, [r.to_dict() for r in records])


def load_records(path: str | Path) -> list[ItemRecord]:
    with open(path, encoding="utf-8") as handle:
        return [ItemRecord.from_dict(json.loads(line)) for line in handle if line.strip()]
