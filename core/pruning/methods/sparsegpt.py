"""SparseGPT (Frantar & Alistarh, 2023).

H = 2XᵀX over the calibration tokens, dampened by a fraction of its mean diagonal; H⁻¹ through a
Cholesky factorisation and its upper Cholesky factor U. Columns are processed in blocks of
`blocksize`: each block's mask is chosen by w² / U_jj² (adaptive mask selection; for N:M, every M
columns), every pruned weight's error is spread over the block's remaining columns (OBS update), and
the block's accumulated error updates all later columns at once (lazy batch update).

Rows, columns and blocks: the mask is chosen once, up front, for the whole layer, by the saliency
w_ij² / U_jj² (the sweep's own OBS cost of pruning w_ij with the later columns free to compensate)
summed over each unit (`masks.block_mask`: mean, as many units as fit in the budget), from the weights
with never-seen inputs zeroed; the sweep then runs with that mask fixed. A global choice, not one per
block of 128 columns as the unstructured mask: a per-block choice would prune the same share of input
columns in every 128, where whole columns deserve a layer-wide ranking (a few inputs carry most of the
activation mass). For columns and blocks the OBS update spreads each pruned weight's error over the
later columns of its row. For rows it has nothing to work on: the rows of a layer are independent OBS
problems sharing H, and a row whose weights are all pruned has no weight left to compensate it, so
rows are picked by their summed saliency and the other rows stay exactly as they were (no update).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...patterns import Pattern
from ...quantization.gptq import ColumnQuantizer
from ..masks import lowest_k, unit_mask
from .base import MethodResult


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


def prune(weight: torch.Tensor, stats, sparsity: float, pattern: Pattern, options: Options | None = None, *,
          quantizer: ColumnQuantizer | None = None):
    """`quantizer`: also round every kept weight onto its grid inside the same sweep (the SparseGPT paper's
    joint pruning and quantization); the result's `quantized` is then its record."""
    options = options or Options()
    U, dead, damp_used, retries = factor(stats, weight.device, options.dampening, options.max_dampening)
    # The solve walks the columns one by one, so it works on Wᵀ: each column is a contiguous row.
    dense = weight.float()
    Wt = dense.t().clone(memory_format=torch.contiguous_format)   # never the caller's tensor
    Wt[dead] = 0                 # columns that never saw a non-zero input: nothing to preserve
    score = dense.pow(2) / U.diagonal().pow(2).reshape(1, -1)
    pruned_t = torch.zeros_like(Wt, dtype=torch.bool)
    if pattern.whole_units:      # chosen up front; `_prune_block` keeps it
        saliency = Wt.pow(2).div_(U.diagonal().pow(2).reshape(-1, 1))
        pruned_t = unit_mask(saliency.t(), pattern, sparsity).t().contiguous()
    columns = Wt.shape[0]
    for i1 in range(0, columns, options.blocksize):
        i2 = min(i1 + options.blocksize, columns)
        block_error = _prune_block(Wt, U, pruned_t, i1, i2, sparsity, pattern, options.update_weights, quantizer)
        if options.update_weights and i2 < columns:
            Wt[i2:] -= U[i1:i2, i2:].t() @ block_error
    notes = {"dampening": damp_used}
    if retries:
        notes["dampening_retries"] = retries
    record = quantizer.record(method="gptq", joint=True) if quantizer is not None else None
    return MethodResult(Wt.t().contiguous(), pruned_t.t().contiguous(), score, notes, record)


