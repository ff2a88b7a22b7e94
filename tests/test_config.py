from pathlib import Path

import pytest

from paw.config import config_help, dump_config, load_config
from paw.errors import PawError

CONFIGS = Path(__file__).parents[1] / "src" / "paw" / "configs"

USER_STYLE_YAML = """\
# LoRA Transfer Pipeline - Main Configuration
paths:
  models_dir: '../autodl-tmp/models'
  train_script: './train_lora/train_cs_lora_lightning.py'
  eval_script: './eval/lightning_eval.py'
  transfer_script: './lora_adapter/scripts/transfer_lora_x.py'
  runs_dir: './train_lora/runs'
  transferred_lora_dir: '../autodl-tmp/transferred_lora'
  results_dir: './results'
training:
  default_batch_size: 4
  default_max_steps: 200
  default_lr: '1e-5'
  datasets:
    # - 'piqa'
    - 'arc-challenge'
evaluation:
  sample_ratio: 0.05
  default_batch_size: 8
transfer:
  similarity_threshold: 0.0001
default_experiment:
  source_model: 'gemma-2-2b-it'
  target_model: 'Qwen_Qwen2.5-1.5B'
lora:
  r: 16
  lora_alpha: 32
  target_modules: ['q_proj', 'v_proj']
  presets:
    conservative: {r: 16, lora_alpha: 32, target_modules: [q_proj, v_proj]}
results:
  csv_file: 'experiment_results.csv'
  markdown_file: 'experiment_summary.md'
general:
  timestamp: null
experiment_management:
  existing_experiment_action: 'prompt'
"""


def test_user_style_yaml_loads_without_edits(tmp_path):
    path = tmp_path / "pipeline_config.yaml"
    path.write_text(USER_STYLE_YAML)
    config = load_config(path)
    assert config.training.default_lr == pytest.approx(1e-5)
    assert isinstance(config.training.default_lr, float)
    assert config.paths.models_dir == "../autodl-tmp/models"
    assert config.evaluation.sample_ratio == 0.05
    assert config.transfer.similarity_threshold == 0.0001
    assert config.default_experiment.target_model == "Qwen_Qwen2.5-1.5B"
    assert config.training.datasets == ["arc-challenge"]


def test_server_yaml_resolves_models_and_settings():
    config = load_config(CONFIGS / "server.yaml")
    assert config.default_experiment.source_model == "Meta-Llama-3-8B-Instruct"
    assert config.default_experiment.target_model == "Qwen2.5-7B-Instruct"
    assert (config.training.default_batch_size, config.training.default_max_steps) == (2, 400)
    assert config.training.default_lr == pytest.approx(1e-5)
    assert config.evaluation.sample_ratio == 1.0
    assert config.transfer.similarity_threshold == 0.0001


@pytest.mark.parametrize("name", ["quick_test.yaml", "local.yaml", "server.yaml"])
def test_shipped_configs_load_and_round_trip(name, tmp_path):
    config = load_config(CONFIGS / name)
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config(config))
    assert load_config(dumped) == config


def test_overrides_are_typed():
    config = load_config(CONFIGS / "quick_test.yaml", {"training.default_max_steps": "7", "training.default_lr": "3e-4"})
    assert config.training.default_max_steps == 7
    assert config.training.default_lr == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("training:\n  default_max_step: 10\n", "unknown key 'training.default_max_step'"),
        ("training:\n  default_max_steps: ten\n", "training.default_max_steps must be int"),
        ("evaluation:\n  sample_ratio: 1.5\n", "sample_ratio must be in (0, 1]"),
        ("bogus_section: {}\n", "unknown key 'bogus_section'"),
        ("training: [1, 2]\n", "training must be a mapping"),
        ("transfer:\n  method: magic\n", "unknown transfer method 'magic'"),
        ("training:\n  datasets: [arc\n", "not valid YAML"),
        ("lora:\n  preset: huge\n", "unknown LoRA preset 'huge'"),
    ],
)
def test_bad_config_is_one_line_naming_key_and_file(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PawError) as info:
        load_config(path)
    message = str(info.value)
    assert fragment in message
    assert str(path) in message
    assert "\n" not in message


def test_missing_config_file(tmp_path):
    with pytest.raises(PawError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_presets_resolve():
    config = load_config(CONFIGS / "quick_test.yaml", {"lora.preset": "full"})
    resolved = config.lora.resolved()
    assert resolved["r"] == 32 and resolved["lora_alpha"] == 64 and len(resolved["target_modules"]) == 7


def test_every_setting_has_help():
    rows = config_help()
    assert len(rows) > 40
    assert all(help_text for _, help_text, _ in rows)


def test_config_knows_every_transfer_method_and_distillation_objective():
    from paw.config import DISTILL_OBJECTIVES, TRANSFER_METHODS
    from paw.transfer import METHODS
    from paw.transfer.distill import DISTILL_OBJECTIVES as OBJECTIVES

    assert set(TRANSFER_METHODS) == set(METHODS) and DISTILL_OBJECTIVES == OBJECTIVES
