"""Typed PAW configuration: YAML files users already have, plus command-line overrides.

Every field's `help` is what `paw run --help` prints for `--section.key`. Keys from the original prototype's
files (`paths.train_script`, `results.csv_file`, `general.timestamp`, ...) load without edits. An unknown key,
a wrong type or an invalid value is one `PawError` that names the key and the file.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from paw.errors import PawError

TRANSFER_METHODS = ("paw", "lora-x", "cross-lora", "copy", "random")
DISTILL_OBJECTIVES = ("shift", "teacher")
EXISTING_EXPERIMENT_ACTIONS = ("prompt", "continue", "delete", "abort")
DATA_SOURCES = ("embedded", "hub", "local")
MODEL_DTYPES = ("auto", "float32", "bfloat16")
SWANLAB_MODES = ("disabled", "offline", "local", "cloud", "online")


# Users' YAML presets: conservative adapts attention queries and values only, full adapts every projection.
LORA_PRESETS: dict[str, dict[str, Any]] = {
    "conservative": {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]},
    "standard": {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "full": {
        "r": 32,
        "lora_alpha": 64,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    },
}


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class PathsConfig:
    models_dir: str = _f("../models", "Folder holding local models as NAME/ subfolders (relative to the working dir).")
    data_dir: str | None = _f(None, "Folder with local datasets (DATA_DIR/<name>/<name>_<split>_formatted.jsonl).")
    experiments_dir: str = _f("experiments", "Where `paw run` creates experiment folders.")
    runs_dir: str = _f("runs", "Where `paw train` writes adapters when run on its own.")
    results_dir: str = _f("results", "Where `paw eval` writes results when run on its own; the project-wide CSV lives here.")
    transferred_lora_dir: str = _f("transferred", "Where `paw transfer` writes adapters when run on its own.")
    train_script: str | None = _f(None, "Prototype key, accepted and ignored: PAW runs every step in-process.")
    eval_script: str | None = _f(None, "Prototype key, accepted and ignored.")
    transfer_script: str | None = _f(None, "Prototype key, accepted and ignored.")


@dataclass
class ExperimentModelsConfig:
    source_model: str = _f("gemma3-270m", "Source base model: embedded name, folder under models_dir, path or hub id.")
    target_model: str = _f("smollm2-135m", "Target base model, named the same ways.")
    source_adapter: str | None = _f(None, "An existing source LoRA folder: step 2 (train source) is then skipped.")
    dtype: str = _f("auto", "Base weights for every step: auto (bf16 on GPUs that support it, float32 on CPU), "
                    "float32, bfloat16. One dtype per run, so each base is loaded once; LoRA weights stay float32.")


@dataclass
class LoraConfig:
    r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA alpha (the update is scaled by alpha/r).")
    lora_dropout: float = _f(0.1, "Dropout on the LoRA input.")
    target_modules: list[str] = _f(["q_proj", "v_proj"], "Module names LoRA adapts.")
    preset: str | None = _f(None, "Name of an entry in lora.presets to use instead of r/lora_alpha/target_modules.")
    presets: dict[str, dict[str, Any]] = _f(
        copy.deepcopy(LORA_PRESETS),
        "Named LoRA settings: {name: {r, lora_alpha, target_modules, lora_dropout}}.",
    )

    def resolved(self) -> dict[str, Any]:
        """r, lora_alpha, lora_dropout and target_modules after applying the preset, if any."""
        values = {"r": self.r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                  "target_modules": list(self.target_modules)}
        if self.preset:
            if self.preset not in self.presets:
                raise PawError(f"unknown LoRA preset {self.preset!r}; valid: {', '.join(sorted(self.presets))}")
            values.update(self.presets[self.preset])
        return values


@dataclass
class TrainingConfig:
    default_batch_size: int = _f(4, "Training micro-batch size per device.")
    default_max_steps: int = _f(200, "Optimizer steps per LoRA training run.")
    default_lr: float = _f(1e-4, "Peak learning rate (strings like '1e-5' are accepted).")
    datasets: list[str] = _f(["arc-challenge"], "Tasks to run: one experiment each (or mixed, see mix_datasets).")
    mix_datasets: bool = _f(False, "Train one LoRA on all datasets mixed instead of one experiment per dataset.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    warmup_ratio: float = _f(0.1, "Fraction of steps with linear warmup before the cosine decay.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    max_length: int = _f(512, "Longest training sequence in tokens (longer prompts are left-truncated).")
    seed: int = _f(42, "Seed for initialisation and data order.")
    precision: str = _f("auto", "auto (bf16-mixed on GPUs that support it, 32 on CPU), 32, bf16-mixed, bf16-true.")
    devices: int = _f(1, "Devices per node for Lightning.")
    strategy: str = _f("auto", "Lightning strategy: auto, ddp, fsdp.")
    num_nodes: int = _f(1, "Nodes for Lightning's multi-node launcher.")
    val_every_n_steps: int = _f(0, "Validate on a held-out slice every N steps (0: off).")


@dataclass
class EvaluationConfig:
    sample_ratio: float = _f(1.0, "Fraction of each evaluation split to score (fixed seed: same items every run).")
    default_batch_size: int = _f(8, "Evaluation batch size (questions per batch).")
    split: str | None = _f(None, "Evaluation split (default: lm-evaluation-harness's, ARC: test, others: validation).")
    limit: int | None = _f(None, "Score at most this many items per task (after sample_ratio).")
    datasets: list[str] | None = _f(None, "Tasks to evaluate (default: training.datasets).")


@dataclass
class TransferConfig:
    similarity_threshold: float = _f(0.0, "Modules whose normalised similarity (0..1, 1 = identical) is below this are not transferred.")
    method: str = _f("paw", f"Transfer method: {', '.join(TRANSFER_METHODS)}.")
    methods: list[str] | None = _f(None, "Several methods compared in one run (overrides method).")
    rank: int | None = _f(None, "Rank of the transferred adapter (default: the source rank).")
    calibration_size: int = _f(128, "Unlabeled calibration prompts for activation-based methods.")
    distill_steps: int = _f(0, "Optional distillation steps after the closed-form paw transfer (0: off).")
    distill_objective: str = _f("shift", "shift: the target base moved by the source LoRA's change; teacher: imitate source+LoRA.")


@dataclass
class DataConfig:
    source: str = _f("embedded", f"Where task data comes from: {', '.join(DATA_SOURCES)}.")


@dataclass
class TrackingConfig:
    swanlab_mode: str = _f("offline", f"SwanLab mode: {', '.join(SWANLAB_MODES)} (SWANLAB_MODE overrides; cloud only when asked).")
    project: str = _f("paw", "SwanLab project name.")


@dataclass
class ExperimentManagementConfig:
    existing_experiment_action: str = _f("prompt", f"When the experiment folder exists: {', '.join(EXISTING_EXPERIMENT_ACTIONS)}.")


@dataclass
class ResultsConfig:
    csv_file: str = _f("experiment_results.csv", "Project-wide CSV (under paths.results_dir) that gets one row per run.")
    markdown_file: str = _f("experiment_summary.md", "Project-wide Markdown summary under paths.results_dir.")


@dataclass
class GeneralConfig:
    timestamp: str | None = _f(None, "Experiment id; default: a new timestamp per run.")


@dataclass
class PawConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    default_experiment: ExperimentModelsConfig = field(default_factory=ExperimentModelsConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    experiment_management: ExperimentManagementConfig = field(default_factory=ExperimentManagementConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    general: GeneralConfig = field(default_factory=GeneralConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, origin_name: str) -> Any:
    """Check `value` against the annotation `tp`, converting the few safe cases YAML users rely on."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, origin_name)
            except PawError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise PawError(f"{origin_name}: {key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", origin_name) for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise PawError(f"{origin_name}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # users write learning rates as '1e-5'
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise PawError(f"{origin_name}: {key} must be {_type_name(tp)}, got {value!r}")


def _apply(obj: Any, data: dict[str, Any], prefix: str, origin_name: str) -> None:
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            valid = ", ".join(f"{prefix}{name}" for name in fields)
            raise PawError(f"{origin_name}: unknown key {dotted!r}; valid keys here: {valid}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise PawError(f"{origin_name}: {dotted} must be a mapping of settings, got {value!r}")
            _apply(current, value, f"{dotted}.", origin_name)
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted, origin_name))


