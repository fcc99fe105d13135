"""Sparsity patterns and the choice of which weights to drop from a score.

Masks are boolean tensors shaped like the weight [out, in] where True means *pruned*.
N:M follows the hardware convention: at most N weights kept in every M consecutive weights
along the input dimension (2:4 keeps 2 of 4), so an N:M pattern has sparsity 1 - N/M.
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
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(text: str) -> Pattern:
    if text in ("unstructured", "", None):
        return UNSTRUCTURED
    match = _NM.match(str(text))
    if not match:
        raise UserError(f"unknown pattern {text!r}: use 'unstructured' or N:M such as 2:4 or 4:8.")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise UserError(f"pattern {text}: N:M keeps N of every M weights and needs 0 < N < M (got N={n}, M={m}).")
    return Pattern(n, m)


def per_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the int(in * sparsity) lowest-scoring weights of every output row."""
    k = int(scores.shape[1] * sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, True)
    return mask


def per_layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the int(numel * sparsity) lowest-scoring weights of the whole layer."""
    k = int(scores.numel() * sparsity)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.topk(scores.flatten(), k, largest=False).indices] = True
    return mask.view_as(scores)


def nm_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """In every group of M consecutive input columns, prune the M - N lowest-scoring weights."""
    rows, cols = scores.shape
    if cols % pattern.m:
        raise ValueError(f"input dimension {cols} is not a multiple of {pattern.m}")
    groups = scores.reshape(rows, cols // pattern.m, pattern.m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, pattern.m - pattern.n, dim=2, largest=False).indices, True)
    return mask.reshape(rows, cols)


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
