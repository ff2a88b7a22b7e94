"""Data-free transfer of one module's update from the two bases' weights alone: copy, LoRA-X, Cross-LoRA,
and the `random` control.

Each function takes the source factors (ΔW_s = B @ A, scale folded in), the source and target base weights,
and returns target factors (B_t, A_t) with ΔW_t = B_t @ A_t, in the target module's shape. Without data, the
only correspondence between two bases' coordinates is the index (crop / zero-pad): for bases that were not
trained together this is arbitrary, which is what these methods are controls for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from paw.transfer.linalg import crop_pad, similarity_rank, singular_bases, subspace_similarity

Factors = tuple[torch.Tensor, torch.Tensor]
# Carries a basis of source coordinates (columns) into target coordinates.
BasisMap = Callable[[torch.Tensor], torch.Tensor]


def module_similarity(w_source: torch.Tensor, w_target: torch.Tensor, map_out: BasisMap, map_in: BasisMap) -> float:
    """Normalised subspace similarity in [0, 1] between two base weights under a coordinate correspondence.

    The top-k left (output) and right (input) singular subspaces of the source weight are carried into target
    coordinates by `map_out` / `map_in` and compared with the target's top-k ones (mean squared cosine of the
    principal angles); the result is the mean of the two sides. k is a quarter of the smaller weight's rank.
    """
    k = min(similarity_rank(w_source.shape), similarity_rank(w_target.shape))
    u_s, v_s = singular_bases(w_source, k)
    u_t, v_t = singular_bases(w_target, k)
    return 0.5 * (subspace_similarity(map_out(u_s), u_t) + subspace_similarity(map_in(v_s), v_t))


def index_similarity(w_source: torch.Tensor, w_target: torch.Tensor) -> float:
    """`module_similarity` under the index correspondence (identity for equal shapes, crop / pad otherwise)."""
    out_t, in_t = w_target.shape
    return module_similarity(
        w_source, w_target, lambda u: crop_pad(u, out_t, u.shape[1]), lambda v: crop_pad(v, in_t, v.shape[1])
    )


def copy_update(B: torch.Tensor, A: torch.Tensor, w_source: torch.Tensor, w_target: torch.Tensor) -> Factors:
    """Same coordinates assumed: the factors cut or zero-padded to the target shape."""
    out_t, in_t = w_target.shape
    return crop_pad(B, out_t, B.shape[1]), crop_pad(A, A.shape[0], in_t)


def lora_x_update(
    B: torch.Tensor, A: torch.Tensor, w_source: torch.Tensor, w_target: torch.Tensor, basis_rank: int | None
) -> Factors:
    """LoRA-X: ΔW_t = U_t U_tᵀ P̂_out ΔW_s P̂_inᵀ V_t V_tᵀ, U_t / V_t the target weight's singular bases.

    Equal shapes: P̂ = I. Otherwise P̂ = argmin ‖P U_s − U_t‖_F = U_t U_sᵀ, which sends the source's i-th
    singular direction to the target's i-th (matching by spectral rank; singular-vector signs are arbitrary).
    """
    u_t, v_t = singular_bases(w_target, basis_rank)
    B, A = B.float(), A.float()
    if w_source.shape == w_target.shape:
        return u_t @ (u_t.T @ B), (A @ v_t) @ v_t.T
    u_s, v_s = singular_bases(w_source, basis_rank)
    k = min(u_s.shape[1], u_t.shape[1])
    return u_t[:, :k] @ (u_s[:, :k].T @ B), (A @ v_s[:, :k]) @ v_t[:, :k].T


def cross_lora_update(
    B: torch.Tensor, A: torch.Tensor, w_source: torch.Tensor, w_target: torch.Tensor, basis_rank: int | None
) -> Factors:
    """Cross-LoRA: LoRA-Align then LoRA-Shift.

    Align: rank-truncated SVDs of both bases; R_U = argmin_R ‖U_t R − E U_s‖_F = U_tᵀ E U_s (and R_V likewise),
    E the index (crop / pad) embedding of source into target coordinates. Shift: the update's coordinates in
    the source subspaces, U_sᵀ ΔW_s V_s, carried by R_U, R_V into the target subspaces:
    ΔW_t = U_t R_U (U_sᵀ ΔW_s V_s) R_Vᵀ V_tᵀ.
    """
    out_t, in_t = w_target.shape
    u_s, v_s = singular_bases(w_source, basis_rank)
    u_t, v_t = singular_bases(w_target, basis_rank)
    r_u = u_t.T @ crop_pad(u_s, out_t, u_s.shape[1])
    r_v = v_t.T @ crop_pad(v_s, in_t, v_s.shape[1])
    return u_t @ (r_u @ (u_s.T @ B.float())), ((A.float() @ v_s) @ r_v.T) @ v_t.T


def random_update(B: torch.Tensor, A: torch.Tensor, w_target: torch.Tensor, seed: int) -> Factors:
    """The control: a random rank-r update in the target's shape with the source update's Frobenius norm.

    Anything a method recovers beyond what this recovers is more than "some perturbation of that size"."""
    generator = torch.Generator().manual_seed(seed)
    out_t, in_t = w_target.shape
    B_r = torch.randn(out_t, B.shape[1], generator=generator)
    A_r = torch.randn(A.shape[0], in_t, generator=generator)
    scale = (B.double() @ A.double()).norm() / (B_r.double() @ A_r.double()).norm()
    return (B_r * scale.float()).to(w_target.device), A_r.to(w_target.device)
