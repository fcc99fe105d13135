"""Choosing which weights to drop from a score.

Masks are boolean tensors shaped like the weight [out, in] where True means *pruned*; what a pattern
is lives in `core.patterns`.
"""

from __future__ import annotations

import torch

from ..patterns import Pattern


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True at the k lowest scores of every row (last dimension): exactly k per row, ties taken left to right
    (a NaN counts as the highest score).

    A k-th value threshold and a comparison: on the CPU several times faster than `topk` with a large k.
    """
    n = scores.shape[-1]
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if scores.is_floating_point() and bool(scores.isnan().any()):   # NaN ranks highest, as in `topk`
        scores = scores.nan_to_num(nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))
    threshold = scores.kthvalue(k, dim=-1, keepdim=True).values
    mask = scores <= threshold
    excess = mask.sum(-1, keepdim=True) - k
    if bool((excess > 0).any()):      # ties at the threshold: keep only the first ones needed
        ties = scores == threshold
        mask = (scores < threshold) | (ties & (ties.cumsum(-1) <= ties.sum(-1, keepdim=True) - excess))
    return mask


def per_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the int(in * sparsity) lowest-scoring weights of every output row."""
    return lowest_k(scores, int(scores.shape[1] * sparsity))


def per_layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the int(numel * sparsity) lowest-scoring weights of the whole layer."""
    return lowest_k(scores.flatten(), int(scores.numel() * sparsity)).view_as(scores)


def nm_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """In every group of M consecutive input columns, prune the M - N lowest-scoring weights."""
    rows, cols = scores.shape
    if cols % pattern.m:
        raise ValueError(f"input dimension {cols} is not a multiple of {pattern.m}")
    groups = scores.reshape(rows, cols // pattern.m, pattern.m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, pattern.m - pattern.n, dim=2, largest=False).indices, True)
    return mask.reshape(rows, cols)
