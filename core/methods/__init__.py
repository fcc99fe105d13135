"""Pruning methods: each a pure function of a weight [out, in], its statistics and a pattern.

`prune(weight, stats, sparsity, pattern, options) -> MethodResult`, where the returned weight is a new
float32 tensor with the pruned entries set to zero. `METHODS` maps the user-facing names to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..stats import COLUMN_NORMS, HESSIAN
from . import magnitude, sparsegpt, wanda


@dataclass
class MethodResult:
    weight: torch.Tensor            # [out, in] float32, pruned (and for SparseGPT, updated)
    mask: torch.Tensor              # [out, in] bool, True = pruned
    score: torch.Tensor | None      # what the weights were ranked by, for display
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    prune: Callable[..., MethodResult]
    needs: frozenset
    summary: str


METHODS = {
    "magnitude": Method("magnitude", magnitude.prune, frozenset(), "|W|, per layer (or per N:M group)"),
    "wanda": Method("wanda", wanda.prune, frozenset({COLUMN_NORMS}), "|W|·‖X_j‖₂, per output row (or per N:M group)"),
    "sparsegpt": Method("sparsegpt", sparsegpt.prune, frozenset({HESSIAN}), "OBS with H = 2XᵀX, blocks of 128 columns"),
}
