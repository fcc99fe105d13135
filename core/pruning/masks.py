"""Choosing which weights to drop from a score.

Masks are boolean tensors shaped like the weight [out, in] where True means *pruned*; what a pattern
is lives in `core.patterns`.

Rows, columns and blocks (`block_mask`): every unit is ranked by the mean of its weights' scores (for
rows, columns and full blocks the same order as the sum; the mean lets a partial edge block, cut where
the layer's dimensions are not multiples of the block, rank like a full one). The lowest-ranked units
are pruned, as many as fit in int(numel × sparsity) weights: the longest run of them, in rank order,
whose sizes add up to no more (for rows, int(out·in·s) // in rows). Ties go to the unit first in
row-major order (top to bottom, then left to right); a NaN mean ranks highest. A layer smaller than
one unit's share of the budget keeps everything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def block_mask(scores: torch.Tensor, height: int, width: int, sparsity: float) -> torch.Tensor:
    """Prune whole height × width tiles of a [out, in] score (see the module's docstring for the count and ties)."""
    rows, cols = scores.shape
    grid = (-(-rows // height), -(-cols // width))
    pad = (0, grid[1] * width - cols, 0, grid[0] * height - rows)
    sums = F.pad(scores.float(), pad).reshape(grid[0], height, grid[1], width).sum((1, 3))
    sizes = F.pad(torch.ones_like(scores, dtype=torch.float32), pad).reshape(grid[0], height, grid[1], width).sum((1, 3))
    means = (sums / sizes).flatten().nan_to_num(nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))
    order = torch.sort(means, stable=True).indices        # stable: ties in row-major order
    count = int((sizes.flatten()[order].cumsum(0) <= int(scores.numel() * sparsity)).sum())
    pruned = torch.zeros(grid[0] * grid[1], dtype=torch.bool, device=scores.device)
    pruned[order[:count]] = True
    tiles = pruned.view(grid).repeat_interleave(height, 0).repeat_interleave(width, 1)
    return tiles[:rows, :cols].contiguous()


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune whole output rows: int(out·in·s) // in of them, the lowest summed scores."""
    return block_mask(scores, 1, scores.shape[1], sparsity)


def column_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune whole input columns: int(out·in·s) // out of them, the lowest summed scores."""
    return block_mask(scores, scores.shape[0], 1, sparsity)


def unit_mask(scores: torch.Tensor, pattern: Pattern, sparsity: float) -> torch.Tensor:
    """The mask of a rows, columns or blocks pattern."""
    return block_mask(scores, *pattern.unit(*scores.shape), sparsity)
