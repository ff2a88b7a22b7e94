"""LoRA adapters: validating a folder, loading it on its base, and attaching it to a cached base for a while."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paw.errors import PawError
from paw.models.load import LoadedModel, load_model_uncached, resolve_device, resolve_dtype
from paw.models.resolve import resolve_model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def is_adapter_dir(path: str | Path) -> bool:
    """A folder holding a PEFT adapter (it has adapter_config.json)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """adapter_config.json of a usable LoRA adapter folder; PawError saying what is broken otherwise."""
    folder = Path(adapter_dir)
    fix = "point to a folder written by PEFT's save_pretrained (adapter_config.json + adapter_model.safetensors)"
    if not folder.is_dir():
        raise PawError(f"adapter folder {folder} does not exist; {fix}")
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise PawError(f"adapter folder {folder} has no {ADAPTER_CONFIG}; {fix}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PawError(f"adapter {folder}: {ADAPTER_CONFIG} is not valid JSON ({exc}); "
                       f"re-save the adapter; {fix}") from exc
    if not isinstance(config, dict):
        raise PawError(f"adapter {folder}: {ADAPTER_CONFIG} is not a JSON object; re-save the adapter; {fix}")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise PawError(f"adapter {folder} has peft_type {config.get('peft_type')!r}; only LORA adapters are supported; "
                       "train a LoRA adapter (paw train) or convert this one")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        found = "adapter_model.bin (pickle, which PAW does not load)" if pickled else "none"
        raise PawError(f"adapter {folder} has no {ADAPTER_WEIGHTS} (found: {found}); "
                       "re-save it with PEFT's save_pretrained(safe_serialization=True)")
    _adapter_shapes(folder)  # reads the safetensors header: a truncated or corrupt file fails here
    return config


def _adapter_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise PawError(f"adapter {folder}: {ADAPTER_WEIGHTS} cannot be read ({str(exc).splitlines()[0]}); "
                       "the file is damaged or incomplete: re-save or re-train the adapter") from exc


def read_adapter_base(adapter_dir: str | Path) -> str:
    """The base model the adapter was trained on (adapter_config.json base_model_name_or_path)."""
    return _recorded_base(adapter_dir, read_adapter_config(adapter_dir))


def _recorded_base(adapter_dir: str | Path, config: dict[str, Any]) -> str:
    base = config.get("base_model_name_or_path")
    if not base:
        raise PawError(f"adapter {adapter_dir} does not name its base model (no base_model_name_or_path in "
                       f"{ADAPTER_CONFIG}); pass the base explicitly (base_model_path / --base-model)")
    return str(base)


# For each LoRA tensor: (its dimension, the base module's attribute) that must agree.
_LORA_DIMS = {
    "lora_A.weight": (nn.Linear, 1, "in_features"),
    "lora_B.weight": (nn.Linear, 0, "out_features"),
    "lora_embedding_A": (nn.Embedding, 1, "num_embeddings"),
    "lora_embedding_B": (nn.Embedding, 0, "embedding_dim"),
}


def check_adapter_fits(model: nn.Module, adapter_dir: str | Path, base_label: str) -> None:
    """PawError naming adapter and base unless every module the adapter touches exists with fitting shapes."""
    folder = Path(adapter_dir)
    hint = "use the base the adapter was trained on, or move it to this base with `paw transfer`"
    for key, shape in _adapter_shapes(folder).items():
        path = key.removeprefix(_PEFT_PREFIX)
        suffix = next((s for s in _LORA_DIMS if path.endswith("." + s)), None)
        if suffix is None:  # a fully saved module (modules_to_save): the same parameter shape
            param_name = path.replace(".modules_to_save", "")
            try:
                base_shape = tuple(model.get_parameter(param_name).shape)
            except AttributeError:
                raise PawError(f"adapter {folder} does not fit base {base_label}: it saves {param_name}, which the "
                               f"base does not have; {hint}") from None
            if base_shape != shape:
                raise PawError(f"adapter {folder} does not fit base {base_label}: {param_name} is {list(shape)} in the "
                               f"adapter but {list(base_shape)} in the base; {hint}")
            continue
        module_name = path[: -len(suffix) - 1]
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise PawError(f"adapter {folder} does not fit base {base_label}: it targets {module_name}, which the "
                           f"base does not have; {hint}") from None
        kind, dim, attribute = _LORA_DIMS[suffix]
        if isinstance(module, kind) and shape[dim] != getattr(module, attribute):
            raise PawError(f"adapter {folder} does not fit base {base_label}: {module_name} has {attribute}="
                           f"{getattr(module, attribute)} but the adapter's {suffix} has {shape[dim]}; {hint}")


def _attach(model: nn.Module, adapter_dir: Path, base_label: str, is_trainable: bool, device: torch.device) -> Any:
    from peft import PeftModel

    check_adapter_fits(model, adapter_dir, base_label)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # PEFT's call into transformers
            return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable,
                                             torch_device=str(device))
    except (RuntimeError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PawError(f"adapter {adapter_dir} could not be attached to base {base_label}: {first_line}; "
                       "use the base the adapter was trained on, or re-save the adapter") from exc


def load_adapter_model(
    adapter_dir: str | Path,
    *,
    base_model_path: str | Path | None = None,
    models_dir: str | Path | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    is_trainable: bool = False,
) -> LoadedModel:
    """A PeftModel: the adapter on its own fresh copy of its base (from the adapter's metadata, or
    `base_model_path`). The base is not the cached one, so the caller may train or merge it freely;
    to evaluate many adapters on one shared base use `attached_adapter`."""
    folder = Path(adapter_dir)
    config = read_adapter_config(folder)
    base = str(base_model_path) if base_model_path is not None else _recorded_base(folder, config)
    try:
        ref = resolve_model(base, models_dir)
    except PawError as exc:
        raise PawError(f"adapter {folder}: its base model {base!r} is unavailable ({exc}); "
                       "pass the right base with base_model_path") from exc
    resolved_device = resolve_device(device)
    loaded = load_model_uncached(ref, resolve_dtype(dtype, resolved_device), resolved_device, trust_remote_code)
    model = _attach(loaded.model, folder, f"{base!r} ({ref.location})", is_trainable, resolved_device)
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, ref=ref, dtype=loaded.dtype,
                       device=loaded.device, adapter=folder)


def _has_lora_layers(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(module, LoraLayer) for module in model.modules())


def _strip_lora_layers(model: nn.Module) -> None:
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


@contextmanager
def attached_adapter(loaded: LoadedModel, adapter_dir: str | Path) -> Iterator[Any]:
    """Yield `loaded.model` with the LoRA adapter attached (a PeftModel, eval mode); on exit the adapter is
    removed without merging and the base's training flag and requires_grad flags are restored, so the
    cached base computes exactly what it did before."""
    folder = Path(adapter_dir)
    read_adapter_config(folder)
    base = loaded.model
    if loaded.adapter is not None or _has_lora_layers(base):
        raise PawError(f"cannot attach adapter {folder}: model {loaded.ref.name!r} already carries an adapter; "
                       "leave the other attached_adapter block first, or use a plain base from load_base")
    was_training = base.training
    requires_grad = {name: p.requires_grad for name, p in base.named_parameters()}
    try:
        peft_model = _attach(base, folder, f"{loaded.ref.name!r} ({loaded.ref.location})", False, loaded.device)
    except BaseException:
        _strip_lora_layers(base)  # a half-done attach must not leave LoRA layers in the cached base
        raise
    try:
        yield peft_model
    finally:
        peft_model.unload()
        for name, param in base.named_parameters():
            param.requires_grad_(requires_grad[name])
        base.train(was_training)
