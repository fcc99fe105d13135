"""Pruning methods: each a pure function of a weight [out, in], its statistics and a pattern.

`prune(weight, stats, sparsity, pattern, options) -> MethodResult`, where the returned weight is a new
float32 tensor with the pruned entries set to zero. `METHODS` maps the user-facing names to them.
"""

from __future__ import annotations

from ..stats import COLUMN_NORMS, HESSIAN
from . import alps, magnitude, none, sparsegpt, wanda
from .base import Method, MethodResult

__all__ = ["METHODS", "Method", "MethodResult"]


METHODS = {
    "magnitude": Method("magnitude", magnitude.prune, frozenset(), "|W|, per layer (or per N:M group, or summed over whole rows, columns or blocks)"),
    "wanda": Method("wanda", wanda.prune, frozenset({COLUMN_NORMS}), "|W|·‖X_j‖₂, per output row (or per N:M group, or summed over whole units)"),
    "sparsegpt": Method("sparsegpt", sparsegpt.prune, frozenset({HESSIAN}), "OBS with H = 2XᵀX, blocks of 128 columns"),
    "none": Method("none", none.prune, frozenset(), "no pruning: every weight kept (quantize only)"),
    "alps": Method("alps", alps.prune, frozenset({HESSIAN}), "ADMM on ‖XŴ − XW‖² with an ℓ0 or N:M constraint, then a PCG refit"),
}
