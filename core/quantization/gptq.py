"""GPTQ (Frantar et al., 2022): columns quantized one at a time, each one's rounding error spread over the
columns not yet quantized through U, the upper Cholesky factor of H⁻¹ (H = 2XᵀX/n, dampened), in blocks of
columns with a lazy batch update: SparseGPT's sweep with rounding in place of pruning.

A pruned weight is quantized to exactly 0 (its code is the zero point), so the sweep keeps any mask and
spreads the pruned weight's own change over the kept ones, as SparseGPT would. Group scales are fitted
when the sweep reaches a group's first column, on the weights as updated so far; with activation order
they are fitted on the weights before the sweep instead (static groups), so groups stay contiguous
inputs and the saved format needs no column permutation.
"""

from __future__ import annotations

import torch

from .grid import Grid
from .quantized import QuantizedLayer
from .rtn import fit_groups, layer_record


class ColumnQuantizer:
    """Rounds the columns of a transposed weight Wᵀ [in, out] one at a time onto their groups' grids."""

    def __init__(self, grid: Grid, group_size: int, rows: int, cols: int, device, dtype=torch.float32):
        self.grid, self.group_size = grid, group_size
        groups = -(-cols // group_size)
        self.scale = torch.ones(rows, groups, device=device, dtype=dtype)
        self.zero = torch.zeros(rows, groups, device=device, dtype=dtype)
        self.static = False

    def fit_all(self, weight: torch.Tensor, pruned: torch.Tensor | None) -> None:
        """Every group's grid from `weight` [out, in] as it is now (activation order: static groups)."""
        self.scale, self.zero = fit_groups(weight, self.grid, self.group_size, None if pruned is None else ~pruned)
        self.static = True

    def fit_group(self, Wt: torch.Tensor, column: int, pruned_rows: torch.Tensor | None) -> None:
        """The grid of the group starting at `column`, from the current rows of Wᵀ (unless fitted statically);
        `pruned_rows` [group, out]: the group's weights that will be zero, left out of the fit."""
        if self.static:
            return
        group = column // self.group_size
        span = Wt[column:column + self.group_size].t()
        keep = None if pruned_rows is None else ~pruned_rows.t()
        scale, zero = self.grid.fit(span, keep)
        self.scale[:, group], self.zero[:, group] = scale[:, 0], zero[:, 0]

    def column(self, w: torch.Tensor, column: int, pruned: torch.Tensor | None) -> torch.Tensor:
        """Column `column` (a row of Wᵀ) rounded onto its group's grid; pruned entries exactly 0."""
        group = column // self.group_size
        q = self.grid.quantize(w, self.scale[:, group], self.zero[:, group])
        return q.masked_fill_(pruned, 0) if pruned is not None else q

    def record(self, **notes) -> QuantizedLayer:
        return layer_record(self.grid, self.group_size, self.scale, self.zero, **notes)


def gptq(weight: torch.Tensor, U: torch.Tensor, dead: torch.Tensor, grid: Grid, group_size: int, *,
         pruned: torch.Tensor | None = None, order: torch.Tensor | None = None,
         blocksize: int = 128) -> tuple[torch.Tensor, QuantizedLayer]:
    """Quantize `weight` [out, in]; returns the dequantized weight (float32, float64 for float64) and its record.

    `U`: the upper Cholesky factor of the dampened H⁻¹, of H with rows and columns in `order` when given
    (activation order); `dead`: inputs that never saw a non-zero value (their weights are zeroed, as
    SparseGPT does); `pruned`: weights that must stay exactly zero.
    """
    rows, cols = weight.shape
    W = weight.to(torch.promote_types(weight.dtype, torch.float32)).clone()
    quantizer = ColumnQuantizer(grid, group_size, rows, cols, weight.device, W.dtype)
    W[:, dead] = 0
    if order is not None:
        quantizer.fit_all(W, pruned)
    Wt = (W[:, order] if order is not None else W).t().contiguous()
    pruned_t = None if pruned is None else (pruned[:, order] if order is not None else pruned).t().contiguous()
    columns = order.tolist() if order is not None else range(cols)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        errors = _quantize_block(Wt, U, pruned_t, quantizer, columns, i1, i2)
        if i2 < cols:
            Wt[i2:] -= U[i1:i2, i2:].t() @ errors
    result = Wt.t()
    if order is not None:
        result = result[:, torch.argsort(order)]
    return result.contiguous(), quantizer.record(method="gptq", act_order=order is not None)


def _quantize_block(Wt, U, pruned_t, quantizer: ColumnQuantizer, columns, i1: int, i2: int) -> torch.Tensor:
    """Quantize rows i1:i2 of Wt in place (OBS update inside the block); return the scaled errors [i2−i1, out]."""
    W1, U1 = Wt[i1:i2], U[i1:i2, i1:i2]
    errors = torch.empty_like(W1)
    for i in range(i2 - i1):
        column = columns[i1 + i]
        if not quantizer.static and column % quantizer.group_size == 0:
            rows = None if pruned_t is None else pruned_t[column:column + quantizer.group_size]
            quantizer.fit_group(Wt, column, rows)
        mask = pruned_t[i1 + i] if pruned_t is not None else None
        q = quantizer.column(W1[i], column, mask)
        torch.sub(W1[i], q, out=errors[i]).div_(U1[i, i])
        W1[i:].addr_(U1[i, i:], errors[i], alpha=-1)
        W1[i] = q
    return errors
