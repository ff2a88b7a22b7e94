"""Naming a base model: an embedded name, a folder under `models_dir`, a path, or a hub id."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from paw.assets.embedded import embedded_model_names, get_embedded_model
from paw.errors import PawError

# Matches the config default (`paw.config`: models_dir = "../models"): users keep models in ../models/NAME.
DEFAULT_MODELS_DIR = "../models"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

ModelKind = Literal["embedded", "models_dir", "path", "hub"]


@dataclass(frozen=True)
class ModelRef:
    name: str  # as the user wrote it
    kind: ModelKind
    path: Path | None  # local HF folder (for "embedded": the converted folder, maybe not prepared yet)
    hub_id: str | None = None  # for "hub"

    @property
    def location(self) -> str:
        """What `from_pretrained` gets: the folder path or the hub id."""
        return str(self.path) if self.path is not None else str(self.hub_id)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _local_ref(name: str, path: Path, kind: ModelKind) -> ModelRef:
    if (path / "adapter_config.json").is_file() and not _is_model_folder(path):
        raise PawError(
            f"{path} is a LoRA adapter, not a base model; a base model folder has config.json; "
            "pass the adapter where an adapter is expected, or give its base model instead"
        )
    if not _is_model_folder(path):
        raise PawError(
            f"{path} has no config.json, so it is not a Hugging Face model folder; "
            "give a folder saved with save_pretrained (config.json + *.safetensors + tokenizer files)"
        )
    return ModelRef(name=name, kind=kind, path=path.resolve())


def resolve_model(name: str, models_dir: str | Path | None = None) -> ModelRef:
    """Which model `name` means, tried in order: embedded name, `models_dir/name`, path, hub id.

    Cheap: nothing is converted, downloaded or loaded. Offline (HF_HUB_OFFLINE=1) a hub id counts only if
    it is in the local HF cache; otherwise the PawError names every place that was tried.
    """
    name = str(name).strip()
    if not name:
        raise PawError("model name is empty; give an embedded name, a folder under models_dir, a path or a hub id")
    if name in embedded_model_names():
        return ModelRef(name=name, kind="embedded", path=get_embedded_model(name).path)
    folder = Path(models_dir if models_dir is not None else DEFAULT_MODELS_DIR).expanduser() / name
    looks_like_path = Path(name).is_absolute() or name.startswith((".", "~"))
    if not looks_like_path and folder.is_dir():
        return _local_ref(name, folder, "models_dir")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PawError(f"{path} is a file; a model is a folder with config.json, an embedded name or a hub id")
        return _local_ref(name, path, "path")

    tried = (
        f"not an embedded model ({', '.join(embedded_model_names())}), "
        f"not a folder {folder}, not an existing path"
    )
    if not _HUB_ID.match(name) or name.startswith((".", "/", "~")):
        raise PawError(f"model {name!r} not found: {tried}, and not a valid hub id; check the spelling or the path")
    if hub_offline() and not _in_hub_cache(name):
        raise PawError(
            f"model {name!r} not found: {tried}, and hub id {name!r} is not in the local HF cache while offline "
            "(HF_HUB_OFFLINE=1); download it into models_dir/NAME on a connected machine, or unset HF_HUB_OFFLINE"
        )
    return ModelRef(name=name, kind="hub", path=None, hub_id=name)


def _in_hub_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
