"""What every pruning method returns, and how the engine lists the methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ...quantization.quantized import QuantizedLayer


@dataclass
class MethodResult:
    weight: torch.Tensor            # [out, in] float32, pruned (and for SparseGPT, updated)
    mask: torch.Tensor              # [out, in] bool, True = pruned
    score: torch.Tensor | None      # what the weights were ranked by, for display
    notes: dict = field(default_factory=dict)
    quantized: QuantizedLayer | None = None   # the joint SparseGPT pass: the grid its kept weights were rounded to


@dataclass(frozen=True)
class Method:
    name: str
    prune: Callable[..., MethodResult]
    needs: frozenset
    summary: str
