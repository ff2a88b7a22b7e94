"""Which target layer each source layer's update goes to.

A layer map is a list `m` with `m[i]` = target layer of source layer i: every source update lands exactly once
(never duplicated), in depth order. When the target is deeper the map is injective; when it is shallower
neighbouring source layers share a target layer and their updates add.
"""

from __future__ import annotations

import torch


def relative_depth_map(num_source: int, num_target: int) -> list[int]:
    """Source layer i -> the target layer at the same relative depth."""
    if num_source == 1:
        return [0]
    return [round(i * (num_target - 1) / (num_source - 1)) for i in range(num_source)]


def linear_cka(grams_source: list[torch.Tensor], grams_target: list[torch.Tensor]) -> torch.Tensor:
    """CKA matrix (num_source, num_target) from centred Gram matrices K = X Xᵀ of the same n token positions.

    Linear CKA = ⟨Kx, Ky⟩ / (‖Kx‖ ‖Ky‖): invariant to rotations and isotropic scaling of either
    representation, and comparable across widths.
    """
    flat_s = torch.stack([g.flatten() / g.norm().clamp_min(1e-30) for g in grams_source])
    flat_t = torch.stack([g.flatten() / g.norm().clamp_min(1e-30) for g in grams_target])
    return flat_s @ flat_t.T


def centred_gram(features: torch.Tensor) -> torch.Tensor:
    x = features.double()
    x = x - x.mean(dim=0, keepdim=True)
    return x @ x.T


def monotone_layer_map(similarity: torch.Tensor) -> list[int]:
    """Order-preserving source->target layer map maximising the summed similarity (dynamic programme).

    Non-decreasing in source depth; strictly increasing (no two source layers share a target) when the
    target has at least as many layers.
    """
    num_source, num_target = similarity.shape
    strict = num_source <= num_target
    sim = similarity.double().tolist()
    neg = float("-inf")
    score = [[neg] * num_target for _ in range(num_source)]
    back = [[0] * num_target for _ in range(num_source)]
    for j in range(num_target):
        if not strict or j <= num_target - num_source:
            score[0][j] = sim[0][j]
    for i in range(1, num_source):
        best, best_j = neg, 0
        for j in range(num_target):
            # best predecessor among target layers <= j (or < j when strict), as a running prefix maximum
            candidate = j - 1 if strict else j
            if candidate >= 0 and score[i - 1][candidate] > best:
                best, best_j = score[i - 1][candidate], candidate
            if best > neg and (not strict or j <= num_target - num_source + i):
                score[i][j] = best + sim[i][j]
                back[i][j] = best_j
    j = max(range(num_target), key=lambda col: score[-1][col])
    mapping = [j]
    for i in range(num_source - 1, 0, -1):
        j = back[i][j]
        mapping.append(j)
    return mapping[::-1]
