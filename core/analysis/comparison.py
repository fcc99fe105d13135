"""Two runs side by side: each run's masks kept as bits, their agreement on every layer, and where they
differ on one layer as a heatmap."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.loaded import LoadedModel
from . import summaries
from .views import current_weight


@dataclass(frozen=True)
class PackedMask:
    """A boolean mask [rows, cols] (True = pruned) stored as bits."""

    shape: tuple[int, int]
    bits: np.ndarray

    @classmethod
    def of(cls, pruned: torch.Tensor) -> "PackedMask":
        return cls(tuple(pruned.shape), np.packbits(pruned.cpu().numpy().reshape(-1)))

    def unpack(self) -> np.ndarray:
        count = self.shape[0] * self.shape[1]
        return np.unpackbits(self.bits, count=count).reshape(self.shape).astype(bool)


@dataclass(frozen=True)
class Comparison:
    """Two runs' masks: per-layer agreement and, for one layer, where they differ."""

    run_a: int
    run_b: int
    agreement: dict                   # layer name -> fraction of weights with the same kept/pruned decision
    layer: str | None
    difference: np.ndarray | None     # fraction of differing decisions per heatmap cell
    cell: tuple[int, int] | None


def pack_masks(loaded: LoadedModel, names) -> dict:
    return {name: PackedMask.of(current_weight(loaded, name) == 0) for name in names}


def compare(a, b, layer: str | None = None) -> Comparison:
    """Agreement of two runs' masks (`a.masks`, `b.masks`: layer -> PackedMask) on every layer both
    pruned; the difference heatmap of `layer`."""
    agreement = {}
    for name in a.masks.keys() & b.masks.keys():
        ma, mb = a.masks[name], b.masks[name]
        differing = int(np.bitwise_count(np.bitwise_xor(ma.bits, mb.bits)).sum())
        agreement[name] = 1.0 - differing / (ma.shape[0] * ma.shape[1])
    difference, cell = None, None
    if layer in agreement:
        diff = torch.from_numpy(a.masks[layer].unpack() ^ b.masks[layer].unpack())
        difference, cell = summaries.kept_heatmap(~diff)   # kept_heatmap counts False cells: here, differing
    return Comparison(a.number, b.number, dict(sorted(agreement.items(), key=lambda kv: _layer_order(kv[0]))),
                      layer, difference, cell)


def _layer_order(name: str):
    return [int(part) if part.isdigit() else part for part in name.split(".")]
