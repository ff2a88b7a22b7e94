"""Two-process CPU DDP (gloo) through Lightning's own launcher: both ranks train, rank 0 writes one adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

SCRIPT = """
import os
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_train import config_for, fixture_items
from paw.models import load_base
from paw.train import train_lora

model_dir = {model_dir!r}
config = config_for(model_dir, {out!r}, devices=2, strategy="ddp", batch_size=2, max_steps=3)
result = train_lora(config, model=load_base(model_dir), items={{"fixture": fixture_items(12)}})
rank = os.environ.get("LOCAL_RANK", "0")
Path(f"result-{{rank}}.txt").write_text(f"{{result.adapter_dir}} {{result.steps}} {{result.reused}}")
"""


def test_two_process_ddp_trains_and_saves_one_adapter(tiny_model, tmp_path: Path) -> None:
    model_dir = tiny_model("llama")
    out = tmp_path / "runs"
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), model_dir=str(model_dir), out=str(out)))
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "PAW_PROGRESS": "off",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [(tmp_path / f"result-{rank}.txt").read_text().split() for rank in (0, 1)]
    assert results[0] == results[1] and results[0][1:] == ["3", "False"]  # both ranks return the one adapter

    (run_dir,) = out.iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == ["adapter", "metrics.jsonl"]
    info = json.loads((run_dir / "adapter" / "paw_run.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 3
    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert len(weights) == 4 * 2 * 2 and any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)
