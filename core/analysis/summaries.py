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
    score_factors: tuple[int, np.ndarray] | None = None  # score = |W|**power * factor[column], when it has that form
    codes: Histogram | None = None  # a quantized layer's integer codes of its kept weights, one bin per level


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
        # zero scores (exact-zero weights, dead input columns) have no logarithm: left out of the histogram
        score = outcome.score.float()
        positive = score > 0
        scores = histogram(score[positive].log10())
        pruned = score[outcome.mask & positive]
        threshold = float(pruned.max().log10()) if pruned.numel() else None
    heatmap, cell = kept_heatmap(outcome.mask)
    factors = score_factors(before, outcome.score) if outcome.score is not None else None
    return LayerSummary(histogram(before, lo=lo, hi=hi), histogram(after, lo=lo, hi=hi), scores, threshold, heatmap, cell,
                        factors, code_histogram(outcome))


def code_histogram(outcome) -> Histogram | None:
    """One bin per level of a quantized layer's grid, over the weights the pruning kept (a pruned zero is no level)."""
    record = getattr(outcome, "quantized", None)
    if record is None:
        return None
    kept = ~outcome.mask.bool().cpu()     # kept weights that rounded to the zero level count there
    codes = record.codes(outcome.weight)[kept]
    grid = record.grid
    return histogram(codes.float(), bins=grid.qmax - grid.qmin + 1, lo=grid.qmin - 0.5, hi=grid.qmax + 0.5)


def score_factors(weight: torch.Tensor, score: torch.Tensor) -> tuple[int, np.ndarray] | None:
    """Write a score as |W|**power times one factor per input column, if it is of that form.

    Magnitude (|W|, factor 1), Wanda (|W|·‖X_j‖) and SparseGPT (W²/[H⁻¹]_jj²) all are, so a few
    hundred floats let the studio show the score of any single weight without keeping the score matrix.
    """
    weight, score = weight.float(), score.float()
    rows = slice(0, 64)          # the form is checked on the first rows: a full comparison costs a pass per power
    tolerance = 1e-12 * float(score[rows].abs().max())
    for power in (1, 2):
        factors = score.amax(0) / weight.abs().amax(0).pow(power).clamp_min(1e-30)
        if torch.allclose(weight[rows].abs().pow(power) * factors, score[rows], rtol=1e-4, atol=tolerance):
            return power, factors.cpu().numpy().astype(np.float32)
    return None


PREVIEW_SAMPLE = 1 << 21   # weights read for the preview of a layer nobody has pruned yet


def preview(weight: torch.Tensor, sparsity: float, bins: int = HISTOGRAM_BINS,
            max_weights: int = PREVIEW_SAMPLE) -> tuple[LayerSummary, int]:
    """The views of a layer no run has pruned: its weights, log10 |W| (the magnitude score) with the
    threshold that would prune `sparsity` of them, and its kept-fraction heatmap (zeros count as pruned).

    Layers above `max_weights` are read every `stride`-th row (returned), with the counts scaled by
    the stride: a 4096 × 14336 layer is then shown in tens of milliseconds instead of seconds. Runs
    summarize every weight (`summarize`).
    """
    stride = max(1, -(-weight.numel() // max_weights))
    sample = weight.detach()[::stride].float()
    weights = _scaled(histogram(sample, bins), stride)
    logs = sample.abs().log10_()                 # zeros become -inf, which histc leaves out
    finite = torch.where(torch.isinf(logs), logs.new_tensor(float("inf")), logs)
    lo, hi = float(finite.min()), float(logs.max())
    scores = _scaled(histogram(logs, bins, lo=lo, hi=hi), stride) if lo != float("inf") else None
    threshold = quantile_from_histogram(scores, sparsity) if sparsity > 0 and scores is not None else None
    heatmap, cell = kept_heatmap(sample == 0, max_cells=HEATMAP_CELLS)
    cell = (cell[0] * stride, cell[1])
    return (LayerSummary(weights, weights, scores, threshold, heatmap, cell, (1, np.ones(weight.shape[1], np.float32))),
            stride)


def _scaled(hist: Histogram, factor: int) -> Histogram:
    return hist if factor == 1 else Histogram(hist.edges, hist.counts * factor)


def quantile_from_histogram(hist: Histogram, q: float) -> float:
    """The value below which a fraction `q` of the histogram's counts lie (linear within a bin)."""
    cumulative = np.concatenate([[0], np.cumsum(hist.counts)]).astype(np.float64)
    target = q * cumulative[-1]
    return float(np.interp(target, cumulative, hist.edges))
