"""SparseGPT (Frantar & Alistarh, 2023).

H = 2XᵀX over the calibration tokens, dampened by a fraction of its mean diagonal; H⁻¹ through a
Cholesky factorisation and its upper Cholesky factor U. Columns are processed in blocks of
`blocksize`: each block's mask is chosen by w² / U_jj² (adaptive mask selection; for N:M, every M
columns), every pruned weight's error is spread over the block's remaining columns (OBS update), and
the block's accumulated error updates all later columns at once (lazy batch update).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..masks import Pattern, lowest_k


@dataclass(frozen=True)
class Options:
    blocksize: int = 128
    dampening: float = 0.01
    update_weights: bool = True
    max_dampening: float = 1.0   # retries multiply dampening by 10 up to this fraction of mean diag


class NotPositiveDefinite(RuntimeError):
    pass


def inverse_hessian_factor(hessian: torch.Tensor, dampening: float, max_dampening: float = 1.0):
    """U, the upper Cholesky factor of (H + λI)⁻¹, with λ = dampening · mean(diag H).

    Raises the dampening tenfold while the factorisation fails; returns (U, dampening used, retries).
    `hessian` is dampened in place (its diagonal only); the factor, the inverse and U are computed in one
    buffer, in place, so two [in, in] matrices are alive, not five (a 5632-wide MLP layer's Hessian is
    127 MB in float32). Same operations, same results as computing each into a new tensor.
    """
    H = hessian
    diagonal = H.diagonal()
    mean_diag = diagonal.mean()       # on the strided view, as ever: a contiguous copy sums in another order
    undamped = diagonal.clone()
    factor = torch.empty_like(H)
    info = torch.empty((), dtype=torch.int32, device=H.device)
    retries, damp = 0, dampening
    while True:
        diagonal.copy_(undamped + damp * mean_diag)
        torch.linalg.cholesky_ex(H, out=(factor, info))
        if int(info) == 0:
            torch.cholesky_inverse(factor, out=factor)
            torch.linalg.cholesky_ex(factor, upper=True, out=(factor, info))
            if int(info) == 0 and torch.isfinite(factor).all():
                return factor, damp, retries
        if damp * 10 > max_dampening + 1e-12:
            raise NotPositiveDefinite(
                f"the Hessian is not positive definite even with dampening {damp:g}: "
                "use more (or more varied) calibration data"
            )
        damp, retries = damp * 10, retries + 1


def prune(weight: torch.Tensor, stats, sparsity: float, pattern: Pattern, options: Options | None = None):
    from . import MethodResult

    options = options or Options()
    W = weight.float().clone(memory_format=torch.contiguous_format)  # GPT-2 Conv1D hands in a transposed view
    U, dead, damp_used, retries = _factor(stats, W.device, options)
    W[:, dead] = 0               # columns that never saw a non-zero input: nothing to preserve
    u_diag = U.diagonal()
    score = weight.float().pow(2) / u_diag.pow(2).reshape(1, -1)
    mask = torch.zeros_like(W, dtype=torch.bool)
    rows, columns = W.shape
    for i1 in range(0, columns, options.blocksize):
        i2 = min(i1 + options.blocksize, columns)
        block_error = _prune_block(W, U, mask, i1, i2, sparsity, pattern, options.update_weights)
        if options.update_weights and i2 < columns:
            W[:, i2:] -= block_error @ U[i1:i2, i2:]
    notes = {"dampening": damp_used}
    if retries:
        notes["dampening_retries"] = retries
    return MethodResult(W, mask, score, notes)


def _factor(stats, device, options: Options):
    """U for this layer's Hessian, computed once per statistics object: layers fed the same input
    (q/k/v, gate/up) share their statistics, hence their Hessian, hence U."""
    key = ("sparsegpt", str(device), options.dampening, options.max_dampening)
    if key not in stats.cache:
        H = stats.hessian.to(device, torch.float32)
        if H is stats.xtx:       # never alter the caller's statistics; `hessian` is normally a fresh tensor
            H = H.clone()
        dead = H.diagonal() == 0
        H[dead, dead] = 1
        U, damp_used, retries = inverse_hessian_factor(H, options.dampening, options.max_dampening)
        stats.cache[key] = (U, dead, damp_used, retries)
    return stats.cache[key]


def _prune_block(W, U, mask, i1, i2, sparsity, pattern: Pattern, update: bool) -> torch.Tensor:
    """Prune columns i1:i2 of W in place (mask too); return the block's scaled errors for the lazy update."""
    W1 = W[:, i1:i2].clone()
    U1 = U[i1:i2, i1:i2]
    d = U1.diagonal()
    mask1 = torch.zeros_like(W1, dtype=torch.bool)
    if not pattern.structured:
        block_score = W1.pow(2) / d.pow(2).reshape(1, -1)
        mask1 = lowest_k(block_score.flatten(), int(block_score.numel() * sparsity)).view_as(block_score)
    errors = torch.zeros_like(W1)
    for i in range(i2 - i1):
        if pattern.structured and i % pattern.m == 0:
            group = W1[:, i:i + pattern.m].pow(2) / d[i:i + pattern.m].pow(2).reshape(1, -1)
            drop = torch.topk(group, pattern.m - pattern.n, dim=1, largest=False).indices
            mask1.scatter_(1, i + drop, True)
        w = W1[:, i]
        q = w.masked_fill(mask1[:, i], 0)
        err = (w - q) / d[i]
        if update:
            W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)
        W1[:, i] = q
        errors[:, i] = err
    W[:, i1:i2] = W1
    mask[:, i1:i2] = mask1
    return errors
