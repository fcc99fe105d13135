"""The user's quantization choices, validated once, and the group size each layer gets."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

BITS = (4, 8)
METHODS = ("gptq", "rtn")
PER_CHANNEL = 0              # group_size 0: one scale per output row
DEFAULT_GROUPS = (128, 64, 32)


@dataclass(frozen=True)
class QuantScheme:
    bits: int = 4
    symmetric: bool = True
    group_size: int | None = None   # None: 128 where it divides the input, else 64, else 32, else per channel
    act_order: bool = False         # GPTQ: columns by decreasing Hessian diagonal (scales fitted beforehand)
    method: str = "gptq"            # "gptq" or "rtn" (round to nearest)
    dampening: float = 0.01         # GPTQ: fraction of the mean Hessian diagonal, as for SparseGPT
    blocksize: int = 128            # GPTQ: columns per lazy batch update
    joint: bool = False             # inside SparseGPT's own column sweep (prune and quantize in one pass)

    def validate(self) -> None:
        if self.bits not in BITS:
            raise UserError(f"{self.bits}-bit quantization is not available: choose int4 or int8.")
        if self.method not in METHODS:
            raise UserError(f"unknown quantization method {self.method!r}: choose gptq or rtn.")
        if self.group_size is not None and (self.group_size < 0 or (self.group_size and self.group_size % 8)):
            raise UserError(f"group size {self.group_size} must be a positive multiple of 8 "
                            "(or 0 for one scale per output channel).")
        if not 0 < self.dampening <= 1:
            raise UserError(f"quantization dampening {self.dampening:g} must be in (0, 1].")
        if self.blocksize < 1:
            raise UserError("the GPTQ block size must be positive.")
        if self.joint and self.act_order:
            raise UserError("the joint SparseGPT pass visits columns in their own order: drop --act-order.")
        if self.method == "rtn" and (self.act_order or self.joint):
            raise UserError("round-to-nearest has no column order and no joint pass: use --quant-method gptq.")

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    def group_for(self, in_features: int) -> int | None:
        """The group size for a layer with `in_features` inputs (`in_features` itself for one group per row),
        or None when an explicit group size does not divide it (the layer is then skipped)."""
        if self.group_size == PER_CHANNEL:
            return in_features
        if self.group_size is not None:
            return self.group_size if in_features % self.group_size == 0 else None
        return next((g for g in DEFAULT_GROUPS if in_features % g == 0), in_features)

    def describe(self) -> dict:
        return {"bits": self.bits, "symmetric": self.symmetric, "group_size": self.group_size,
                "act_order": self.act_order, "method": self.method, "dampening": self.dampening,
                "blocksize": self.blocksize, "joint": self.joint}