def factor(stats, device, dampening: float, max_dampening: float = 1.0, order: torch.Tensor | None = None):
    """(U, dead inputs, dampening used, retries) for this layer's Hessian, computed once per statistics
    object: layers fed the same input (q/k/v, gate/up) share their statistics, hence their Hessian, hence
    U, and GPTQ after SparseGPT reuses SparseGPT's. `order`: U of H with its inputs in that order
    (GPTQ's activation order); `dead` is always in the inputs' own order."""
    key = ("U", str(device), dampening, max_dampening, None if order is None else tuple(order.tolist()))
    if key not in stats.cache:
        xtx = stats.xtx
        if stats.disposable and order is None and xtx.device == device and xtx.dtype == torch.float32:
            # The pipeline's own sums, needed by nobody once U exists: turned into H in their own storage
            # (the same values as `stats.hessian`), which saves an [in, in] matrix at the solve's peak
            # (127 MB for a 5632-wide down projection).
            H, stats.xtx = xtx.mul_(2.0 / max(stats.tokens, 1)), None
        else:
            H = stats.hessian.to(device, torch.float32)
            if H is stats.xtx:   # never alter the caller's statistics; `hessian` is normally a fresh tensor
                H = H.clone()
            if order is not None:
                H = H[order][:, order]
        dead = H.diagonal() == 0
        H[dead, dead] = 1
        U, damp_used, retries = inverse_hessian_factor(H, dampening, max_dampening)
        if order is not None:           # callers zero dead inputs before permuting
            dead = torch.zeros_like(dead).index_copy_(0, order.to(dead.device), dead)
        stats.cache[key] = (U, dead, damp_used, retries)
    return stats.cache[key]


def _prune_block(Wt, U, pruned_t, i1, i2, sparsity, pattern: Pattern, update: bool,
                 quantizer: ColumnQuantizer | None = None) -> torch.Tensor:
    """Prune columns i1:i2 (rows i1:i2 of Wt, and of the mask) in place; return the block's scaled errors
    [columns, rows] for the lazy update. Rows, columns and blocks: the mask already in `pruned_t` is kept.

    Column i's error is w·[pruned]/U_ii; subtracting error ⊗ U[i, i:] from the block's remaining columns
    is the OBS update, and it also takes column i's pruned weights to zero (they are set exactly after).
    Two operations per column: the loop is bound by per-operation overhead, not arithmetic.
    """
    W1 = Wt[i1:i2]
    U1 = U[i1:i2, i1:i2]
    d = U1.diagonal().reshape(-1, 1)
    if pattern.whole_units:
        pruned = pruned_t[i1:i2].clone()
        error_scale = pruned.to(W1.dtype).div_(d)
    elif pattern.structured:
        pruned = torch.zeros_like(W1, dtype=torch.bool)
        error_scale = torch.empty_like(W1)
    else:
        block_score = W1.pow(2) / d.pow(2)
        pruned = lowest_k(block_score.flatten(), int(block_score.numel() * sparsity)).view_as(block_score)
        error_scale = pruned.to(W1.dtype).div_(d)
    errors = torch.empty_like(W1)
    m, n = pattern.m, pattern.n
    for i in range(i2 - i1):
        if pattern.structured and i % m == 0:
            group = W1[i:i + m].pow(2).div_(d[i:i + m].pow(2))
            drop = torch.topk(group, m - n, dim=0, largest=False).indices
            pruned[i:i + m].scatter_(0, drop, True)
            torch.div(pruned[i:i + m].to(W1.dtype), d[i:i + m], out=error_scale[i:i + m])
        if quantizer is not None:
            _quantize_column(Wt, W1, U1, pruned, errors, quantizer, i1, i)
            continue
        error = torch.mul(W1[i], error_scale[i], out=errors[i])
        if update:
            W1[i:].addr_(U1[i, i:], error, alpha=-1)
    W1.masked_fill_(pruned, 0)
    pruned_t[i1:i2] = pruned
    return errors


def _quantize_column(Wt, W1, U1, pruned, errors, quantizer: ColumnQuantizer, i1: int, i: int) -> None:
    """The joint step for column i1+i: its kept weights rounded onto the grid, its pruned ones to 0, and the
    difference spread over the later columns. A group's grid is fitted on its first column's arrival, over
    the weights not known to be pruned by then (for N:M, later groups of M count as kept: their largest
    weights, which set the range, are the ones that stay)."""
    column = i1 + i
    if column % quantizer.group_size == 0:
        known = torch.zeros_like(Wt[column:column + quantizer.group_size], dtype=torch.bool)
        inside = min(len(known), len(pruned) - i)
        known[:inside] = pruned[i:i + inside]
        quantizer.fit_group(Wt, column, known)
    q = quantizer.column(W1[i], column, pruned[i])
    torch.sub(W1[i], q, out=errors[i]).div_(U1[i, i])
    W1[i:].addr_(U1[i, i:], errors[i], alpha=-1)
    W1[i] = q

