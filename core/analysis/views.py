"""The small views the studio draws of one layer, computed where the tensors live: its histograms and
kept-fraction heatmap (from a run's summary, or a preview before any run), and a full-resolution tile
of a zoomed region. Every function here runs on a worker thread; only its small result crosses over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.architectures import weight_matrix
from ..models.loaded import LoadedModel
from . import summaries

TILE_CELLS = 256   # a zoomed region at most this many weights on a side is shown weight by weight
SCORE_LABELS = {"magnitude": "log10 |W|", "wanda": "log10 |W|·‖X‖", "sparsegpt": "log10 w²/[H⁻¹]²", "alps": "log10 |W|·√Hⱼⱼ"}


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


def current_weight(loaded: LoadedModel, name: str) -> torch.Tensor:
    return weight_matrix(loaded.model.get_submodule(name)).detach()


def dense_view(name: str, weight: torch.Tensor, sparsity: float) -> LayerView:
    """A layer no run has touched: its weights, |W| as the score a magnitude run would use, and the
    threshold that would prune `sparsity` of it (read off the histogram)."""
    summary, stride = summaries.preview(weight, sparsity)
    label = "log10 |W|  (magnitude preview" + (f", every {stride}th row)" if stride > 1 else ")")
    return LayerView(name, tuple(weight.shape), summary, False, label, stride)


def run_view(name: str, shape, summary, method: str) -> LayerView:
    return LayerView(name, tuple(shape), summary, True, SCORE_LABELS.get(method, "log10 score"))


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
