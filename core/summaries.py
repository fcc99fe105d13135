"""Small, display-ready views of a pruned layer, computed where the tensors live.

Only these reduced arrays travel to the GUI thread: histograms of a few hundred bins and a
kept-fraction heatmap of at most `max_cells` per side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

HISTOGRAM_BINS = 128
HEATMAP_CELLS = 256


@dataclass(frozen=True)
class Histogram:
    edges: np.ndarray      # [bins + 1]
    counts: np.ndarray     # [bins]


@dataclass(frozen=True)
class LayerSummary:
    weights_before: Histogram
    weights_after: Histogram       # same edges as before; pruned zeros excluded
    scores: Histogram | None       # log10 of the method's score, kept and pruned together
    score_threshold: float | None  # log10 of the largest pruned score
    heatmap: np.ndarray            # [rows', cols'] fraction of weights kept per cell, float32
    heatmap_cell: tuple[int, int]  # weights per heatmap cell along (rows, cols)


def histogram(values: torch.Tensor, bins: int = HISTOGRAM_BINS, lo: float | None = None, hi: float | None = None) -> Histogram:
    values = values.detach().float().flatten()
    if values.numel() == 0:
        return Histogram(np.linspace(0, 1, bins + 1), np.zeros(bins, dtype=np.int64))
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    if hi <= lo:
        hi = lo + 1e-12
    counts = torch.histc(values, bins=bins, min=lo, max=hi)
    return Histogram(np.linspace(lo, hi, bins + 1), counts.cpu().numpy().astype(np.int64))


def kept_heatmap(mask: torch.Tensor, max_cells: int = HEATMAP_CELLS) -> tuple[np.ndarray, tuple[int, int]]:
    """Fraction of weights kept in each cell of a grid of at most max_cells × max_cells."""
    rows, cols = mask.shape
    cell = (max(1, -(-rows // max_cells)), max(1, -(-cols // max_cells)))
    kept = (~mask).float().unsqueeze(0).unsqueeze(0)
    pooled = F.avg_pool2d(kept, kernel_size=cell, stride=cell, ceil_mode=True)
    return pooled[0, 0].cpu().numpy().astype(np.float32), cell


def summarize(before: torch.Tensor, outcome) -> LayerSummary:
    lo, hi = float(before.min()), float(before.max())
    after = outcome.weight[outcome.weight != 0]
    scores, threshold = None, None
    if outcome.score is not None:
        logs = outcome.score.float().clamp_min(1e-30).log10()
        scores = histogram(logs)
        pruned = logs[outcome.mask]
        threshold = float(pruned.max()) if pruned.numel() else None
    heatmap, cell = kept_heatmap(outcome.mask)
    return LayerSummary(histogram(before, lo=lo, hi=hi), histogram(after, lo=lo, hi=hi), scores, threshold, heatmap, cell)
