"""Sparsity patterns: what "unstructured" and N:M mean, and whether a weight follows one.

N:M follows the hardware convention: at most N weights kept in every M consecutive weights along
the input dimension (2:4 keeps 2 of 4), so an N:M pattern has sparsity 1 - N/M. Choosing which
weights to drop is the pruning wing's business (`core.pruning.masks`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import UserError


@dataclass(frozen=True)
class Pattern:
    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float | None:
        return 1 - self.n / self.m if self.structured else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else "unstructured"

    def fits(self, in_features: int) -> bool:
        return not self.structured or in_features % self.m == 0


UNSTRUCTURED = Pattern()
TWO_FOUR = Pattern(2, 4)
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(text: str) -> Pattern:
    if text in ("unstructured", "", None):
        return UNSTRUCTURED
    match = _NM.match(str(text))
    if not match:
        raise UserError(f"unknown pattern {text!r}: use 'unstructured' or N:M such as 2:4 or 4:8.")
    if max(len(g.lstrip("0")) for g in match.groups()) > 9:   # int() refuses 4300 digits; no group is this large
        raise UserError("N and M of a pattern count the weights of one group: use small numbers such as 2:4 or 4:8.")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise UserError(f"pattern {text}: N:M keeps N of every M weights and needs 0 < N < M (got N={n}, M={m}).")
    return Pattern(n, m)


def is_two_four(pattern: Pattern | str) -> bool:
    return str(pattern).replace(" ", "") == str(TWO_FOUR)


def follows_pattern(weight: torch.Tensor, pattern: Pattern) -> bool:
    """True when every group of M along the input dimension holds at most N non-zeros."""
    if not pattern.structured:
        return True
    rows, cols = weight.shape
    if cols % pattern.m:
        return False
    kept = (weight.reshape(rows, cols // pattern.m, pattern.m) != 0).sum(dim=2)
    return bool((kept <= pattern.n).all())


def sparsity_of(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()
