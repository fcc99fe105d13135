"""Sparsity patterns: what "unstructured", N:M, rows, columns and blocks mean, and whether a weight follows one.

N:M follows the hardware convention: at most N weights kept in every M consecutive weights along
the input dimension (2:4 keeps 2 of 4), so an N:M pattern has sparsity 1 - N/M. Rows, columns and
blocks prune whole units of a weight [out, in] (output rows, input columns, or tiles of height × width
cut from the top left, the last ones partial where the layer's dimensions are not multiples), at the
run's sparsity; their pruned weights are stored as zeros, like every other pattern's. Choosing which
weights to drop is the pruning wing's business (`core.pruning.masks`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import UserError

UNIT_KINDS = ("rows", "columns", "blocks")


@dataclass(frozen=True)
class Pattern:
    n: int = 0
    m: int = 0
    kind: str = ""       # "unstructured", "nm", "rows", "columns" or "blocks"; left out: from n and m
    height: int = 0      # a block's rows and columns (blocks only)
    width: int = 0

    def __post_init__(self):
        if not self.kind:
            object.__setattr__(self, "kind", "nm" if self.m > 0 else "unstructured")

    @property
    def structured(self) -> bool:
        """N:M: a count of weights per group of M (rows, columns and blocks are `whole_units`)."""
        return self.m > 0

    @property
    def whole_units(self) -> bool:
        return self.kind in UNIT_KINDS

    @property
    def sparsity(self) -> float | None:
        """The sparsity the pattern itself sets (N:M only); None where the run chooses it."""
        return 1 - self.n / self.m if self.structured else None

    def __str__(self) -> str:
        if self.kind == "blocks":
            return f"blocks:{self.height}x{self.width}"
        return f"{self.n}:{self.m}" if self.structured else self.kind

    def fits(self, in_features: int) -> bool:
        """Whether a layer this wide can follow the pattern (partial edge blocks fit any layer)."""
        return not self.structured or in_features % self.m == 0

    def unit(self, rows: int, cols: int) -> tuple[int, int]:
        """(height, width) of one unit of a [rows, cols] weight: a row, a column or a block."""
        return {"rows": (1, cols), "columns": (rows, 1)}.get(self.kind, (self.height, self.width))


UNSTRUCTURED = Pattern()
TWO_FOUR = Pattern(2, 4)
ROWS = Pattern(kind="rows")
COLUMNS = Pattern(kind="columns")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCKS = re.compile(r"^\s*blocks\s*:\s*(\d+)\s*x\s*(\d+)\s*$")
_NAMED = {"rows": ROWS, "columns": COLUMNS}


def parse_pattern(text: str) -> Pattern:
    if text in ("unstructured", "", None):
        return UNSTRUCTURED
    if str(text).strip() in _NAMED:
        return _NAMED[str(text).strip()]
    match = _NM.match(str(text)) or _BLOCKS.match(str(text))
    if not match:
        raise UserError(f"unknown pattern {text!r}: use 'unstructured', N:M such as 2:4, 'rows', 'columns' "
                        "or blocks:HxW such as blocks:64x64.")
    if max(len(g.lstrip("0")) for g in match.groups()) > 9:   # int() refuses 4300 digits; no group is this large
        raise UserError("the numbers of a pattern count weights: use small numbers such as 2:4 or blocks:64x64.")
    a, b = int(match.group(1)), int(match.group(2))
    if match.re is _BLOCKS:
        if not (a > 0 and b > 0):
            raise UserError(f"pattern {text}: a block needs at least one row and one column, e.g. blocks:64x64.")
        return Pattern(kind="blocks", height=a, width=b)
    if not 0 < a < b:
        raise UserError(f"pattern {text}: N:M keeps N of every M weights and needs 0 < N < M (got N={a}, M={b}).")
    return Pattern(a, b)


def is_two_four(pattern: Pattern | str) -> bool:
    return str(pattern).replace(" ", "") == str(TWO_FOUR)


def follows_pattern(weight: torch.Tensor, pattern: Pattern) -> bool:
    """True when every group of M along the input dimension holds at most N non-zeros. Unstructured, rows,
    columns and blocks say which weights were pruned, not which are zero (a kept weight may be zero, an
    input never seen is zeroed by SparseGPT): every weight follows them."""
    if not pattern.structured:
        return True
    rows, cols = weight.shape
    if cols % pattern.m:
        return False
    kept = (weight.reshape(rows, cols // pattern.m, pattern.m) != 0).sum(dim=2)
    return bool((kept <= pattern.n).all())


def sparsity_of(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()
