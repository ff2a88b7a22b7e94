"""Loading base models: family quirks in one place, and the process-wide cache.

Tokenizers are padded on the right with a pad token (eos where the model has none): PAW scores and trains
on padded batches whose rows start at position 0, which right padding keeps without position_ids
bookkeeping. A caller that generates must switch `tokenizer.padding_side` to "left" itself.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from paw.errors import PawError
from paw.models.resolve import ModelRef, resolve_model

# Gemma 2 soft-caps attention logits, which only eager attention implements; Gemma 3 is also trained and
# evaluated with eager by its authors. Both were trained with <bos> first and degrade badly without it.
EAGER_ATTENTION_FAMILIES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})
BOS_FAMILIES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


@dataclass
class LoadedModel:
    model: Any  # a transformers causal LM (a peft.PeftModel when loaded with an adapter)
    tokenizer: Any
    ref: ModelRef  # the base model
    dtype: torch.dtype
    device: torch.device
    adapter: Path | None = None  # set by load_adapter_model

    @property
    def family(self) -> str:
        return str(self.model.config.model_type)


_CACHE: dict[tuple[str, torch.dtype, torch.device], LoadedModel] = {}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None means this process's current GPU when there is one (each rank of a multi-GPU run sets its own),
    else the CPU. "cuda" gets that index too, so "cuda" and "cuda:0" share one cache entry."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PawError(f"device {device!r} is not a torch device; valid: cpu, cuda, cuda:N; fix --device") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise PawError(f"device {device!r} asked for but no CUDA GPU is visible; use device cpu or run on a GPU")
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Auto means bf16 on a GPU that supports it and fp32 elsewhere (CPU runs stay the exact reference)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower()
    if key == "auto":
        gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 else torch.float32
    if key not in _DTYPES:
        raise PawError(f"dtype {dtype!r} is not supported; valid: auto, {', '.join(_DTYPES)}; fix --dtype")
    return _DTYPES[key]


def quiet_transformers() -> None:
    """PAW reports progress itself; transformers' and the hub's own bars stay off."""
    import transformers

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers.utils.logging.disable_progress_bar()


def adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def _ensure_bos(tokenizer: Any, where: str) -> None:
    """Make the tokenizer put <bos> first when its saved post-processor does not."""
    if adds_bos(tokenizer):
        return
    from tokenizers import processors

    bos = tokenizer.bos_token
    if bos is None or not hasattr(tokenizer, "backend_tokenizer"):
        raise PawError(f"{where}: this model family needs a <bos> token but the tokenizer has none; "
                       "use the model's original tokenizer files")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    if not adds_bos(tokenizer):
        raise PawError(f"{where}: could not make the tokenizer add {bos}; use the model's original tokenizer files")


def prepare_tokenizer(tokenizer: Any, family: str, where: str) -> Any:
    """Family quirks for tokenizers: BOS where the family needs it, a pad token, right padding."""
    if family in BOS_FAMILIES:
        _ensure_bos(tokenizer, where)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model_uncached(
    ref: ModelRef, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False
) -> LoadedModel:
    """A fresh model and tokenizer for `ref` (embedded models are converted first if needed)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    if ref.kind == "embedded":
        from paw.assets.embedded import prepare_model

        prepare_model(ref.name)
    where = f"model {ref.name!r} ({ref.location})"
    try:
        config = AutoConfig.from_pretrained(ref.location, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(ref.location, trust_remote_code=trust_remote_code)
        family = str(config.model_type)
        extra = {"attn_implementation": "eager"} if family in EAGER_ATTENTION_FAMILIES else {}
        model, info = AutoModelForCausalLM.from_pretrained(
            ref.location, config=config, dtype=dtype, trust_remote_code=trust_remote_code,
            output_loading_info=True, **extra,
        )
    except (OSError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PawError(f"{where} could not be loaded: {first_line}; check that it is a complete causal-LM "
                       "folder or hub id (trust_remote_code is off unless asked)") from exc
    if info["missing_keys"]:
        # A folder without lm_head.weight whose config does not tie it would otherwise run with random weights.
        raise PawError(f"{where} lacks weights {sorted(info['missing_keys'])[:3]}; its checkpoint is incomplete "
                       "or its config's tie_word_embeddings is wrong; re-save the model with save_pretrained")
    prepare_tokenizer(tokenizer, family, where)
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, ref=ref, dtype=dtype, device=device)


def load_base(
    name: str,
    *,
    models_dir: str | Path | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """The base model `name` (see `resolve_model`), loaded once per (location, dtype, device) per process.

    The same arguments return the same object until `release`; callers must not modify it in place
    (attach adapters with `attached_adapter`, which undoes itself).
    """
    ref = resolve_model(name, models_dir)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    key = (ref.location, resolved_dtype, resolved_device)
    if key not in _CACHE:
        _CACHE[key] = load_model_uncached(ref, resolved_dtype, resolved_device, trust_remote_code)
    return _CACHE[key]


def cached_models() -> list[LoadedModel]:
    return list(_CACHE.values())


def release(name: str | None = None, *, models_dir: str | Path | None = None) -> int:
    """Drop the cached model(s) named `name` (every dtype and device), or all with None; return how many.

    Memory comes back once the caller drops its own references too.
    """
    if name is None:
        keys = list(_CACHE)
    else:
        location = resolve_model(name, models_dir).location
        keys = [key for key in _CACHE if key[0] == location]
    for key in keys:
        del _CACHE[key]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return len(keys)
