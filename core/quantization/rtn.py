"""Round-to-nearest: every weight onto its group's grid, with no error compensation (the baseline GPTQ beats)."""

from __future__ import annotations

import torch

from .grid import Grid
from .quantized import QuantizedLayer


def fit_groups(weight: torch.Tensor, grid: Grid, group_size: int, keep: torch.Tensor | None = None):
    """Scale and zero point [out, groups] of every group of `group_size` inputs of `weight` [out, in]."""
    rows, cols = weight.shape
    groups = cols // group_size
    w = weight.to(torch.promote_types(weight.dtype, torch.float32)).reshape(rows * groups, group_size)
    k = keep.reshape(rows * groups, group_size) if keep is not None else None
    scale, zero = grid.fit(w, k)
    return scale.reshape(rows, groups), zero.reshape(rows, groups)


def layer_record(grid: Grid, group_size: int, scale: torch.Tensor, zero: torch.Tensor, **notes) -> QuantizedLayer:
    """The record of a layer quantized with these float32 scales and zero points."""
    return QuantizedLayer(grid.bits, grid.symmetric, group_size, scale.to("cpu", grid.scale_dtype),
                          None if grid.symmetric else zero.to("cpu", torch.int8), dict(notes))


def round_to_nearest(weight: torch.Tensor, grid: Grid, group_size: int,
                     pruned: torch.Tensor | None = None) -> tuple[torch.Tensor, QuantizedLayer]:
    """`weight` [out, in] rounded onto its groups' grids (float32); `pruned` entries are exactly zero."""
    keep = None if pruned is None else ~pruned
    scale, zero = fit_groups(weight, grid, group_size, keep)
    expand = lambda t: t.repeat_interleave(group_size, dim=1)
    quantized = grid.quantize(weight.float(), expand(scale), expand(zero))
    if pruned is not None:
        quantized.masked_fill_(pruned, 0)
    return quantized, layer_record(grid, group_size, scale, zero, method="rtn")
