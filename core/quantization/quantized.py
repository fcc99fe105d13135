"""What a quantized layer keeps besides its (dequantized) weight: the grid, the group size and the scales.

The model in memory holds dequantized weights, so evaluation and the next block's calibration see exactly
what is saved. An exporter recovers the integer codes from that weight with `codes()`: the weight is
scale × (code − zero) rounded to its dtype, so dividing by the scale and rounding gives the code back
(the rounding error is at most 128 · 2⁻⁹ of a step even for bfloat16).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .grid import Grid


@dataclass
class QuantizedLayer:
    bits: int
    symmetric: bool
    group_size: int                  # inputs per scale; the layer's input dimension for one scale per row
    scale: torch.Tensor              # [out, groups], in the weight's storage dtype, on the CPU
    zero: torch.Tensor | None        # [out, groups] int8 codes of zero (None: symmetric, zero point 0)
    notes: dict = field(default_factory=dict)

    @property
    def grid(self) -> Grid:
        return Grid(self.bits, self.symmetric, self.scale.dtype)

    @property
    def per_channel(self) -> bool:
        return self.scale.shape[1] == 1

    def expanded(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point [out, in] (float32), one per weight."""
        scale = self.scale.float().repeat_interleave(self.group_size, dim=1)[:, :in_features]
        zero = torch.zeros_like(scale) if self.zero is None else \
            self.zero.float().repeat_interleave(self.group_size, dim=1)[:, :in_features]
        return scale, zero

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The int8 codes [out, in] of the dequantized `weight`."""
        scale, zero = self.expanded(weight.shape[1])
        return self.grid.codes(weight.float().cpu(), scale, zero).to(torch.int8)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        scale, zero = self.expanded(codes.shape[1])
        return (codes.float() - zero) * scale

    def describe(self) -> dict:
        return {"bits": self.bits, "symmetric": self.symmetric, "group_size": self.group_size, **self.notes}
