"""core.session and the display reductions in core.summaries, checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.analysis import comparison, summaries, views
from core.events import eta_seconds
from core.pruning.snapshot import WeightSnapshot
from core.pruning.plan import PrunePlan
from core.workbench import RunRecord
from core.patterns import Pattern
from core.pruning.masks import nm_mask, per_row_mask
from core.pruning.methods import wanda


def test_packed_mask_round_trips():
    mask = torch.rand(37, 53) < 0.3
    packed = comparison.PackedMask.of(mask)
    assert packed.bits.nbytes == -(-37 * 53 // 8)
    assert np.array_equal(packed.unpack(), mask.numpy())


def _record(number, masks):
    return RunRecord(number, PrunePlan(), None, {name: comparison.PackedMask.of(m) for name, m in masks.items()})


def test_comparison_agreement_and_difference_heatmap_match_brute_force():
    torch.manual_seed(0)
    a = {"x.1": torch.rand(40, 600) < 0.5, "x.0": torch.rand(8, 16) < 0.5}
    b = {"x.1": torch.rand(40, 600) < 0.5, "x.0": a["x.0"].clone()}
    result = comparison.compare(_record(1, a), _record(2, b), "x.1")
    assert list(result.agreement) == ["x.0", "x.1"]
    assert result.agreement["x.0"] == 1.0
    assert result.agreement["x.1"] == pytest.approx(float((a["x.1"] == b["x.1"]).float().mean()))
    differ = (a["x.1"] != b["x.1"]).float()
    rows, cols = result.cell
    assert (rows, cols) == (1, 3)             # 600 columns into at most 256 cells
    assert result.difference[5, 7] == pytest.approx(float(differ[5, 21:24].mean()))


def test_score_factors_recover_wanda_and_sparsegpt_forms():
    torch.manual_seed(1)
    weight = torch.randn(16, 32)
    norms = torch.rand(32) + 0.1
    power, factors = summaries.score_factors(weight, wanda.scores(weight, norms))
    assert power == 1 and np.allclose(factors, norms.numpy(), rtol=1e-5)
    d = torch.rand(32) + 0.5
    power, factors = summaries.score_factors(weight, weight.pow(2) / d.pow(2))
    assert power == 2 and np.allclose(factors, (1 / d.pow(2)).numpy(), rtol=1e-5)
    assert summaries.score_factors(weight, torch.rand(16, 32)) is None


def test_quantile_from_histogram_is_close_to_the_exact_quantile():
    values = torch.randn(200_000)
    hist = summaries.histogram(values, bins=512)
    assert summaries.quantile_from_histogram(hist, 0.3) == pytest.approx(float(values.quantile(0.3)), abs=0.02)


def test_preview_of_a_dense_layer():
    weight = torch.randn(300, 520)
    weight[0, :10] = 0
    summary, stride = summaries.preview(weight, 0.5)
    assert stride == 1
    assert summary.weights_before.counts.sum() == weight.numel()
    assert summary.scores.counts.sum() == weight.numel() - 10      # zeros have no log score
    kept = summary.heatmap
    assert summary.heatmap_cell == (2, 3)
    assert kept[0, 0] == pytest.approx(0.5) and kept[1, 5] == 1.0     # cell rows 0-1 × cols 0-2: 3 of 6 zero
    threshold = 10 ** summary.score_threshold
    assert float((weight.abs() <= threshold).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_run_summary_threshold_separates_pruned_from_kept_scores():
    torch.manual_seed(2)
    weight = torch.randn(24, 64)
    norms = torch.rand(64) + 0.1
    score = wanda.scores(weight, norms)
    mask = per_row_mask(score, 0.5)
    from core.pruning.methods import MethodResult

    summary = summaries.summarize(weight, MethodResult(weight.masked_fill(mask, 0), mask, score))
    assert 10 ** summary.score_threshold == pytest.approx(float(score[mask].max()), rel=1e-5)
    assert summary.weights_after.counts.sum() == int((~mask).sum())
    assert summary.score_factors[0] == 1


def test_tile_is_the_exact_region_clipped_to_the_layer():
    dense = torch.randn(50, 72)
    mask = nm_mask(dense.abs(), Pattern(2, 4))
    current = dense.masked_fill(mask, 0)
    tile = views.tile(dense, current, (40, 90), (56, 80), (1, np.full(72, 2.0, np.float32)))
    assert (tile.row0, tile.col0) == (40, 56) and tile.before.shape == (10, 16)
    assert np.array_equal(tile.after, current[40:50, 56:72].numpy())
    assert np.array_equal(tile.kept, (~mask[40:50, 56:72]).float().numpy())
    assert np.allclose(tile.scores, 2 * dense[40:50, 56:72].abs().numpy())
    assert np.all(tile.kept.reshape(10, 4, 4).sum(-1) == 2)      # 2:4 groups show: 2 kept of every 4


def test_weight_snapshot_restores_and_eta():
    from transformers import LlamaConfig, LlamaForCausalLM
    from core.models.architectures import find_layout
    from core.models.loaded import LoadedModel

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    loaded = LoadedModel(model, None, "tiny", "folder", None, find_layout(model))
    snapshot = WeightSnapshot(loaded)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0)
    snapshot.restore(loaded)
    linear_names = {f"{n}.weight" for n in snapshot.weights}
    for key, value in model.state_dict().items():
        if key in linear_names:
            assert torch.equal(value, before[key])
    assert eta_seconds(0.0, 2, 10, now=4.0) == pytest.approx(16.0)
    assert eta_seconds(0.0, 0, 10, now=4.0) is None


def test_preview_of_a_big_layer_reads_every_strided_row_and_scales_the_counts():
    weight = torch.randn(1000, 300)
    weight[::4] = 0                     # every 4th row pruned: the sample sees all of them
    summary, stride = summaries.preview(weight, 0.5, max_weights=100_000)
    assert stride == 3
    sample = weight[::3]
    assert summary.weights_before.counts.sum() == sample.numel() * 3
    assert summary.scores.counts.sum() == int((sample != 0).sum()) * 3
    kept = float((sample != 0).float().mean())
    assert summary.heatmap.mean() == pytest.approx(kept, abs=0.02)


def test_preview_of_an_all_zero_layer_has_no_scores():
    summary, _ = summaries.preview(torch.zeros(8, 8), 0.5)
    assert summary.scores is None and summary.score_threshold is None and summary.heatmap.max() == 0