def _validate(config: PawConfig, origin_name: str) -> None:
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise PawError(f"{origin_name}: {message}")

    check(0.0 < config.evaluation.sample_ratio <= 1.0, f"evaluation.sample_ratio must be in (0, 1], got {config.evaluation.sample_ratio}")
    check(config.training.default_batch_size >= 1, "training.default_batch_size must be >= 1")
    check(config.training.default_max_steps >= 1, "training.default_max_steps must be >= 1")
    check(config.training.default_lr > 0, f"training.default_lr must be > 0, got {config.training.default_lr}")
    check(config.evaluation.default_batch_size >= 1, "evaluation.default_batch_size must be >= 1")
    check(0.0 <= config.transfer.similarity_threshold <= 1.0,
          f"transfer.similarity_threshold is a normalised similarity in [0, 1], got {config.transfer.similarity_threshold}")
    for method in config.transfer.methods or [config.transfer.method]:
        check(method in TRANSFER_METHODS, f"unknown transfer method {method!r}; valid: {', '.join(TRANSFER_METHODS)}")
    check(config.transfer.distill_objective in DISTILL_OBJECTIVES,
          f"transfer.distill_objective {config.transfer.distill_objective!r} is not one of {', '.join(DISTILL_OBJECTIVES)}")
    action = config.experiment_management.existing_experiment_action
    check(action in EXISTING_EXPERIMENT_ACTIONS,
          f"experiment_management.existing_experiment_action {action!r} is not one of {', '.join(EXISTING_EXPERIMENT_ACTIONS)}")
    check(config.default_experiment.dtype in MODEL_DTYPES,
          f"default_experiment.dtype {config.default_experiment.dtype!r} is not one of {', '.join(MODEL_DTYPES)}")
    check(config.data.source in DATA_SOURCES, f"data.source {config.data.source!r} is not one of {', '.join(DATA_SOURCES)}")
    check(config.tracking.swanlab_mode in SWANLAB_MODES,
          f"tracking.swanlab_mode {config.tracking.swanlab_mode!r} is not one of {', '.join(SWANLAB_MODES)}")
    check(bool(config.training.datasets), "training.datasets must name at least one task")
    check(config.lora.preset is None or config.lora.preset in config.lora.presets,
          f"unknown LoRA preset {config.lora.preset!r}; valid: {', '.join(sorted(config.lora.presets))}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PawConfig:
    """Defaults, then the YAML file (if any), then dotted overrides like {"training.default_max_steps": 200}."""
    config = PawConfig()
    origin_name = "defaults"
    if path is not None:
        path = Path(path)
        origin_name = str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PawError(f"config file {path} does not exist; pass an existing YAML file, e.g. configs/local.yaml") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise PawError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise PawError(f"{path}: the top level must be a mapping of sections (paths, training, ...)")
        _apply(config, data, "", origin_name)
    for dotted, value in (overrides or {}).items():
        nested: dict[str, Any] = {}
        cursor = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[leaf] = yaml.safe_load(value) if isinstance(value, str) else value
        _apply(config, nested, "", "command line")
    _validate(config, origin_name if not overrides else f"{origin_name} + command line")
    return config


def config_help() -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every setting, for `paw run --help`."""
    rows = []
    for section in dataclasses.fields(PawConfig):
        obj = getattr(PawConfig(), section.name)
        for f in dataclasses.fields(obj):
            rows.append((f"{section.name}.{f.name}", f.metadata.get("help", ""), getattr(obj, f.name)))
    return rows


def dump_config(config: PawConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
