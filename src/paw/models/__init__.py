"""Naming and loading base models and LoRA adapters; family quirks; the process-wide base cache."""

from paw.models.adapters import (
    attached_adapter,
    check_adapter_fits,
    is_adapter_dir,
    load_adapter_model,
    read_adapter_base,
    read_adapter_config,
)
from paw.models.load import LoadedModel, cached_models, load_base, release
from paw.models.resolve import ModelRef, resolve_model

__all__ = [
    "LoadedModel",
    "ModelRef",
    "attached_adapter",
    "cached_models",
    "check_adapter_fits",
    "is_adapter_dir",
    "load_adapter_model",
    "load_base",
    "read_adapter_base",
    "read_adapter_config",
    "release",
    "resolve_model",
]
