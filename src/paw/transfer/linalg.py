"""Small linear-algebra pieces shared by the transfer methods (fp32/fp64 math whatever the weights' dtype)."""

from __future__ import annotations

import torch


def crop_pad(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """`x` cut or zero-padded to (rows, cols): the index correspondence between unaligned coordinates."""
    out = x.new_zeros(rows, cols)
    r, c = min(rows, x.shape[0]), min(cols, x.shape[1])
    out[:r, :c] = x[:r, :c]
    return out


def orthonormal_basis(x: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal columns spanning the column space of `x` (numerically zero directions dropped)."""
    u, s, _ = torch.linalg.svd(x.double(), full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return u[:, :0]
    return u[:, s > rtol * s[0]]


def subspace_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖Qaᵀ Qb‖_F² / min(ka, kb) for orthonormal bases Qa, Qb of span(a), span(b).

    The mean squared cosine of the principal angles: 1 when one subspace contains the other, 0 when they are
    orthogonal, about k/d for random k-dimensional subspaces of R^d.
    """
    qa, qb = orthonormal_basis(a), orthonormal_basis(b)
    k = min(qa.shape[1], qb.shape[1])
    if k == 0:
        return 0.0
    return float(min(1.0, (qa.T @ qb).pow(2).sum().item() / k))


def similarity_rank(weight_shape: torch.Size | tuple[int, int]) -> int:
    """The k of the top-k singular subspaces the similarity compares: a quarter of the weight's rank."""
    return max(1, min(weight_shape) // 4)


def singular_bases(weight: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_k, V_k): top-k left and right singular vectors of `weight` (all min(out, in) when k is None)."""
    w = weight.detach().float()
    full = min(w.shape)
    # Randomised SVD only where it saves much; it is not deterministic, and identical weights must give
    # identical subspaces (similarity exactly 1).
    if k is None or k > full // 10:
        u, _, vh = torch.linalg.svd(w, full_matrices=False)
        k = full if k is None else min(k, full)
        return u[:, :k], vh[:k].T
    u, _, v = torch.svd_lowrank(w, q=min(full, k + 10), niter=4)
    return u[:, :k], v[:, :k]


def psd_sqrt_pair(cov: torch.Tensor, rel_floor: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(C^½, C^-½) of a covariance, eigenvalues floored so the two stay exact inverses of each other."""
    evals, evecs = torch.linalg.eigh(cov.double())
    evals = evals.clamp_min(rel_floor * max(float(evals.max()), 1e-30))
    return (evecs * evals.sqrt()) @ evecs.T, (evecs * evals.rsqrt()) @ evecs.T


def ridge_lambda(gram: torch.Tensor, ridge: float) -> float:
    """λ = ridge · mean eigenvalue of a Gram matrix: a scale-free regulariser."""
    return ridge * max(float(gram.diagonal().mean()), 1e-30)


def shifted_solve(gram: torch.Tensor, lam: float, rhs: torch.Tensor) -> torch.Tensor:
    """(G + λI)⁻¹ rhs in fp64."""
    gram = gram.double()
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + lam * eye, rhs.double().to(gram.device))
