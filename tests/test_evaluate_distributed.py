"""Lightning scoring: two CPU processes (DDP, gloo) give the same records as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from paw.cli import main as paw_main
from paw.evaluate import load_records
from paw.evaluate.distributed import _dataloaders, score_items_lightning
from paw.evaluate.scoring import score_items

SRC = Path(__file__).parent.parent / "src"


def _load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def test_two_process_ddp_eval_equals_one_process(tiny_model, tmp_path):
    """`paw eval --devices 2 --strategy ddp`: Lightning re-launches the command in a second process; rank 0
    writes records equal to a one-process run's."""
    folder = str(tiny_model("llama"))
    # 5 items per task over 2 ranks: uneven shards, gathered back into item order.
    common = ["eval", "--models_list", folder, "--dataset", "arc-challenge", "--dataset", "winogrande", "--limit", "5"]
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", PAW_PROGRESS="off")
    done = subprocess.run(
        [sys.executable, "-m", "paw", *common, "--output_dir", str(tmp_path / "ddp"), "--devices", "2", "--strategy", "ddp"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert paw_main([*common, "--output_dir", str(tmp_path / "one")]) == 0
    for task in ("arc-challenge", "winogrande"):
        ddp = load_records(next((tmp_path / "ddp").glob(f"*/{task}/records.jsonl")))
        one = load_records(next((tmp_path / "one").glob(f"*/{task}/records.jsonl")))
        assert [r.id for r in ddp] == [r.id for r in one] and len(one) == 5
        for a, b in zip(ddp, one):
            # Different batch neighbours change float rounding only.
            assert max(abs(x - y) for x, y in zip(a.loglikelihoods, b.loglikelihoods)) < 1e-4
            assert (a.prediction, a.prediction_norm, a.is_greedy) == (b.prediction, b.prediction_norm, b.is_greedy)
    ddp_result = json.loads(next((tmp_path / "ddp").glob("*/winogrande/results.json")).read_text())
    assert ddp_result["config"]["devices"] == 2 and ddp_result["metrics"]["n"] == 5


def test_one_device_lightning_job_equals_score_items(tiny_model):
    from test_evaluate_scoring import ITEMS

    model, tokenizer = _load(tiny_model("gemma3_text"))
    lightning = score_items_lightning(model, tokenizer, ITEMS, batch_size=2, devices=1, accelerator="cpu")
    assert lightning == score_items(model, tokenizer, ITEMS, batch_size=2)


def test_dataloader_containers():
    from lightning.pytorch.utilities import CombinedLoader
    from torch.utils.data import DataLoader

    a, b = DataLoader([1, 2]), DataLoader([3])
    assert _dataloaders(a) == [a]
    assert _dataloaders([a, b]) == [a, b]
    assert _dataloaders(CombinedLoader({"x": a, "y": [b]}, mode="sequential")) == [a, b]
    assert _dataloaders(None) == []
