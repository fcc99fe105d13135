"""No pruning: every weight kept, for runs that only quantize."""

from __future__ import annotations

import torch

from .base import MethodResult


def prune(weight: torch.Tensor, stats, sparsity: float, pattern, options=None) -> MethodResult:
    return MethodResult(weight.clone(), torch.zeros_like(weight, dtype=torch.bool), None)
