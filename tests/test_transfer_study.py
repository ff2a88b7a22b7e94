"""benchmarks/transfer_study.py's report on fabricated per-item records: R, retention, counting rule, files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from paw.evaluate.metrics import save_records
from paw.evaluate.scoring import ItemRecord

N = 200


def _study_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer_study.py"
    spec = importlib.util.spec_from_file_location("transfer_study", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _records(path: Path, task: str, correct: int) -> str:
    """N two-choice items of which the first `correct` are answered right."""
    rows = [ItemRecord(id=str(i), task=task, loglikelihoods=[0.0, -1.0] if i < correct else [-1.0, 0.0],
                       num_tokens=[1, 1], prediction=0 if i < correct else 1,
                       prediction_norm=0 if i < correct else 1, gold=0) for i in range(N)]
    save_records(path, rows)
    return str(path)


def _eval(tmp: Path, name: str, task: str, correct: int) -> dict:
    return {"metrics": {"n": N, "acc": correct / N}, "records": _records(tmp / f"{name}-{task}.jsonl", task, correct)}


def test_study_report_recovery_counting_and_files(tmp_path):
    study = _study_module()
    config, _ = study.parse_args(["--study_dir", str(tmp_path / "study"), "--results_dir", str(tmp_path / "results"),
                                  "--tasks", "arc-easy", "piqa", "--models", "big", "small"])
    # small (the target of big -> small): base 50%, trained 70% on arc-easy (counted); 50% -> 51% on piqa (not).
    accuracy = {("big", "arc-easy"): (60, 80), ("small", "arc-easy"): (100, 140),
                ("big", "piqa"): (100, 120), ("small", "piqa"): (100, 102)}
    models = {f"{m}/{t}": {"train": {"adapter": "x", "wall_time_s": 100.0, "tokens": 1000},
                           "base": _eval(tmp_path, f"{m}-base", t, base), "lora": _eval(tmp_path, f"{m}-lora", t, tuned)}
              for (m, t), (base, tuned) in accuracy.items()}
    moved = {"paw": 120, "random": 100, "paw+distill": 136, "paw[depth-map]": 110}  # arc-easy: R = 0.5, 0, 0.9, 0.25
    transfers = {f"big__small/{t}/{method}": {"wall_time_s": 5.0 if method != "paw+distill" else 9.0,
                                              "eval": _eval(tmp_path, f"moved-{method}", t, correct if t == "arc-easy" else 101)}
                 for t in ("arc-easy", "piqa") for method, correct in moved.items()}
    study.write_study_report(config, {"models": models, "transfers": transfers})

    result = json.loads((tmp_path / "results" / "transfer_study.json").read_text())
    (summary, analysis), = [(d["summary"], d["analysis"]) for d in result["directions"] if d["summary"]["source"] == "big"]
    assert summary["counted_tasks"] == ["arc-easy"] and summary["not_counted"] == {"piqa": pytest.approx(1.0)}
    assert summary["recovery_at_full_retention"] == {"per_task": {"arc-easy": pytest.approx(0.5)},
                                                     "mean": pytest.approx(0.5)}  # source +10 points, trained +20
    assert summary["methods"]["paw"]["mean_recovery"] == pytest.approx(0.5)
    assert summary["methods"]["random"]["mean_recovery"] == pytest.approx(0.0)
    assert summary["methods"]["paw+distill"]["mean_recovery"] == pytest.approx(0.9)
    assert summary["methods"]["paw+distill"]["cost_ratio"] == pytest.approx(18.0 / 200.0)
    assert summary["methods"]["paw"]["tasks_above_every_baseline"] == ["arc-easy"]  # random's interval is below;
    # ablations are not baselines
    paw = analysis["arc-easy"]["methods"]["paw"]
    assert paw["recovery"]["low"] < 0.5 < paw["recovery"]["high"] and paw["retention"] == pytest.approx(1.0)
    assert analysis["piqa"]["methods"]["paw"]["recovery"]["judged"] is False

    markdown = (tmp_path / "results" / "transfer_study.md").read_text()
    assert "Not counted (target-trained gain in points): piqa (+1.0)" in markdown and "**0.50**" in markdown
    assert "| arc-easy | +20.0 | +10.0 | 0.50 | " in markdown  # R at retention 1 beside the gains
    assert "| paw[depth-map] | 0.25 [" in markdown and "| paw | paw+distill |" not in markdown
    assert "big->small,arc-easy,paw,True,0.5," in (tmp_path / "results" / "transfer_study.csv").read_text()
    assert (tmp_path / "results" / "transfer_recovery.png").stat().st_size > 10_000
    assert (tmp_path / "results" / "big__small.md").exists()
