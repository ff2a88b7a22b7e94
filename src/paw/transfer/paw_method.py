"""PAW: function-space alignment of two bases from unlabeled text, then a closed-form update transfer.

For a source module at layer i paired with the same-named target module at layer m[i]:
  M_in  = argmin Σ‖x_s − M x_t‖² + λ‖M‖²   (target module input -> source module input)
  M_out = argmin Σ‖y_t − M y_s‖² + λ‖M‖²   (source module output -> target module output)
  ΔW_t  = M_out ΔW_s M_in
so that ΔW_t x_t = M_out ΔW_s (M_in x_t) ≈ M_out (ΔW_s x_s): the source update's effect, expressed in target
coordinates. Both maps come from sufficient statistics (ΣxxT-style covariances) accumulated over aligned
token positions; activations are never stored. Computed on factors: A_t = A_s M_in, B_t = M_out B_s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from paw.progress import track
from paw.transfer.calibration import (
    PairedBatch,
    added_updates,
    forward_until,
    kl_divergence,
    model_device,
    position_logprobs,
)
from paw.transfer.layer_map import centred_gram, linear_cka, monotone_layer_map
from paw.transfer.linalg import crop_pad, ridge_lambda, shifted_solve
from paw.transfer.structure import LayerStructure
from paw.transfer.weight_methods import module_similarity


@dataclass
class ModulePair:
    source: str
    target: str
    source_layer: int
    target_layer: int
    B: torch.Tensor  # source factors, ΔW_s = B @ A
    A: torch.Tensor


# Modules whose output is added into the residual stream; their output map also learns from the residual
# stream itself, which every token excites in all directions (a module's own outputs may not).
RESIDUAL_WRITERS = ("o_proj", "down_proj")


@dataclass
class Moments:
    """Sufficient statistics of a linear map b ≈ M a over aligned positions: Σ a aᵀ, Σ b aᵀ."""

    aa: torch.Tensor
    ba: torch.Tensor
    bb_trace: float = 0.0  # Σ ‖b‖², to judge how much the index map E explains
    count: int = 0

    @classmethod
    def zeros(cls, a_dim: int, b_dim: int, device: torch.device) -> Moments:
        return cls(torch.zeros(a_dim, a_dim, dtype=torch.float64, device=device), torch.zeros(b_dim, a_dim, dtype=torch.float64, device=device))

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        # One batch's products in fp32 (a few hundred positions: ~1e-6 relative error; fp32 matmuls run about
        # twice as fast as fp64), summed across batches in fp64.
        self.aa += (a.T @ a).double()
        self.ba += (b.T @ a).double()
        self.bb_trace += float(b.double().pow(2).sum())
        self.count += a.shape[0]

    def merged(self, other: Moments) -> Moments:
        """Both sample sets in one fit, `other` reweighted to carry the same total energy as self."""
        weight = float(self.aa.trace()) / max(float(other.aa.trace()), 1e-30)
        return Moments(
            self.aa + weight * other.aa, self.ba + weight * other.ba, self.bb_trace + weight * other.bb_trace,
            self.count + other.count,
        )

    def index_map_explains(self) -> float:
        """1 − Σ‖b − E a‖² / Σ‖b‖²: the share of b the index map E (identity, cropped / padded) explains."""
        k = min(self.ba.shape)
        residual = self.bb_trace - 2 * float(self.ba.diagonal()[:k].sum()) + float(self.aa.diagonal()[:k].sum())
        return 1.0 - residual / max(self.bb_trace, 1e-30)


@dataclass
class PairStats:
    inputs: Moments  # a = target module input, b = source module input (M_in: target -> source)
    outputs: Moments  # a = source module output, b = target module output (M_out: source -> target)


def ridge_map(moments: Moments, ridge: float):
    """(M·, Mᵀ·) for the ridge regression b ≈ M a: M = (Σ b aᵀ + λP)(Σ a aᵀ + λI)⁻¹.

    The prior P is the index map E (identity, cropped / padded) when E already explains most of b (related
    bases: fine-tunes, shared sub-spaces, identical models, which then get exactly M = I whatever λ), else 0 (the
    usual ridge: directions the data does not determine are left out rather than mapped arbitrarily).
    """
    lam = ridge_lambda(moments.aa, ridge)
    prior = lam if moments.index_map_explains() > 0.5 else 0.0
    b_dim, a_dim = moments.ba.shape

    def apply(u: torch.Tensor) -> torch.Tensor:
        z = shifted_solve(moments.aa, lam, u)
        return moments.ba @ z + prior * crop_pad(z, b_dim, z.shape[1])

    def apply_t(v: torch.Tensor) -> torch.Tensor:
        v = v.double().to(moments.ba.device)
        return shifted_solve(moments.aa, lam, moments.ba.T @ v + prior * crop_pad(v, a_dim, v.shape[1]))

    return apply, apply_t


def _first_tensor(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output  # type: ignore[index,return-value]


def _output_hook(store: dict[int, torch.Tensor], index: int, rows: torch.Tensor, cols: torch.Tensor):
    def hook(_module: nn.Module, _args: tuple, output: object) -> None:
        store[index] = _first_tensor(output)[rows, cols].detach().double().cpu()

    return hook


@torch.no_grad()
def cka_layer_map(
    source: nn.Module,
    target: nn.Module,
    layers_s: LayerStructure,
    layers_t: LayerStructure,
    batches: list[PairedBatch],
    max_positions: int = 1024,
) -> tuple[list[int], torch.Tensor]:
    """Layer map by linear CKA of the layers' output hidden states on aligned positions, then a monotone DP.

    CKA needs all positions at once (Gram matrices), so it uses at most `max_positions` of them.
    """
    feats_s: list[list[torch.Tensor]] = [[] for _ in range(layers_s.num_layers)]
    feats_t: list[list[torch.Tensor]] = [[] for _ in range(layers_t.num_layers)]
    taken = 0
    for batch in track(batches, "transfer: layer CKA", unit="batch"):
        if taken >= max_positions:
            break
        keep = min(batch.num_positions, max_positions - taken)
        for model, layers, mbatch, feats in (
            (source, layers_s, batch.source, feats_s),
            (target, layers_t, batch.target, feats_t),
        ):
            store: dict[int, torch.Tensor] = {}
            rows, cols = mbatch.rows[:keep], mbatch.cols[:keep]
            handles = [
                layers.layer(model, i).register_forward_hook(_output_hook(store, i, rows, cols))
                for i in range(layers.num_layers)
            ]
            try:
                forward_until(model, mbatch, layers.layer(model, layers.num_layers - 1))
            finally:
                for handle in handles:
                    handle.remove()
            for i, value in store.items():
                feats[i].append(value)
        taken += keep
    grams_s = [centred_gram(torch.cat(f)) for f in feats_s]
    grams_t = [centred_gram(torch.cat(f)) for f in feats_t]
    cka = linear_cka(grams_s, grams_t)
    return monotone_layer_map(cka), cka


def _pair_bytes(model_s: nn.Module, model_t: nn.Module, pair: ModulePair) -> int:
    out_s, in_s = model_s.get_submodule(pair.source).weight.shape
    out_t, in_t = model_t.get_submodule(pair.target).weight.shape
    return 8 * (in_t * in_t + in_t * in_s + out_s * out_s + out_t * out_s)


def _chunks_by_target_layer(
    model_s: nn.Module, model_t: nn.Module, pairs: list[ModulePair], budget_bytes: int
) -> list[list[ModulePair]]:
    """Groups of pairs whose statistics fit the memory budget; a target layer is never split (its modules'
    updates from several source layers are summed and truncated together)."""
    by_layer: dict[int, list[ModulePair]] = {}
    for pair in pairs:
        by_layer.setdefault(pair.target_layer, []).append(pair)
    chunks: list[list[ModulePair]] = []
    size = 0
    for layer in sorted(by_layer):
        layer_bytes = sum(_pair_bytes(model_s, model_t, p) for p in by_layer[layer])
        if chunks and size + layer_bytes <= budget_bytes:
            chunks[-1].extend(by_layer[layer])
            size += layer_bytes
        else:
            chunks.append(list(by_layer[layer]))
            size = layer_bytes
    return chunks


def _select(tensor: object, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return _first_tensor(tensor)[rows, cols].float()


@torch.no_grad()
def _accumulate(
    source: nn.Module,
    target: nn.Module,
    layers_s: LayerStructure,
    layers_t: LayerStructure,
    chunk: list[ModulePair],
    batches: list[PairedBatch],
    desc: str,
) -> list[PairStats]:
    """One calibration pass over both models accumulating every pair's input / output moments (and the
    residual-stream moments of the layer pairs whose residual writers are adapted)."""
    stats: dict[int, PairStats] = {}
    residual: dict[tuple[int, int], Moments] = {}
    captured: dict[object, tuple[torch.Tensor, ...]] = {}
    current: dict[str, PairedBatch] = {}

    def capture(key: object):
        def hook(_module: nn.Module, args: tuple, output: object) -> None:
            b = current["batch"].source
            captured[key] = (_select(args[0], b.rows, b.cols), _select(output, b.rows, b.cols))

        return hook

    def pair_hook(index: int):
        def hook(_module: nn.Module, args: tuple, output: object) -> None:
            b = current["batch"].target
            x_t, y_t = _select(args[0], b.rows, b.cols), _select(output, b.rows, b.cols)
            x_s, y_s = (t.to(x_t.device) for t in captured.pop(index))
            if index not in stats:
                stats[index] = PairStats(
                    Moments.zeros(x_t.shape[1], x_s.shape[1], x_t.device), Moments.zeros(y_s.shape[1], y_t.shape[1], x_t.device)
                )
            stats[index].inputs.add(x_t, x_s)
            stats[index].outputs.add(y_s, y_t)

        return hook

    def residual_hook(key: tuple[int, int]):
        def hook(_module: nn.Module, args: tuple, output: object) -> None:
            b = current["batch"].target
            h_t = _select(output, b.rows, b.cols)
            h_s = captured.pop(key)[1].to(h_t.device)
            if key not in residual:
                residual[key] = Moments.zeros(h_s.shape[1], h_t.shape[1], h_t.device)
            residual[key].add(h_s, h_t)

        return hook

    handles = []
    for index, pair in enumerate(chunk):
        handles.append(source.get_submodule(pair.source).register_forward_hook(capture(index)))
        handles.append(target.get_submodule(pair.target).register_forward_hook(pair_hook(index)))
    layer_pairs = {(p.source_layer, p.target_layer) for p in chunk if p.source.endswith(RESIDUAL_WRITERS)}
    for key in layer_pairs:
        handles.append(layers_s.layer(source, key[0]).register_forward_hook(capture(key)))
        handles.append(layers_t.layer(target, key[1]).register_forward_hook(residual_hook(key)))
    last_s = layers_s.layer(source, max(p.source_layer for p in chunk))
    last_t = layers_t.layer(target, max(p.target_layer for p in chunk))
    try:
        for batch in track(batches, desc, unit="batch"):
            if batch.num_positions == 0:
                continue
            current["batch"] = batch
            forward_until(source, batch.source, last_s)
            forward_until(target, batch.target, last_t)
    finally:
        for handle in handles:
            handle.remove()
    for index, pair in enumerate(chunk):
        key = (pair.source_layer, pair.target_layer)
        if pair.source.endswith(RESIDUAL_WRITERS) and key in residual:
            stats[index].outputs = stats[index].outputs.merged(residual[key])
    return [stats[index] for index in range(len(chunk))]


def paw_pair_update(pair: ModulePair, stats: PairStats, w_source: torch.Tensor, w_target: torch.Tensor, ridge: float):
    """(B_t, A_t, similarity) for one module pair: B_t = M_out B_s, A_t = A_s M_in."""
    map_out, _ = ridge_map(stats.outputs, ridge)
    _, map_in_t = ridge_map(stats.inputs, ridge)  # M_inᵀ: source input directions as target input directions
    device = stats.inputs.aa.device
    similarity = module_similarity(w_source.to(device), w_target.to(device), map_out, map_in_t)
    return map_out(pair.B.to(device)).float(), map_in_t(pair.A.T).T.float(), similarity


def paw_statistics(
    source: nn.Module,
    target: nn.Module,
    layers_s: LayerStructure,
    layers_t: LayerStructure,
    pairs: list[ModulePair],
    batches: list[PairedBatch],
    memory_budget_gb: float,
):
    """Yields (chunk of pairs, their statistics), one calibration pass per chunk of target layers."""
    chunks = _chunks_by_target_layer(source, target, pairs, int(memory_budget_gb * 2**30))
    for number, chunk in enumerate(chunks, 1):
        yield chunk, _accumulate(source, target, layers_s, layers_t, chunk, batches, f"transfer: statistics {number}/{len(chunks)}")


@torch.no_grad()
def fit_update_scale(
    source: nn.Module,
    target: nn.Module,
    source_updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    target_updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    batches: list[PairedBatch],
    vocab: tuple[torch.Tensor, torch.Tensor],
    max_scale: float = 4.0,
    iterations: int = 12,
) -> tuple[float, float, float]:
    """Scalar c in [0, max_scale] minimising the mean KL(wanted ‖ target+c·ΔW_t) at the calibration positions,
    over the shared vocabulary; wanted = the target base's next-token distribution moved by the source LoRA's
    log-probability change, softmax(log p_t + log p_{s+ΔW_s} − log p_s).

    c = 1 when ΔW_t reproduces the source's change; c → 0 when its effect is unrelated to that change, so a
    transfer that cannot help does not hurt. Golden-section search (the KL is smooth in c), keeping c = 1 or 0
    when no worse. Returns (c, KL at c = 0, KL at c).
    """
    batches = [b for b in batches if b.num_positions > 0]
    ids_s, ids_t = vocab[0].to(model_device(source)), vocab[1].to(model_device(target))
    wanted = []
    for batch in batches:
        base_s = position_logprobs(source, batch.source, ids_s)
        with added_updates(source, source_updates):
            tuned_s = position_logprobs(source, batch.source, ids_s)
        base_t = position_logprobs(target, batch.target, ids_t)
        wanted.append(torch.log_softmax(base_t + (tuned_s - base_s).to(base_t.device), dim=-1))
    total = sum(b.num_positions for b in batches)

    def divergence(scale: float) -> float:
        kl = 0.0
        for batch, goal in zip(batches, wanted):
            with added_updates(target, target_updates, scale):
                kl += float(kl_divergence(goal, position_logprobs(target, batch.target, ids_t))) * batch.num_positions
        return kl / total

    ratio = (math.sqrt(5) - 1) / 2
    low, high = 0.0, max_scale
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    f_a, f_b = divergence(a), divergence(b)
    for _ in range(iterations):
        if f_a <= f_b:
            high, b, f_b = b, a, f_a
            a = high - ratio * (high - low)
            f_a = divergence(a)
        else:
            low, a, f_a = a, b, f_b
            b = low + ratio * (high - low)
            f_b = divergence(b)
    # The search's best point, or exactly 1 (the map as fitted) or 0 (no update) when those are no worse.
    at_zero = divergence(0.0)
    candidates = [(f_a, a), (f_b, b), (divergence(1.0), 1.0), (at_zero, 0.0)]
    best, scale = min(candidates, key=lambda c: (c[0], c[1] != 1.0))
    return scale, at_zero, best
