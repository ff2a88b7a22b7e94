"""Paired statistics over per-item records: accuracy intervals, recovery, McNemar.

Every comparison is paired: the same question ids, scored by different models. Intervals come from a
bootstrap over questions with a fixed seed, so a report rebuilt from the same records gives the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 1234
# Below this target-LoRA gain (in accuracy points), recovery is a ratio of noise and is not reported.
MIN_TRAINED_GAIN_POINTS = 3.0


def read_correct(records_file: str | Path, metric: str = "acc") -> dict[str, bool]:
    """{item id: answered correctly} from a per-item JSONL (`prediction` for acc, `prediction_norm` for acc_norm)."""
    key = "prediction" if metric == "acc" else "prediction_norm"
    out = {}
    with open(records_file, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                out[str(row["id"])] = int(row[key]) == int(row["gold"])
    return out


def aligned(*runs: dict[str, bool]) -> np.ndarray:
    """A (runs, items) 0/1 matrix over the ids every run scored, in a fixed order."""
    ids = sorted(set.intersection(*(set(r) for r in runs)))
    return np.array([[run[i] for i in ids] for run in runs], dtype=np.float64)


def _bootstrap_indices(n: int) -> np.ndarray:
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    return rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))


def accuracy_interval(correct: np.ndarray) -> tuple[float, float, float]:
    """(accuracy, 2.5%, 97.5%) in points."""
    if correct.size == 0:
        return float("nan"), float("nan"), float("nan")
    samples = correct[_bootstrap_indices(correct.size)].mean(axis=1)
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return 100 * correct.mean(), 100 * lo, 100 * hi


def gain_interval(new: np.ndarray, base: np.ndarray) -> tuple[float, float, float]:
    """Paired accuracy difference new − base in points, with its bootstrap interval."""
    diff = new - base
    return accuracy_interval(diff) if diff.size else (float("nan"),) * 3


def recovery_interval(transferred: np.ndarray, base: np.ndarray, trained: np.ndarray) -> dict[str, float | bool | str]:
    """R = (acc(transferred) − acc(base)) / (acc(trained) − acc(base)) with a paired bootstrap interval.

    When the trained LoRA gains less than MIN_TRAINED_GAIN_POINTS the ratio is noise: `judged` is False.
    """
    gain_trained = 100 * (trained.mean() - base.mean())
    gain_transferred = 100 * (transferred.mean() - base.mean())
    result: dict[str, float | bool | str] = {"gain_trained": gain_trained, "gain_transferred": gain_transferred}
    if gain_trained < MIN_TRAINED_GAIN_POINTS:
        result.update(judged=False, note=f"target-trained gain {gain_trained:+.1f} pts < {MIN_TRAINED_GAIN_POINTS:.0f}: "
                      "too small to judge recovery")
        return result
    idx = _bootstrap_indices(base.size)
    num = transferred[idx].mean(axis=1) - base[idx].mean(axis=1)
    den = trained[idx].mean(axis=1) - base[idx].mean(axis=1)
    ratios = num[den > 0] / den[den > 0]
    lo, hi = np.percentile(ratios, [2.5, 97.5]) if ratios.size else (float("nan"), float("nan"))
    result.update(judged=True, recovery=gain_transferred / gain_trained, low=float(lo), high=float(hi))
    return result


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Exact McNemar test of two paired 0/1 vectors: is b right where a is wrong more often than the reverse?"""
    b_only = int(((b == 1) & (a == 0)).sum())
    a_only = int(((a == 1) & (b == 0)).sum())
    n = a_only + b_only
    p = binomtest(b_only, n, 0.5).pvalue if n else 1.0
    return {"b_only": b_only, "a_only": a_only, "p_value": float(p)}
