"""`transfer_adapter`: one entry point for every transfer method, writing a PEFT adapter plus a report."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paw.errors import PawError
from paw.io import atomic_directory, atomic_write_json
from paw.progress import track
from paw.tasks.items import MCItem
from paw.transfer.adapter_io import LoraAdapter, factor_lowrank, read_adapter, write_adapter
from paw.transfer.calibration import PairedBatch, model_device, paired_batches, shift_agreement
from paw.transfer.distill import distill_updates, shared_vocabulary
from paw.transfer.layer_map import relative_depth_map
from paw.transfer.linalg import psd_sqrt_pair
from paw.transfer.paw_method import ModulePair, cka_layer_map, fit_update_scale, paw_pair_update, paw_statistics
from paw.transfer.structure import LayerStructure, layer_structure, linear_weight, split_layer_name
from paw.transfer.weight_methods import copy_update, cross_lora_update, index_similarity, lora_x_update, random_update

METHODS = ("paw", "lora-x", "cross-lora", "copy", "random")
LAYER_MAPS = ("cka", "depth")
REPORT_FILE = "transfer_report.json"
Updates = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TransferResult:
    output_dir: Path
    report: dict[str, Any]

    @property
    def transferred(self) -> list[str]:
        return list(self.report["transferred"])

    def summary(self) -> dict[str, Any]:
        """The report's headline numbers (no per-module rows), for pipeline results."""
        keys = ("method", "source_model", "target_model", "rank", "similarity_threshold", "calibration_size",
                "scale_fit", "distill_steps", "wall_time_s", "peak_memory_mb")
        sims = [m["similarity"] for m in self.report["modules"] if "similarity" in m]
        return {key: self.report[key] for key in keys} | {
            "output_dir": str(self.output_dir),
            "modules_transferred": len(self.report["transferred"]),
            "modules_total": len(self.report["modules"]),
            "mean_similarity": sum(sims) / len(sims) if sims else None,
        }


@dataclass
class _Base:
    name: str
    model: nn.Module
    tokenizer: Any
    location: str  # what the written adapter names as its base: a folder or hub id that reloads with PEFT alone


def _resolve_base(spec: Any, models_dir: str | Path | None) -> _Base:
    """A model name (via paw.models.load_base), a LoadedModel-like object, or a (model, tokenizer) pair."""
    if isinstance(spec, (str, Path)):
        from paw.models import load_base

        loaded = load_base(str(spec), models_dir=models_dir)
        return _Base(str(spec), loaded.model, loaded.tokenizer, str(loaded.ref.location))
    if isinstance(spec, tuple) and len(spec) == 2:
        model, tokenizer = spec
    else:
        model, tokenizer = spec.model, spec.tokenizer
    ref = getattr(spec, "ref", None)
    name = getattr(ref, "name", None) or getattr(model, "name_or_path", None) or ""
    location = getattr(ref, "location", None) or getattr(model, "name_or_path", None) or name
    return _Base(str(name), model, tokenizer, str(location))


