"""What a LoRA training run is: its config, LoRA presets, target modules per architecture, run identity."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from paw.config import LORA_PRESETS as PRESETS
from paw.errors import PawError

DEFAULT_PRESET = "conservative"

# Architectures whose projection modules carry the preset names (HF's Llama layout).
LLAMA_LAYOUT_ARCHITECTURES = ("llama", "qwen2", "gemma2", "gemma3_text", "mistral")

PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "bf16-true", "16-mixed")
STRATEGIES = ("auto", "ddp", "fsdp")

# Fields that say where and how to run, not what is trained: they do not change the run's identity.
RUN_CONTROL_FIELDS = (
    "output_dir", "force", "resume", "swanlab_mode", "checkpoint_every_n_steps", "strategy",
    "data_source", "data_dir", "models_dir", "preset", "r", "lora_alpha", "target_modules",
)


def _f(default: Any, help: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """One LoRA training run. Each field's help text is also its `paw train --<field>` help."""

    model: str = _f("", "Base model: an embedded name (smollm2-135m), a hub id or a local folder.")
    datasets: list[str] = _f(["arc-challenge"], "Tasks whose train split is trained on; several are mixed.")
    batch_size: int = _f(2, "Micro-batch size per device.")
    grad_accum: int = _f(1, "Micro-batches per optimizer step.")
    max_steps: int = _f(400, "Optimizer steps.")
    lr: float = _f(1e-5, "Peak learning rate (AdamW).")
    warmup_ratio: float = _f(0.1, "Fraction of steps with linear warmup before the cosine decay.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0: no clipping).")
    preset: str | None = _f(None, f"LoRA preset: {', '.join(PRESETS)} (default {DEFAULT_PRESET}).")
    r: int | None = _f(None, "LoRA rank (overrides the preset).")
    lora_alpha: int | None = _f(None, "LoRA alpha; the update is scaled by alpha/r (overrides the preset).")
    lora_dropout: float = _f(0.1, "Dropout on the LoRA input.")
    target_modules: list[str] | None = _f(None, "Module names LoRA adapts, e.g. q_proj v_proj (overrides the preset).")
    seed: int = _f(42, "Seed for LoRA initialisation, dropout and data order.")
    precision: str = _f("auto", "auto (bf16-mixed on GPUs that support it, else 32), 32, bf16-mixed, bf16-true.")
    max_length: int = _f(512, "Longest training sequence in tokens (longer prompts lose their start; an answer "
                              "longer than this keeps its first max_length tokens).")
    devices: int = _f(1, "Devices per node.")
    num_nodes: int = _f(1, "Nodes (Lightning's multi-node launcher).")
    strategy: str = _f("auto", f"Lightning strategy: {', '.join(STRATEGIES)}.")
    val_every_n_steps: int = _f(0, "Validate on a held-out slice of the train split every N steps (0: off).")
    val_size: int = _f(64, "Items per task held out of the train split for validation (when validating).")
    checkpoint_every_n_steps: int = _f(100, "Save a resumable checkpoint every N steps (0: off).")
    output_dir: str = _f("runs", "Folder that holds one subfolder per run.")
    force: bool = _f(False, "Retrain even when an identical finished run exists.")
    resume: bool = _f(False, "Continue an interrupted run from its last checkpoint.")
    swanlab_mode: str | None = _f(None, "SwanLab mode: disabled, offline, local, cloud "
                                        "(default: SWANLAB_MODE, else offline).")
    data_source: str = _f("embedded", "Where task data comes from: embedded, hub, local.")
    data_dir: str | None = _f(None, "Folder of task files for data_source=local.")
    models_dir: str | None = _f(None, "Folder holding local models as NAME/ subfolders.")

    def validate(self) -> None:
        if not self.model:
            raise PawError("no base model given; pass --model NAME (an embedded name, a hub id or a folder)")
        if not self.datasets:
            raise PawError("no training dataset given; pass --dataset TASK (e.g. arc-challenge)")
        for name in ("batch_size", "grad_accum", "max_steps", "max_length", "devices", "num_nodes"):
            if getattr(self, name) < 1:
                raise PawError(f"{name} must be at least 1 (got {getattr(self, name)}); pass --{name} 1 or more")
        if self.lr <= 0:
            raise PawError(f"lr must be positive (got {self.lr}); pass e.g. --lr 1e-5")
        if not 0 <= self.warmup_ratio < 1:
            raise PawError(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.precision not in PRECISIONS:
            raise PawError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.strategy not in STRATEGIES:
            raise PawError(f"unknown strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.preset is not None and self.preset not in PRESETS:
            raise PawError(f"unknown LoRA preset {self.preset!r}; valid: {', '.join(PRESETS)}")


@dataclass(frozen=True)
class LoraSettings:
    r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: tuple[str, ...]


def lora_settings(config: TrainConfig) -> LoraSettings:
    """The preset (default conservative) with any explicit r / lora_alpha / target_modules on top."""
    preset = PRESETS[config.preset or DEFAULT_PRESET]
    return LoraSettings(
        r=config.r if config.r is not None else preset["r"],
        lora_alpha=config.lora_alpha if config.lora_alpha is not None else preset["lora_alpha"],
        lora_dropout=config.lora_dropout,
        target_modules=tuple(config.target_modules or preset["target_modules"]),
    )


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct leaf names of the model's Linear layers (what target_modules may name), without the LM head."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    names.discard("lm_head")
    return sorted(names)


def resolve_target_modules(model: torch.nn.Module, requested: tuple[str, ...]) -> list[str]:
    """Check `requested` against the model: the preset names for Llama-layout models, exact names otherwise."""
    architecture = getattr(model.config, "model_type", "?")
    available = linear_module_names(model)
    missing = [name for name in requested if name not in available]
    if missing:
        if architecture not in LLAMA_LAYOUT_ARCHITECTURES:
            raise PawError(
                f"architecture {architecture!r} has no preset module names "
                f"({', '.join(LLAMA_LAYOUT_ARCHITECTURES)} do); "
                f"its linear modules are: {', '.join(available)}; pass --target_modules with some of these"
            )
        raise PawError(
            f"{architecture} model has no module named {', '.join(missing)}; its linear modules are: "
            f"{', '.join(available)}; pass --target_modules with some of these"
        )
    return list(requested)


def resolve_precision(precision: str) -> str:
    """Lightning's precision name: `auto` means bf16-mixed on a GPU that supports it, full precision otherwise."""
    if precision == "auto":
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return "32-true" if precision == "32" else precision


def config_fingerprint(config: TrainConfig, lora: LoraSettings, data_hash: str) -> str:
    """Hash of everything that decides the trained weights: base, data, resolved LoRA settings, hyper-parameters."""
    identity = {k: v for k, v in asdict(config).items() if k not in RUN_CONTROL_FIELDS}
    identity["precision"] = resolve_precision(config.precision)
    identity.update(lora=asdict(lora), data_hash=data_hash)
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=list).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def run_dir(config: TrainConfig, fingerprint: str) -> Path:
    """output_dir/<model>__<datasets>__<short hash>/: one folder per distinct run."""
    model = _slug(Path(config.model.rstrip("/")).name or config.model)
    datasets = "+".join(_slug(name) for name in config.datasets)
    return Path(config.output_dir) / f"{model}__{datasets}__{fingerprint[:10]}"
