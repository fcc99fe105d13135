"""Integer grids: scales and zero points fitted to a group of weights, and the round trip through them.

The grid is signed, as compressed-tensors stores it: int4 codes are -8..7, int8 -128..127. A symmetric
grid has zero point 0 and scale max|w| / ((qmax − qmin) / 2); an asymmetric one spans [min(w, 0), max(w, 0)]
with an integer zero point. Zero is on every grid (code = zero point), so a pruned weight stays exactly 0.
Scales are rounded to the dtype they are stored in before use, so the saved model dequantizes to exactly
the weights the engine evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Grid:
    bits: int
    symmetric: bool
    scale_dtype: torch.dtype = torch.float32

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def fit(self, w: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point [rows, 1] (float32, or float64 for float64 weights) for the rows of `w` [rows, g], over the entries `keep`s."""
        w = w.to(torch.promote_types(w.dtype, torch.float32))    # float64 stays float64 (the tests' references)
        if keep is not None:
            w = torch.where(keep, w, torch.zeros((), dtype=w.dtype, device=w.device))
        lo = w.amin(dim=1, keepdim=True).clamp(max=0)
        hi = w.amax(dim=1, keepdim=True).clamp(min=0)
        span = self.qmax - self.qmin
        if self.symmetric:
            scale = torch.maximum(-lo, hi) / (span / 2)
        else:
            scale = (hi - lo) / span
        scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(self.scale_dtype).to(w.dtype)
        if self.symmetric:
            zero = torch.zeros_like(scale)
        else:
            zero = (self.qmin - torch.round(lo / scale)).clamp(self.qmin, self.qmax)
        return scale, zero

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Integer codes (as float) of `w` on the grid; `scale`/`zero` broadcast against `w`."""
        return torch.clamp(torch.round(w / scale) + zero, self.qmin, self.qmax)

    def quantize(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """`w` rounded onto the grid, dequantized (float32)."""
        return (self.codes(w, scale, zero) - zero) * scale