def task_items(tasks: list[str], size: int, source: str = "embedded", data_dir: str | Path | None = None) -> list[MCItem]:
    """Up to `size` items spread evenly over `tasks`, from each task's train split where it has one (so
    evaluation items stay unseen). Transfer reads their contexts and options, never their gold answers."""
    from paw.tasks import available_splits, load_items

    per_task = -(-size // max(len(tasks), 1))
    items: list[MCItem] = []
    for task in tasks:
        splits = available_splits(task, source=source, data_dir=data_dir)
        split = "train" if "train" in splits else next(iter(splits), None)
        task_items_all = load_items(task, split, source=source, data_dir=data_dir)
        items.extend(task_items_all[:: max(1, len(task_items_all) // per_task)][:per_task])
    return items[:size]


def _module_pairs(
    adapter: LoraAdapter, source: _Base, target: _Base, layers_s: LayerStructure, layers_t: LayerStructure,
    layer_map: list[int], modules: tuple[str, ...] | None = None,
) -> tuple[list[ModulePair], list[dict[str, Any]]]:
    """Pair every adapted source module (whose last name part is in `modules`, when given) with its target
    module; validate shapes. Returns (pairs, skipped rows)."""
    pairs, skipped = [], []
    for name, module in adapter.modules.items():
        if modules is not None and name.rsplit(".", 1)[-1] not in modules:
            skipped.append({"source": name, "target": None, "reason": "not among the selected modules"})
            continue
        weight = linear_weight(source.model, name)
        if weight is None or tuple(weight.shape) != (module.B.shape[0], module.A.shape[1]):
            found = "no such linear module" if weight is None else f"base weight {tuple(weight.shape)}"
            raise PawError(
                f"adapter {adapter.path} does not fit source model {source.name!r}: {name} has update "
                f"{(module.B.shape[0], module.A.shape[1])} but {found}; pass the base the adapter was trained on"
            )
        located = split_layer_name(name)
        if located is None or not name.startswith(layers_s.prefix + "."):
            skipped.append({"source": name, "target": None, "reason": "outside the decoder layers"})
            continue
        layer, suffix = located
        target_layer = layer_map[layer]
        target_name = layers_t.module_name(target_layer, suffix)
        if linear_weight(target.model, target_name) is None:
            raise PawError(
                f"target model {target.name!r} has no linear module {target_name} for adapted source module "
                f"{name}; transfer between bases with the same module names (llama, qwen2, gemma, mistral "
                "families) or retrain the adapter on modules both bases have"
            )
        pairs.append(ModulePair(name, target_name, layer, target_layer, module.B, module.A))
    return pairs, skipped


def _norm(B: torch.Tensor, A: torch.Tensor) -> float:
    return float((B.double() @ A.double()).norm())


def _weight_method_updates(
    method: str, pairs: list[ModulePair], source: _Base, target: _Base, basis_rank: int | None
) -> list[tuple[ModulePair, torch.Tensor, torch.Tensor, float]]:
    results = []
    for pair in track(pairs, f"transfer: {method}", unit="module"):
        w_s = linear_weight(source.model, pair.source).detach().float()
        w_t = linear_weight(target.model, pair.target).detach().float()
        B, A = pair.B.to(w_t.device), pair.A.to(w_t.device)
        if method == "copy":
            B_t, A_t = copy_update(B, A, w_s, w_t)
        elif method == "random":
            B_t, A_t = random_update(B, A, w_t, seed=len(results))
        elif method == "lora-x":
            B_t, A_t = lora_x_update(B, A, w_s.to(w_t.device), w_t, basis_rank)
        else:
            B_t, A_t = cross_lora_update(B, A, w_s.to(w_t.device), w_t, basis_rank)
        results.append((pair, B_t, A_t, index_similarity(w_s.to(w_t.device), w_t)))
    return results


def _combine(
    results: list[tuple[ModulePair, torch.Tensor, torch.Tensor, float]],
    threshold: float,
    rank: int,
    input_covariances: dict[str, torch.Tensor] | None = None,
) -> tuple[Updates, list[dict[str, Any]]]:
    """Keep pairs whose similarity passes `threshold`, add updates landing on one target module, truncate to
    `rank` (weighted by the target module's input covariance where given)."""
    grouped: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    rows = []
    for pair, B_t, A_t, similarity in results:
        passed = similarity >= threshold
        rows.append(
            {
                "source": pair.source,
                "target": pair.target,
                "similarity": similarity,
                "transferred": passed,
                "reason": "" if passed else f"similarity {similarity:.3f} < threshold {threshold:g}",
                "delta_norm_source": _norm(pair.B, pair.A),
                "delta_norm_target": _norm(B_t, A_t) if passed else 0.0,
            }
        )
        if passed:
            grouped.setdefault(pair.target, []).append((B_t, A_t))
    updates = {}
    for name, parts in grouped.items():
        B = torch.cat([b for b, _ in parts], dim=1)
        A = torch.cat([a for _, a in parts], dim=0)
        truncates = B.shape[1] > rank
        weighting = psd_sqrt_pair(input_covariances[name]) if truncates and input_covariances else None
        updates[name] = factor_lowrank(B, A, rank, weighting)
    return updates, rows


def _paw_updates(
    source: _Base,
    target: _Base,
    layers_s: LayerStructure,
    layers_t: LayerStructure,
    pairs: list[ModulePair],
    batches: list[PairedBatch],
    threshold: float,
    rank: int,
    ridge: float,
    memory_budget_gb: float,
) -> tuple[Updates, list[dict[str, Any]]]:
    """paw's closed-form updates, one chunk of target layers (one calibration pass) at a time."""
    updates: Updates = {}
    rows: list[dict[str, Any]] = []
    for chunk, stats in paw_statistics(source.model, target.model, layers_s, layers_t, pairs, batches, memory_budget_gb):
        results, covariances = [], {}
        for pair, pair_stats in zip(chunk, stats):
            w_s = linear_weight(source.model, pair.source).detach().float()
            w_t = linear_weight(target.model, pair.target).detach().float()
            results.append((pair, *paw_pair_update(pair, pair_stats, w_s, w_t, ridge)))
            covariances[pair.target] = pair_stats.inputs.aa / max(pair_stats.inputs.count, 1)
        chunk_updates, chunk_rows = _combine(results, threshold, rank, covariances)
        updates.update(chunk_updates)
        rows.extend(chunk_rows)
    return updates, rows


def _calibration_note(positions: int, pairs: list[ModulePair], source: _Base, target: _Base) -> str:
    """A warning when paw's maps have fewer aligned positions than ~4x the widest module input they fit."""
    widest = max(
        max(linear_weight(source.model, p.source).shape[1], linear_weight(target.model, p.target).shape[1]) for p in pairs
    )
    if positions >= 4 * widest:
        return ""
    return (f"only {positions} aligned calibration positions for module inputs up to {widest} wide: the maps lean "
            "on the ridge prior; pass more or longer calibration prompts")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak_kb / (2**20 if sys.platform == "darwin" else 2**10)


def transfer_adapter(
    source_adapter_dir: str | Path,
    *,
    source_model: Any,
    target_model: Any,
    method: str = "paw",
    output_dir: str | Path,
    rank: int | None = None,
    similarity_threshold: float = 0.0,
    calibration_texts: list[str] | None = None,
    calibration_items: list[MCItem] | None = None,
    calibration_tasks: list[str] | None = None,
    calibration_size: int = 128,
    distill_steps: int = 0,
    distill_lr: float = 1e-4,
    distill_objective: str = "shift",
    basis_rank: int | None = None,
    ridge: float = 1e-3,
    fit_scale: bool = True,
    layer_map: str | None = None,
    modules: list[str] | tuple[str, ...] | None = None,
    max_tokens: int = 256,
    batch_size: int = 8,
    memory_budget_gb: float = 8.0,
    models_dir: str | Path | None = None,
    data_source: str = "embedded",
    data_dir: str | Path | None = None,
) -> TransferResult:
    """Move the LoRA adapter in `source_adapter_dir` from `source_model` to `target_model`.

    Models are names (resolved by `paw.models.load_base` with `models_dir`), LoadedModel-like objects or
    (model, tokenizer) pairs. Calibration prompts are `calibration_texts`, else the contexts of
    `calibration_items`, else of items of `calibration_tasks` (from `data_source` / `data_dir`); at most
    `calibration_size`, of which an eighth (when 16+) is held out to measure `shift_agreement`. With items,
    distillation matches the teacher's distribution over each item's answer options (gold never read).
    Writes a PEFT adapter for the target and `transfer_report.json` into `output_dir` (atomically).
    `similarity_threshold` in [0, 1] skips modules whose normalised similarity is lower (see docs/transfer.md);
    `basis_rank` is the SVD basis size of lora-x / cross-lora (None: all singular directions); `ridge` is the
    relative regulariser of paw's linear maps; `distill_steps` > 0 refines the result against the source+LoRA
    teacher on the calibration texts (`distill_objective`: "shift" or "teacher", see `distill_updates`).
    `layer_map` is "cka" or "depth" (default: cka for paw between bases of different depths, else depth);
    `modules` limits the transfer to source modules with these last name parts (e.g. ["q_proj", "v_proj"]).
    """
    started = time.monotonic()
    if method not in METHODS:
        raise PawError(f"unknown transfer method {method!r}; valid: {', '.join(METHODS)}; pick one of them")
    if not 0.0 <= similarity_threshold <= 1.0:
        raise PawError(f"similarity_threshold {similarity_threshold} is outside [0, 1]; similarities are normalised to [0, 1]")
    if layer_map is not None and layer_map not in LAYER_MAPS:
        raise PawError(f"unknown layer map {layer_map!r}; valid: {', '.join(LAYER_MAPS)}")
    if rank is not None and rank < 1:
        raise PawError(f"rank {rank} must be a positive integer; omit it to keep the source adapter's rank")
    adapter = read_adapter(source_adapter_dir)
    if modules is not None:
        modules = tuple(modules)
        adapted = {name.rsplit(".", 1)[-1] for name in adapter.modules}
        if not adapted & set(modules):
            raise PawError(f"none of modules {', '.join(modules)} is adapted by {source_adapter_dir}; "
                           f"valid: {', '.join(sorted(adapted))}")
    layer_map = layer_map or ("cka" if method == "paw" else "depth")
    needs_text = method == "paw" or distill_steps > 0 or layer_map == "cka"
    items: list[MCItem] = []
    if not calibration_texts:
        items = list(calibration_items or [])[:calibration_size]
        if not items and calibration_tasks:
            items = task_items(calibration_tasks, calibration_size, data_source, data_dir)
        calibration_texts = [item.contexts[0] for item in items]
    if needs_text and not calibration_texts:
        raise PawError(
            f"method {method!r}{' with distillation' if distill_steps else ''} needs unlabeled calibration texts; "
            "pass calibration_texts, calibration_items or calibration_tasks (CLI: --calibration_file or --dataset)"
        )
    source, target = _resolve_base(source_model, models_dir), _resolve_base(target_model, models_dir)
    layers_s, layers_t = layer_structure(source.model), layer_structure(target.model)
    out_rank = rank or adapter.rank

    texts = list(calibration_texts or [])[:calibration_size]
    # An eighth of the prompts (when there are 16+) is kept out of fitting to check the result.
    held_out = texts[len(texts) - len(texts) // 8 :] if len(texts) >= 16 else []
    fit_texts = texts[: len(texts) - len(held_out)]
    fit_items = items[: len(fit_texts)]

    def pair_up(chunk: list[str]) -> list[PairedBatch]:
        return paired_batches(
            chunk,
            source.tokenizer,
            target.tokenizer,
            source_device=model_device(source.model),
            target_device=model_device(target.model),
            max_tokens=max_tokens,
            batch_size=batch_size,
        )

    batches = pair_up(fit_texts) if needs_text else []
    cka = None
    if layer_map == "cka" and layers_s.num_layers != layers_t.num_layers:
        layers, cka = cka_layer_map(source.model, target.model, layers_s, layers_t, batches)
    else:
        layers = relative_depth_map(layers_s.num_layers, layers_t.num_layers)
    pairs, skipped = _module_pairs(adapter, source, target, layers_s, layers_t, layers, modules)

    scale_fit: dict[str, float] = {}
    if method == "paw":
        updates, rows = _paw_updates(
            source, target, layers_s, layers_t, pairs, batches, similarity_threshold, out_rank, ridge, memory_budget_gb
        )
    else:
        results = _weight_method_updates(method, pairs, source, target, basis_rank)
        updates, rows = _combine(results, similarity_threshold, out_rank)
    if not updates:
        raise PawError(
            f"no module passed similarity_threshold {similarity_threshold:g} (best "
            f"{max((r['similarity'] for r in rows), default=0.0):.3f}); nothing to write; lower --similarity_threshold"
        )
    source_updates = {p.source: (p.B, p.A) for p in pairs}
    vocab = shared_vocabulary(source.tokenizer, target.tokenizer) if texts else None
    if method == "paw" and fit_scale:
        scale_batches = [b.subsample(256) for b in batches[: max(1, 32 // batch_size)]]
        scale, kl_unscaled, kl_fitted = fit_update_scale(source.model, target.model, source_updates, updates,
                                                         scale_batches, vocab)
        updates = {name: (B * scale, A) for name, (B, A) in updates.items()}
        scale_fit = {"scale": scale, "kl_at_zero": kl_unscaled, "kl_at_scale": kl_fitted}
    distill_losses: list[float] = []
    if distill_steps > 0:
        updates, distill_losses = distill_updates(
            source.model,
            target.model,
            source_updates,
            updates,
            steps=distill_steps,
            rank=out_rank,
            lr=distill_lr,
            batches=[b.subsample(256) for b in batches],
            vocab=vocab,
            items=fit_items,
            tokenizers=(source.tokenizer, target.tokenizer),
            objective=distill_objective,
        )
    agreement = None
    if texts:
        check = [b.subsample(256) for b in pair_up(held_out or texts)[: max(1, 32 // batch_size)]]
        agreement = {
            "cosine": shift_agreement(source.model, target.model, source_updates, updates, check, vocab),
            "held_out": bool(held_out),
            "texts": min(len(held_out or texts), max(1, 32 // batch_size) * batch_size),
        }
    for row in rows:
        if row["transferred"]:
            row["delta_norm_written"] = _norm(*updates[row["target"]])  # after sum, truncation, scale, distillation

    positions = sum(b.num_positions for b in batches)
    report = {
        "method": method,
        "source_adapter": str(source_adapter_dir),
        "source_model": source.name,
        "target_model": target.name,
        "rank": out_rank,
        "source_rank": adapter.rank,
        "similarity_threshold": similarity_threshold,
        "layer_map_by": layer_map,
        "layer_map": [[i, j] for i, j in enumerate(layers)],
        "layer_cka": cka.tolist() if cka is not None else None,
        "modules": rows + skipped,
        "transferred": sorted(updates),
        "skipped": [r["source"] for r in rows + skipped if not r.get("transferred")],
        "calibration_size": len(fit_texts) if needs_text else 0,
        "calibration_positions": positions,
        "calibration_note": _calibration_note(positions, pairs, source, target) if method == "paw" else "",
        "scale_fit": scale_fit,
        "shift_agreement": agreement,
        "distill_steps": distill_steps,
        "distill_over": ("answer options" if fit_items else "next tokens") if distill_steps else None,
        "distill_objective": distill_objective if distill_steps else None,
        "distill_kl": distill_losses,
        "wall_time_s": round(time.monotonic() - started, 3),
        "peak_memory_mb": round(_peak_memory_mb(model_device(target.model)), 1),
    }
    alpha = float(adapter.config.get("lora_alpha", adapter.rank))
    with atomic_directory(output_dir) as tmp:
        write_adapter(
            tmp,
            updates,
            rank=out_rank,
            alpha=alpha,
            use_rslora=bool(adapter.config.get("use_rslora", False)),
            base_model=target.location,
        )
        atomic_write_json(tmp / REPORT_FILE, report)
    return TransferResult(Path(output_dir), report)


def format_report_table(report: dict[str, Any]) -> str:
    """A short plain-text summary of a transfer report: a header, the layer map, one row per module kind."""
    scale = (report.get("scale_fit") or {}).get("scale")
    lines = [
        f"{report['method']}: {report['source_model']} -> {report['target_model']}  rank {report['rank']}  "
        f"transferred {len(report['transferred'])} modules"
        + (f"  scale {scale:.3f}" if scale is not None else "")
        + f"  {report['wall_time_s']:.1f}s  peak {report['peak_memory_mb']:.0f} MB",
        *([f"shift agreement {agreement['cosine']:.3f} ({'held-out' if agreement['held_out'] else 'in-sample'}, "
           f"{agreement['texts']} prompts)"] if (agreement := report.get("shift_agreement")) else []),
        "layers (source->target): " + " ".join(f"{i}->{j}" for i, j in report["layer_map"]),
        *(["note: " + report["calibration_note"]] if report.get("calibration_note") else []),
        f"{'module':<22} {'moved':>7} {'sim min':>8} {'sim mean':>8} {'|dW_s|':>9} {'|dW_t|':>9}",
    ]
    kinds: dict[str, list[dict[str, Any]]] = {}
    for row in report["modules"]:
        located = split_layer_name(row["source"])
        kinds.setdefault(located[1] if located else row["source"], []).append(row)
    for kind, rows in sorted(kinds.items()):
        sims = [r["similarity"] for r in rows if "similarity" in r]
        moved = sum(1 for r in rows if r.get("transferred"))
        norm_s = sum(r.get("delta_norm_source", 0.0) ** 2 for r in rows) ** 0.5
        written = {r["target"]: r["delta_norm_written"] for r in rows if "delta_norm_written" in r}
        norm_t = sum(n**2 for n in written.values()) ** 0.5
        sim_text = f"{min(sims):>8.3f} {sum(sims) / len(sims):>8.3f}" if sims else f"{'-':>8} {'-':>8}"
        lines.append(f"{kind:<22} {f'{moved}/{len(rows)}':>7} {sim_text} {norm_s:>9.4f} {norm_t:>9.4f}")
    return "\n".join(lines)
