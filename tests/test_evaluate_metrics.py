"""Metrics and paired comparisons on hand-computed records."""

from __future__ import annotations

import math

import pytest

from paw.errors import PawError
from paw.evaluate.metrics import (
    compute_metrics,
    load_records,
    mcnemar,
    paired_bootstrap,
    paired_bootstrap_diff,
    save_records,
)
from paw.evaluate.scoring import ItemRecord


def _records(correct: list[int], correct_norm: list[int] | None = None, prefix: str = "q") -> list[ItemRecord]:
    correct_norm = correct if correct_norm is None else correct_norm
    return [
        ItemRecord(f"{prefix}{i}", "t", [-1.0, -2.0], [1, 1], c, n, 1, [False, False])
        for i, (c, n) in enumerate(zip(correct, correct_norm))
    ]


def test_compute_metrics_by_hand():
    records = _records([1, 1, 1, 0], [1, 0, 0, 0])
    metrics = compute_metrics(records, iters=2000)
    assert metrics["n"] == 4
    assert metrics["acc"] == 0.75 and metrics["acc_norm"] == 0.25
    # lm-eval: sqrt(sum((x - mean)^2) / (n - 1)) / sqrt(n) = sqrt(0.75 / 3) / 2
    assert metrics["acc_stderr"] == pytest.approx(math.sqrt(0.75 / 3) / 2)
    assert metrics["acc_norm_stderr"] == pytest.approx(math.sqrt(0.75 / 3) / 2)
    assert 0.0 <= metrics["acc_ci_low"] < 0.75 < metrics["acc_ci_high"] <= 1.0
    assert compute_metrics(records, iters=2000) == metrics  # fixed seed: the same interval every time


def test_bootstrap_interval_width_shrinks_with_n_and_is_degenerate_when_all_right():
    small = compute_metrics(_records([1, 0] * 10))
    large = compute_metrics(_records([1, 0] * 500))
    assert small["acc_ci_high"] - small["acc_ci_low"] > 2 * (large["acc_ci_high"] - large["acc_ci_low"])
    # 95% interval of a proportion 0.5 over 1000 items: about +-1.96 * sqrt(0.25 / 1000) = +-0.031
    assert large["acc_ci_low"] == pytest.approx(0.5 - 0.031, abs=0.005)
    everything = compute_metrics(_records([1] * 30))
    assert (everything["acc_ci_low"], everything["acc_ci_high"]) == (1.0, 1.0)


def test_mcnemar_exact_binomial():
    a = _records([1, 1, 1, 1, 1, 0, 0, 1])
    b = _records([0, 0, 0, 0, 0, 0, 1, 1])
    result = mcnemar(a, b)
    # discordant: a_only = 5, b_only = 1; p = 2 * P(X <= 1 | Bin(6, 1/2)) = 2 * 7 / 64
    assert (result["n"], result["a_only"], result["b_only"]) == (8, 5, 1)
    assert result["p_value"] == pytest.approx(14 / 64)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_paired_diff_and_custom_statistic_align_items_by_id():
    a = _records([1, 0, 0, 0] * 25)
    b = _records([1, 1, 0, 0] * 25)
    diff = paired_bootstrap_diff(a, list(reversed(b)))  # order does not matter, ids do
    assert diff["value"] == pytest.approx(0.25)
    assert 0.15 < diff["low"] < 0.25 < diff["high"] < 0.35
    # Recovery-style ratio: (moved - target) / (tuned - base); a zero denominator drops that resample.
    ratio = paired_bootstrap([a, b, a, b], lambda base, tuned, tgt, moved: (moved - tgt) / (tuned - base), iters=500)
    assert ratio["value"] == pytest.approx(1.0) and ratio["low"] == pytest.approx(1.0)
    with pytest.raises(PawError, match="same items"):
        mcnemar(a, _records([1] * 100, prefix="other"))


def test_records_round_trip_jsonl(tmp_path):
    records = _records([1, 0, 1])
    path = save_records(tmp_path / "items.jsonl", records)
    assert load_records(path) == records
    assert path.read_text().count("\n") == 3
    with pytest.raises(PawError):
        compute_metrics([])


def test_pattern_bootstrap_matches_resampling_items():
    """Drawing joint right/wrong pattern counts is the item bootstrap; compare with resampling ids directly."""
    import numpy as np

    rng = np.random.default_rng(0)
    a_right, b_right = rng.random(300) < 0.6, rng.random(300) < 0.7
    a, b = _records(list(a_right.astype(int))), _records(list(b_right.astype(int)))
    ours = paired_bootstrap_diff(a, b, iters=20000)
    picks = np.random.default_rng(1).integers(0, 300, size=(20000, 300))
    naive = np.quantile(b_right[picks].mean(1) - a_right[picks].mean(1), [0.025, 0.975])
    assert ours["low"] == pytest.approx(naive[0], abs=0.01) and ours["high"] == pytest.approx(naive[1], abs=0.01)
