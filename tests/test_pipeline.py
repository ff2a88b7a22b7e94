"""The six-step pipeline on tiny random models and real embedded task data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paw.cli import main
from paw.config import load_config
from paw.errors import PawError
from paw.pipeline import run_pipeline
from paw.pipeline import run as pipeline_run

CONFIGS = Path(__file__).parents[1] / "src" / "paw" / "configs"


@pytest.fixture()
def tiny_config(tiny_model, tmp_path):
    source = tiny_model("llama", hidden=64, layers=2)
    target = tiny_model("qwen2", hidden=96, layers=3, heads=4, kv_heads=2, seed=1)

    def make(**overrides):
        values = {
            "default_experiment.source_model": str(source),
            "default_experiment.target_model": str(target),
            "paths.experiments_dir": str(tmp_path / "experiments"),
            "paths.results_dir": str(tmp_path / "results"),
            "training.datasets": ["arc-easy"],
            "training.default_max_steps": 2,
            "training.default_batch_size": 2,
            "training.max_length": 128,
            "training.precision": "32",
            "evaluation.limit": 12,
            "evaluation.default_batch_size": 4,
            "transfer.methods": ["copy", "paw"],
            "transfer.calibration_size": 8,
            "tracking.swanlab_mode": "disabled",
            "experiment_management.existing_experiment_action": "continue",
            "general.timestamp": "t0",
        }
        values.update(overrides)
        return load_config(CONFIGS / "quick_test.yaml", values)

    return make


def _state(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())["steps"]


def test_six_steps_then_resume_after_a_crash_and_rerun_on_changed_lr(tiny_config, monkeypatch):
    config = tiny_config()

    # A crash right after step 3: steps 1-3 are recorded, nothing after.
    real_evaluate = pipeline_run._evaluate
    calls: list[str] = []

    def crash_at_step_4(cfg, model, adapter, tasks, out):
        if out.name == "4_eval_target_base":
            raise RuntimeError("simulated kill after step 3")
        calls.append(out.name)
        return real_evaluate(cfg, model, adapter, tasks, out)

    monkeypatch.setattr(pipeline_run, "_evaluate", crash_at_step_4)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_pipeline(config)
    folder = next((Path(config.paths.experiments_dir)).iterdir())
    assert sorted(_state(folder)) == ["1_eval_source_base", "2_train_source_lora", "3_transfer_copy", "3_transfer_paw"]

    # Continue: 1-3 are reused, 4-6 run, reports are written.
    monkeypatch.setattr(pipeline_run, "_evaluate", lambda *a: calls.append(a[-1].name) or real_evaluate(*a))
    calls.clear()
    first = dict(_state(folder))
    [folder_again] = run_pipeline(config)
    assert folder_again == folder
    state = _state(folder)
    for key in first:
        assert state[key]["finished_at"] == first[key]["finished_at"], key
    assert {"4_eval_target_base", "5_eval_transferred_copy", "5_eval_transferred_paw", "6_train_target_lora"} <= set(state)
    assert "1_eval_source_base" not in calls
    for name in ("results.json", "results.csv", "summary.md", "summary.png", "config.yaml", "logs/pipeline.log"):
        assert (folder / name).exists(), name

    # The numbers in summary.md are the step result files' numbers.
    results = json.loads((folder / "results.json").read_text())
    summary = (folder / "summary.md").read_text()
    for label in ("source_base", "source_lora", "target_base", "transferred/copy", "transferred/paw", "target_lora"):
        entry = results["evaluations"][label]["arc-easy"]
        assert f"{100 * entry['metrics']['acc']:.1f} [" in summary, label
    assert (Path(config.paths.results_dir) / config.results.csv_file).exists()

    # Adapters name a base that reloads without PAW: the target for transferred ones, the source for step 2's.
    for adapter, base in [(folder / "steps" / "3_transfer_paw" / "adapter", config.default_experiment.target_model),
                          (Path(state["2_train_source_lora"]["summary"]["adapter"]), config.default_experiment.source_model)]:
        recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert Path(recorded).resolve() == Path(base).resolve()

    # A changed learning rate re-runs training and everything downstream of it, but not the base evaluations.
    before = _state(folder)
    run_pipeline(tiny_config(**{"training.default_lr": "3e-4"}))
    after = _state(folder)
    for key in ("1_eval_source_base", "4_eval_target_base"):
        assert after[key]["finished_at"] == before[key]["finished_at"], key
    for key in ("2_train_source_lora", "3_transfer_paw", "5_eval_transferred_paw", "6_train_target_lora"):
        assert after[key]["fingerprint"] != before[key]["fingerprint"], key


def test_abort_leaves_an_existing_experiment_untouched(tiny_config):
    config = tiny_config()
    run_pipeline(config, steps={1})
    [folder] = list(Path(config.paths.experiments_dir).iterdir())
    snapshot = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(PawError, match="exists and the action is abort"):
        run_pipeline(tiny_config(**{"experiment_management.existing_experiment_action": "abort"}))
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == snapshot
    with pytest.raises(PawError, match="no terminal"):
        run_pipeline(tiny_config(**{"experiment_management.existing_experiment_action": "prompt"}), interactive=False)


def test_server_yaml_dry_run_prints_the_plan(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--config", str(CONFIGS / "server.yaml"), "--dry-run", "--training.default-max-steps", "200"])
    out = capsys.readouterr().out
    assert code == 0
    assert "source model: Meta-Llama-3-8B-Instruct" in out and "target model: Qwen2.5-7B-Instruct" in out
    for task in ("arc-challenge", "arc-easy", "piqa", "hellaswag", "winogrande"):
        assert f"Meta-Llama-3-8B-Instruct__Qwen2.5-7B-Instruct__{task}__" in out
    for step in ("1_eval_source_base", "2_train_source_lora", "3_transfer_paw", "3_transfer_lora-x", "3_transfer_copy",
                 "4_eval_target_base", "5_eval_transferred_paw", "6_train_target_lora"):
        assert step in out
    assert not (tmp_path / "experiments").exists()


def test_step_subset_and_bad_steps(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--quick_test", "--steps", "1,3,5", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "1_eval_source_base" in out and "3_transfer_paw" in out and "5_eval_transferred_paw" in out
    assert "2_train_source_lora" not in out and "4_eval_target_base" not in out
    assert main(["run", "--quick_test", "--steps", "1,9", "--dry_run"]) == 2
    assert "step numbers 1-6" in capsys.readouterr().err
