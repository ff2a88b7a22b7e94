"""Reading any PEFT LoRA adapter into per-module update factors, and writing one for another base.

A LoRA module's update is ΔW = s · B · A with s = α/r (or α/√r with rslora). Transfer methods work on the
factors with s folded into B (`LoraModule.B`), so ΔW = B @ A and the projections apply to ΔW, never to the
trained A and B separately. Writing factors a target ΔW back into B·A by truncated SVD with the output
rank's own s divided out.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from paw.errors import PawError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# PEFT stores `base_model.model.<module>.lora_A.weight` (older files may keep the adapter name before .weight).
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")


@dataclass
class LoraModule:
    """One adapted linear module: ΔW = B @ A, with the LoRA scale already folded into B."""

    name: str  # module path in the base model, e.g. "model.layers.3.self_attn.q_proj"
    B: torch.Tensor  # (out, r)
    A: torch.Tensor  # (r, in)

    def delta(self) -> torch.Tensor:
        return self.B @ self.A


@dataclass
class LoraAdapter:
    path: Path
    config: dict[str, Any]
    modules: dict[str, LoraModule]

    @property
    def rank(self) -> int:
        return int(self.config.get("r", 8))


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT's rule: a pattern key matches a module whose name ends with it (as a regex).
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(path: str | Path) -> LoraAdapter:
    """Load a PEFT LoRA adapter folder (safetensors) into per-module factors with ΔW = B @ A."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise PawError(f"no {CONFIG_FILE} in {path}; pass the folder a PEFT LoRA adapter was saved to")
    config = json.loads(config_path.read_text())
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise PawError(
            f"adapter {path} is PEFT type {peft_type or 'unknown'}; only LoRA adapters can be transferred; "
            "retrain it as a LoRA (peft LoraConfig)"
        )
    if config.get("use_dora"):
        raise PawError(
            f"adapter {path} is DoRA (use_dora: true); only plain LoRA updates can be transferred; "
            "retrain with use_dora=False"
        )
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise PawError(f"no {WEIGHTS_FILE} in {path}; PAW reads safetensors adapters only; re-save with safe_serialization=True")
    tensors = load_file(str(weights_path))
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if "lora_magnitude_vector" in key:
            raise PawError(f"adapter {path} holds DoRA magnitudes ({key}); only plain LoRA can be transferred; retrain without DoRA")
        if "lora_embedding_" in key:
            raise PawError(
                f"adapter {path} adapts an embedding ({key}); PAW transfers LoRA on linear layers only; "
                "retrain without embedding layers in target_modules"
            )
        match = _KEY.match(key)
        if match is None:
            continue  # modules_to_save copies and other extras: reported by the caller via config
        factors.setdefault(match["module"], {})[match["side"]] = tensor
    if not factors:
        raise PawError(f"adapter {path} has no lora_A/lora_B weights; pass a saved PEFT LoRA adapter")

    use_rslora = bool(config.get("use_rslora", False))
    modules = {}
    for name, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            raise PawError(f"adapter {path} has lora_A without lora_B (or the reverse) for {name}; re-save the adapter")
        A, B = pair["A"].float(), pair["B"].float()
        rank = A.shape[0]
        alpha = float(_pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", rank)))
        modules[name] = LoraModule(name, B * lora_scale(alpha, rank, use_rslora), A)
    return LoraAdapter(path, config, modules)


def factor_lowrank(
    B: torch.Tensor, A: torch.Tensor, rank: int, in_sqrt: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-`rank` factors (B', A') of B @ A, balanced (equal singular values on both sides), zero-padded.

    With `in_sqrt = (C^½, C^-½)` of an input covariance C the truncation minimises ‖(BA − B'A') C^½‖, i.e. the
    error on the inputs the module really sees, not on all directions alike.
    """
    B, A = B.double(), A.double()
    if in_sqrt is not None:
        A = A @ in_sqrt[0]
    q_b, r_b = torch.linalg.qr(B)
    q_a, r_a = torch.linalg.qr(A.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    keep = min(rank, s.numel())
    root = s[:keep].sqrt()
    B_out = (q_b @ u[:, :keep]) * root
    A_out = root[:, None] * (vh[:keep] @ q_a.T)
    if in_sqrt is not None:
        A_out = A_out @ in_sqrt[1]
    B_pad = B.new_zeros(B.shape[0], rank)
    A_pad = A.new_zeros(rank, A.shape[1])
    B_pad[:, :keep], A_pad[:keep] = B_out, A_out
    return B_pad.float(), A_pad.float()


def write_adapter(
    folder: Path,
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    rank: int,
    alpha: float,
    use_rslora: bool,
    base_model: str,
    extra_config: dict[str, Any] | None = None,
) -> None:
    """Write a PEFT LoRA adapter into `folder` (the caller's temp folder) from factors with ΔW = B @ A.

    Each ΔW is factored at `rank`; the LoRA scale s = α/r is divided out of the stored B and A (√s each) so
    that PEFT's `s · B · A` reproduces ΔW.
    """
    from peft import LoraConfig

    root_scale = math.sqrt(lora_scale(alpha, rank, use_rslora))
    tensors = {}
    for name, (B, A) in sorted(modules.items()):
        B_r, A_r = factor_lowrank(B, A, rank)
        tensors[f"base_model.model.{name}.lora_A.weight"] = (A_r / root_scale).contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = (B_r / root_scale).contiguous()
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        use_rslora=use_rslora,
        target_modules=sorted(modules),  # full module paths: layers left out by the threshold stay untouched
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
        **(extra_config or {}),
    )
    config.save_pretrained(str(folder))
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
