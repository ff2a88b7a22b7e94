"""`evaluate_model` and `paw eval` on tiny models and the embedded task data: files, reuse, errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from paw.cli import main as paw_main
from paw.evaluate import evaluate_model, load_records, score_items
from paw.tasks import load_items, sample_items


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A saved LoRA adapter (nonzero B) on the tiny llama."""
    from peft import LoraConfig, get_peft_model

    from tiny import make_model_dir

    base = make_model_dir(tmp_path_factory.getbasetemp() / "runner_models", "llama")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(3)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    folder = tmp_path_factory.mktemp("adapter") / "arc-lora"
    peft_model.save_pretrained(folder)
    return base, folder


def test_evaluate_model_writes_results_and_reuses_them(tiny_model, tmp_path, monkeypatch):
    folder = tiny_model("qwen2")
    out = tmp_path / "results"
    summary = evaluate_model(str(folder), ["arc-challenge", "winogrande"], limit=5, sample_ratio=0.5, output_dir=out)
    arc = summary["tasks"]["arc-challenge"]
    assert arc["metrics"]["n"] == 5 and not arc["reused"]
    assert arc["timing"]["questions_per_s"] > 0 and arc["memory"]["peak_rss_mb"] > 0
    records = load_records(arc["records"])
    # The same records as scoring the same deterministic subset directly.
    items = sample_items(load_items("arc-challenge"), 0.5)[:5]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    direct = score_items(model, AutoTokenizer.from_pretrained(folder), items)
    assert [r.id for r in records] == [i.id for i in items]
    assert [r.prediction for r in records] == [r.prediction for r in direct]
    assert max(abs(a - b) for r, d in zip(records, direct) for a, b in zip(r.loglikelihoods, d.loglikelihoods)) < 1e-4
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("model,task,split,n,acc")
    assert "| arc-challenge | test | 5 |" in (out / "results.md").read_text()
    saved = json.loads((out / summary["model"] / "arc-challenge" / "results.json").read_text())
    assert saved["versions"]["torch"] == torch.__version__ and saved["config"]["sample_ratio"] == 0.5

    before = _snapshot(out / summary["model"])
    again = evaluate_model(str(folder), ["arc-challenge", "winogrande"], limit=5, sample_ratio=0.5, output_dir=out)
    assert all(result["reused"] for result in again["tasks"].values())
    assert _snapshot(out / summary["model"]) == before
    # Written with a relative output_dir, reused from another working directory: the paths point at the files.
    monkeypatch.chdir(tmp_path)
    evaluate_model(str(folder), ["arc-challenge"], limit=4, output_dir="relative")
    monkeypatch.chdir(tmp_path.parent)
    moved = evaluate_model(str(folder), ["arc-challenge"], limit=4, output_dir=f"{tmp_path.name}/relative")
    assert moved["tasks"]["arc-challenge"]["reused"] and len(load_records(moved["tasks"]["arc-challenge"]["records"])) == 4
    # A different subset is a different result, not a reuse; --force re-scores.
    assert not evaluate_model(str(folder), ["arc-challenge"], limit=4, sample_ratio=0.5, output_dir=out)["tasks"][
        "arc-challenge"
    ]["reused"]
    assert not evaluate_model(str(folder), ["winogrande"], limit=5, sample_ratio=0.5, output_dir=out, force=True)[
        "tasks"
    ]["winogrande"]["reused"]


def test_adapter_is_scored_on_its_base(lora_dir, tmp_path):
    from peft import PeftModel

    base, adapter = lora_dir
    summary = evaluate_model(str(adapter), ["arc-easy"], limit=4, output_dir=tmp_path)
    assert summary["model"] == f"arc-lora@{base.name}"
    records = load_records(summary["tasks"]["arc-easy"]["records"])
    items = load_items("arc-easy")[:4]
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    base_records = score_items(plain, tokenizer, items)
    direct = score_items(PeftModel.from_pretrained(plain, adapter).eval(), tokenizer, items)
    diff = [abs(a - b) for r, d in zip(records, direct) for a, b in zip(r.loglikelihoods, d.loglikelihoods)]
    base_diff = [abs(a - b) for r, d in zip(records, base_records) for a, b in zip(r.loglikelihoods, d.loglikelihoods)]
    assert max(diff) < 1e-4 and max(base_diff) > 1e-2


def test_cli_bad_inputs_exit_2_and_leave_results(tiny_model, lora_dir, tmp_path, capsys):
    out = tmp_path / "results"
    llama = str(tiny_model("llama"))
    common = ["--output-dir", str(out), "--limit", "3"]
    assert paw_main(["eval", "--models_list", llama, "--dataset", "piqa", *common]) == 0
    before = _snapshot(out)
    capsys.readouterr()

    _, adapter = lora_dir
    qwen = str(tiny_model("qwen2", hidden=32, heads=2, kv_heads=1))
    bad = {
        "unknown task": (["--models_list", llama, "--dataset", "arc-impossible"], "unknown task"),
        "empty subset": (["--models_list", llama, "--dataset", "piqa", "--sample_ratio", "1e-9"], "selects none"),
        "adapter misfit": (["--adapter", str(adapter), "--base_model_path", qwen, "--dataset", "piqa"], "does not fit"),
        "no adapter": (["--models_list", llama, "--base_model_path", qwen, "--dataset", "piqa"], "no adapter was given"),
    }
    for why, (argv, message) in bad.items():
        assert paw_main(["eval", *argv, *common]) == 2, why
        err = capsys.readouterr().err.strip()
        assert err.startswith("paw: error:") and message in err and "\n" not in err, (why, err)
        assert _snapshot(out) == before, why
