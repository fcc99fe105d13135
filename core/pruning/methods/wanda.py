"""Wanda (Sun et al., 2023): score |W_ij|·‖X_j‖₂ over the calibration tokens, pruned per output row
(or per N:M group along the input dimension; or whole rows, columns or blocks by the sum of their scores
over the layer). No weight update."""

from __future__ import annotations

import torch

from ...patterns import Pattern
from ..masks import nm_mask, per_row_mask, unit_mask
from .base import MethodResult


def scores(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    return weight.abs() * column_norms.reshape(1, -1)


def prune(weight: torch.Tensor, stats, sparsity: float, pattern: Pattern, options=None):
    score = scores(weight, stats.column_norms.to(weight.device, weight.dtype))
    if pattern.whole_units:
        mask = unit_mask(score, pattern, sparsity)
    else:
        mask = nm_mask(score, pattern) if pattern.structured else per_row_mask(score, sparsity)
    return MethodResult(weight.masked_fill(mask, 0), mask, score)
