"""What the studio remembers between runs, and the reductions it shows, Qt-free.

The studio prunes one model in memory again and again. This module keeps the dense weights so
each run starts from the same model, each run's masks in packed form (one bit per weight) so two
runs can be compared, and computes the small views the window draws: a layer's histograms and
kept-fraction heatmap before any run, a full-resolution tile of a zoomed region, and the
difference of two runs' masks. Every function here runs on the studio's worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import summaries
from .architectures import set_weight_matrix, weight_matrix
from .models import LoadedModel

TILE_CELLS = 256   # a zoomed region at most this many weights on a side is shown weight by weight


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


@dataclass
class RunRecord:
    """One pruning run as the history table shows it."""

    number: int
    method: str
    pattern: str
    target_sparsity: float
    sparsity: float
    seconds: float
    result: object                                   # core.pipeline.PruneResult
    layer_summaries: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)        # full layer name -> PackedMask
    ppl_dense: float | None = None
    ppl: float | None = None


@dataclass(frozen=True)
class LayerView:
    """Everything the histogram and heatmap views draw for one layer."""

    name: str
    shape: tuple[int, int]
    summary: summaries.LayerSummary
    pruned: bool                 # True when the summary comes from a run (before/after overlay)
    score_label: str
    row_stride: int = 1          # > 1: a preview read every row_stride-th row of a big layer


@dataclass(frozen=True)
class Tile:
    """A full-resolution region [row0:row0+rows, col0:col0+cols] of a layer."""

    row0: int
    col0: int
    before: np.ndarray      # dense weights
    after: np.ndarray       # current weights
    scores: np.ndarray | None
    kept: np.ndarray        # float32, 1 = kept


@dataclass(frozen=True)
class Comparison:
    """Two runs' masks: per-layer agreement and, for one layer, where they differ."""

    run_a: int
    run_b: int
    agreement: dict                   # layer name -> fraction of weights with the same kept/pruned decision
    layer: str | None
    difference: np.ndarray | None     # fraction of differing decisions per heatmap cell
    cell: tuple[int, int] | None


class WeightSnapshot:
    """A CPU copy of every prunable weight: taken before the first run so each run starts dense,
    and around a dense evaluation so the pruned weights come back afterwards."""

    def __init__(self, loaded: LoadedModel):
        self.weights = {info.full_name: weight_matrix(loaded.model.get_submodule(info.full_name)).detach().to("cpu", copy=True)
                        for block in loaded.layout.inventory for info in block.linears}

    def restore(self, loaded: LoadedModel) -> None:
        with torch.no_grad():
            for name, weight in self.weights.items():
                layer = loaded.model.get_submodule(name)
                set_weight_matrix(layer, weight.to(layer.weight.device, layer.weight.dtype))


def current_weight(loaded: LoadedModel, name: str) -> torch.Tensor:
    return weight_matrix(loaded.model.get_submodule(name)).detach()


def pack_masks(loaded: LoadedModel, names) -> dict:
    return {name: PackedMask.of(current_weight(loaded, name) == 0) for name in names}


def dense_view(name: str, weight: torch.Tensor, sparsity: float) -> LayerView:
    """A layer no run has touched: its weights, |W| as the score a magnitude run would use, and the
    threshold that would prune `sparsity` of it (read off the histogram)."""
    summary, stride = summaries.preview(weight, sparsity)
    label = "log10 |W|  (magnitude preview" + (f", every {stride}th row)" if stride > 1 else ")")
    return LayerView(name, tuple(weight.shape), summary, False, label, stride)


def run_view(name: str, shape, summary, method: str) -> LayerView:
    labels = {"magnitude": "log10 |W|", "wanda": "log10 |W|·‖X‖", "sparsegpt": "log10 w²/[H⁻¹]²"}
    return LayerView(name, tuple(shape), summary, True, labels.get(method, "log10 score"))


def tile(dense: torch.Tensor, current: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int],
         score_factors: tuple[int, np.ndarray] | None = None) -> Tile:
    """The weights of a region, clipped to the layer and to TILE_CELLS on a side."""
    r0, r1 = _clip(rows, dense.shape[0])
    c0, c1 = _clip(cols, dense.shape[1])
    before = dense[r0:r1, c0:c1].float().numpy()
    after = current[r0:r1, c0:c1].float().cpu().numpy()
    scores = None
    if score_factors is not None:
        power, factors = score_factors
        scores = np.abs(before) ** power * factors[c0:c1].reshape(1, -1)
    return Tile(r0, c0, before, after, scores, (after != 0).astype(np.float32))


def _clip(span: tuple[int, int], size: int) -> tuple[int, int]:
    start = max(0, min(int(span[0]), size - 1))
    stop = max(start + 1, min(int(span[1]), size, start + TILE_CELLS))
    return start, stop


def compare(a: RunRecord, b: RunRecord, layer: str | None = None) -> Comparison:
    """Agreement of two runs' masks on every layer both pruned; the difference heatmap of `layer`."""
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


def eta_seconds(started: float, done: int, total: int, now: float | None = None) -> float | None:
    """Remaining time assuming the remaining blocks take as long as the finished ones did on average."""
    if done <= 0 or total <= 0:
        return None
    elapsed = (now if now is not None else time.perf_counter()) - started
    return elapsed / done * (total - done)
