"""Magnitude pruning, the baseline: drop the smallest |W| of the whole layer (or of each N:M group; or the
rows, columns or blocks of least summed |W|)."""

from __future__ import annotations

import torch

from ...patterns import Pattern
from ..masks import nm_mask, per_layer_mask, unit_mask
from .base import MethodResult


def prune(weight: torch.Tensor, stats, sparsity: float, pattern: Pattern, options=None):
    score = weight.abs()
    if pattern.whole_units:
        mask = unit_mask(score, pattern, sparsity)
    else:
        mask = nm_mask(score, pattern) if pattern.structured else per_layer_mask(score, sparsity)
    return MethodResult(weight.masked_fill(mask, 0), mask, score)
