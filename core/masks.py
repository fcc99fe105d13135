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


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True at the k lowest scores of every row (last dimension): exactly k per row, ties taken left to right.

    A k-th value threshold and a comparison: on the CPU several times faster than `topk` with a large k.
    """
    n = scores.shape[-1]
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = scores.kthvalue(k, dim=-1, keepdim=True).values
    mask = scores <= threshold
    excess = mask.sum(-1, keepdim=True) - k
    if bool((excess > 0).any()):      # ties at the threshold: keep only the first ones needed
        ties = scores == threshold
        mask = (scores < threshold) | (ties & (ties.cumsum(-1) <= ties.sum(-1, keepdim=True) - excess))
    return mask


def per_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the int(in * sparsity) lowest-scoring weights of every output row."""
    return lowest_k(scores, int(scores.shape[1] * sparsity))


def per_layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the int(numel * sparsity) lowest-scoring weights of the whole layer."""
    return lowest_k(scores.flatten(), int(scores.numel() * sparsity)).view_as(scores)


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
