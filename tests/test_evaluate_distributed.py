"""Lightning scoring: two CPU processes (DDP, gloo) give the same records as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from paw.evaluate.distributed import _dataloaders, score_items_lightning
from paw.evaluate.scoring import score_items

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"

# Lightning's ddp strategy re-runs the launching script in each extra process, so the job lives in a script file.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from test_evaluate_scoring import ITEMS
    from paw.evaluate.distributed import is_global_zero, score_items_lightning

    folder, out = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # 7 items over 2 ranks: uneven shards, gathered back into item order.
    records = score_items_lightning(
        model, tokenizer, ITEMS + ITEMS[:2], batch_size=2, devices=2, strategy="ddp", accelerator="cpu"
    )
    if is_global_zero():
        json.dump([r.to_dict() for r in records], open(out, "w"))
    """
)


def _load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def test_two_process_ddp_equals_one_process(tiny_model, tmp_path):
    from test_evaluate_scoring import ITEMS

    folder = tiny_model("llama")
    script = tmp_path / "ddp_eval.py"
    script.write_text(SCRIPT)
    out = tmp_path / "records.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS)]), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(script), str(folder), str(out)], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads(out.read_text())

    model, tokenizer = _load(folder)
    single = [r.to_dict() for r in score_items(model, tokenizer, ITEMS + ITEMS[:2], batch_size=2)]
    assert [r["id"] for r in ddp] == [r["id"] for r in single]
    for a, b in zip(ddp, single):
        # Different batch neighbours change float rounding only.
        assert max(abs(x - y) for x, y in zip(a["loglikelihoods"], b["loglikelihoods"])) < 1e-4
        assert {k: v for k, v in a.items() if k != "loglikelihoods"} == {k: v for k, v in b.items() if k != "loglikelihoods"}


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
