"""Rows, columns and blocks (issue 13): whole units pruned by each method's score summed over the unit,
stored as zeros; the masks against a brute-force definition, each method on its own and in the pipeline,
SparseGPT's update for columns, the text of the patterns and the command line."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
from torch import nn

from core.analysis import summaries
from core.analysis.views import run_view
from core.cli import main
from core.errors import UserError
from core.events import Job, LayerPruned, Recorder
from core.export.writers import ExportRequest
from core.models.architectures import weight_matrix
from core.models.open import open_model
from core.patterns import COLUMNS, ROWS, TWO_FOUR, Pattern, follows_pattern, is_two_four, parse_pattern
from core.pruning import pipeline
from core.pruning.masks import block_mask, column_mask, row_mask, unit_mask
from core.pruning.methods import METHODS, sparsegpt
from core.pruning.allocation import AllocationOptions
from core.pruning.plan import PrunePlan
from core.quantization.scheme import QuantScheme
from core.pruning.stats import COLUMN_NORMS, HESSIAN, StatsCollector
from tests.tiny_models import tiny_calibration

BLOCKS = Pattern(kind="blocks", height=4, width=8)
PARTIAL = Pattern(kind="blocks", height=5, width=7)      # 24 × 64 is no multiple: partial edge blocks
UNIT_PATTERNS = [ROWS, COLUMNS, BLOCKS, PARTIAL]


def brute_block_mask(scores: torch.Tensor, height: int, width: int, sparsity: float) -> torch.Tensor:
    """The definition, unit by unit: rank by exact mean (NaN highest), ties in row-major order, then the
    longest run of lowest-ranked units whose sizes add up to at most int(numel × sparsity)."""
    rows, cols = scores.shape
    units = [(r, c) for r in range(0, rows, height) for c in range(0, cols, width)]

    def rank(index):
        r, c = units[index]
        tile = scores[r:r + height, c:c + width].double()
        if bool(tile.isnan().any()):
            return (1, Fraction(0), index)
        return (0, Fraction(float(tile.sum())) / tile.numel(), index)

    budget, used = int(scores.numel() * sparsity), 0
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for index in sorted(range(len(units)), key=rank):
        r, c = units[index]
        size = mask[r:r + height, c:c + width].numel()
        if used + size > budget:
            break
        used += size
        mask[r:r + height, c:c + width] = True
    return mask


def unit_grid(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Every unit's pruned state, asserting that each unit is pruned whole or not at all."""
    rows, cols = mask.shape
    grid = torch.zeros((-(-rows // height), -(-cols // width)), dtype=torch.bool)
    for i, r in enumerate(range(0, rows, height)):
        for j, c in enumerate(range(0, cols, width)):
            tile = mask[r:r + height, c:c + width]
            assert bool(tile.all()) or not bool(tile.any()), f"unit at ({r}, {c}) is pruned in part"
            grid[i, j] = bool(tile.all())
    return grid


def assert_whole_units(mask: torch.Tensor, scores: torch.Tensor, pattern: Pattern, sparsity: float) -> None:
    """Whole units, as many as fit in the budget, every pruned unit's summed score ≤ every kept one's."""
    height, width = pattern.unit(*mask.shape)
    grid = unit_grid(mask, height, width)
    if pattern.kind != "blocks" or (mask.shape[0] % height == 0 and mask.shape[1] % width == 0):
        size = height * width
        assert int(grid.sum()) == int(mask.numel() * sparsity) // size
        sums = torch.stack([scores[r:r + height, c:c + width].double().sum()
                            for r in range(0, mask.shape[0], height) for c in range(0, mask.shape[1], width)])
        flat = grid.flatten()
        if flat.any() and (~flat).any():
            assert float(sums[flat].max()) <= float(sums[~flat].min()) * (1 + 1e-6)


SHAPES_UNITS = [((5, 7), (1, 7)), ((5, 7), (5, 1)), ((6, 9), (2, 3)), ((8, 8), (4, 4)), ((7, 10), (3, 4)),
                ((9, 13), (4, 5)), ((5, 7), (64, 64)), ((12, 16), (1, 1))]


@pytest.mark.parametrize("shape, unit", SHAPES_UNITS, ids=str)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_block_mask_is_the_brute_force_definition_with_ties_and_partial_edges(shape, unit, sparsity):
    g = torch.Generator().manual_seed(shape[0] * 100 + unit[1])
    scores = torch.randint(0, 4, shape, generator=g).float()        # small integers: many exact ties
    scores[0, -1] = float("nan")
    assert torch.equal(block_mask(scores, *unit, sparsity), brute_block_mask(scores, *unit, sparsity))


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.77])
def test_row_column_and_block_masks_prune_whole_units_of_least_summed_score(sparsity):
    scores = torch.rand(24, 64, generator=torch.Generator().manual_seed(3))
    masks = {ROWS: row_mask(scores, sparsity), COLUMNS: column_mask(scores, sparsity),
             BLOCKS: block_mask(scores, 4, 8, sparsity)}
    for pattern, mask in masks.items():
        assert torch.equal(mask, unit_mask(scores, pattern, sparsity))
        assert torch.equal(mask, brute_block_mask(scores, *pattern.unit(24, 64), sparsity))
        assert_whole_units(mask, scores, pattern, sparsity)


def test_patterns_read_back_and_bad_text_is_refused():
    for text in ("rows", "columns", "blocks:64x64", "blocks:1x128", "unstructured", "2:4", "4:8"):
        assert str(parse_pattern(text)) == text and parse_pattern(str(parse_pattern(text))) == parse_pattern(text)
    assert parse_pattern(" blocks : 8 x 16 ") == Pattern(kind="blocks", height=8, width=16)
    assert parse_pattern("rows").whole_units and not parse_pattern("rows").structured
    assert parse_pattern("rows").sparsity is None and parse_pattern("blocks:3x3").fits(7)
    assert Pattern(2, 4) == TWO_FOUR and TWO_FOUR.kind == "nm" and Pattern().kind == "unstructured"
    assert not is_two_four(ROWS) and not is_two_four(parse_pattern("blocks:2x4"))
    for text, message in [("blocks:0x64", "at least one row"), ("blocks:64x0", "at least one row"),
                          ("blocks:64", "unknown pattern"), ("rowz", "unknown pattern"), ("blocks:-1x4", "unknown"),
                          ("blocks:" + "9" * 20 + "x1", "small numbers"), ("row", "unknown pattern")]:
        with pytest.raises(UserError, match=message):
            parse_pattern(text)


def test_plans_take_a_sparsity_with_unit_patterns_and_alps_none_and_compact_refuse_them():
    assert PrunePlan.build(pattern="rows").sparsity == 0.5
    plan = PrunePlan.build(method="sparsegpt", pattern="columns", sparsity=0.3, overrides=("q_proj=0.2",))
    assert plan.sparsity == 0.3 and plan.served_pattern == COLUMNS
    with pytest.raises(UserError, match="not supported yet for ALPS; use magnitude, wanda or sparsegpt"):
        PrunePlan.build(method="alps", pattern="blocks:64x64")
    with pytest.raises(UserError, match="method none prunes nothing"):
        PrunePlan.build(method="none", pattern="rows", quantization=None)
    with pytest.raises(UserError, match="compact format stores 2:4 weights only and this run is rows"):
        ExportRequest("unused", format="compact").check_format(PrunePlan.build(pattern="rows"))
    assert PrunePlan.build(pattern="rows", allocation=AllocationOptions(kind="owl")).pattern == ROWS
    with pytest.raises(UserError, match="OWL moves each block's sparsity"):   # continuous, as unstructured
        PrunePlan.build(pattern="rows", sparsity=0.95, allocation=AllocationOptions(kind="owl"))


def layer_and_stats(seed=0, out_features=24, in_features=64):
    """A linear layer and correlated activations with very different column scales, through the real hooks."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, in_features, generator=g))
    mixing = torch.randn(in_features, in_features, generator=g) / in_features ** 0.5 + torch.eye(in_features)
    scales = torch.exp(torch.randn(in_features, generator=g))
    xs = [(torch.randn(1, 60, in_features, generator=g) @ mixing) * scales for _ in range(3)]
    collector = StatsCollector({"layer": layer}, {COLUMN_NORMS, HESSIAN})
    with torch.no_grad():
        for x in xs:
            layer(x)
    return layer.weight.detach().clone(), collector.close()["layer"], torch.cat([x.reshape(-1, in_features) for x in xs])


def output_error(weight, pruned, X):
    return float(((weight - pruned) @ X.t()).pow(2).sum())


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", UNIT_PATTERNS, ids=str)
def test_each_method_prunes_whole_units_by_its_summed_score(method, pattern):
    weight, stats, _ = layer_and_stats()
    result = METHODS[method].prune(weight, stats, 0.5, pattern, None)
    assert torch.equal(result.weight == 0, result.mask)
    if method == "sparsegpt":     # ranked by w²/U_jj², the score it reports
        assert_whole_units(result.mask, result.score, pattern, 0.5)
    else:
        assert torch.equal(result.mask, unit_mask(result.score, pattern, 0.5))
        assert torch.equal(result.weight, weight.masked_fill(result.mask, 0))
    assert_whole_units(result.mask, result.score, pattern, 0.5)


def test_sparsegpt_rows_leaves_every_kept_row_as_it_was():
    weight, stats, _ = layer_and_stats(1)
    result = sparsegpt.prune(weight, stats, 0.5, ROWS)
    kept = ~result.mask.all(1)
    assert int(kept.sum()) == 12 and torch.equal(result.weight[kept], weight[kept])


@pytest.mark.parametrize("pattern", [COLUMNS, BLOCKS, PARTIAL], ids=str)
def test_sparsegpt_update_lowers_the_output_error_of_columns_and_blocks(pattern):
    weight, stats, X = layer_and_stats(2)
    updated = sparsegpt.prune(weight, stats, 0.5, pattern)
    plain = sparsegpt.prune(weight, stats, 0.5, pattern, sparsegpt.Options(update_weights=False))
    magnitude = METHODS["magnitude"].prune(weight, None, 0.5, pattern)
    assert torch.equal(plain.mask, updated.mask)
    error = output_error(weight, updated.weight, X)
    assert error < 0.9 * output_error(weight, plain.weight, X)
    assert error < 0.9 * output_error(weight, magnitude.weight, X)


@pytest.fixture(scope="module")
def calib(tiny_llama_folder):
    return tiny_calibration(open_model(tiny_llama_folder).tokenizer, nsamples=4, seqlen=24)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("text, sparsity", [("rows", 0.5), ("columns", 0.3), ("blocks:16x16", 0.5)])
def test_the_pipeline_prunes_every_layer_to_whole_units_and_the_views_show_them(tiny_llama_folder, calib, method,
                                                                              text, sparsity):
    loaded, events = open_model(tiny_llama_folder), Recorder()
    plan = PrunePlan.build(method=method, pattern=text, sparsity=sparsity, device="cpu")
    result = pipeline.prune(loaded, calib, plan, Job(events), summarize=summaries.summarize)
    assert len(result.layers) == 14 and result.skipped == []
    pattern, modules = parse_pattern(text), dict(loaded.model.named_modules())
    for layer in result.layers:
        weight = weight_matrix(modules[layer.name]).detach()
        height, width = pattern.unit(*weight.shape)
        grid = unit_grid(weight == 0, height, width)
        assert int(grid.sum()) == int(weight.numel() * sparsity) // (height * width)
        assert follows_pattern(weight, pattern) and layer.sparsity == pytest.approx(float(grid.float().mean()))
    if text == "rows":
        event = events.of(LayerPruned)[0]
        view = run_view(event.result.name, event.result.shape, event.summary, method)
        assert view.summary.heatmap_cell == (1, 1)             # a 64-wide layer: one cell per weight
        row_kept = view.summary.heatmap.mean(1)
        assert set(row_kept.tolist()) == {0.0, 1.0} and (row_kept == 0).sum() == event.result.shape[0] // 2


def test_the_joint_pass_quantizes_the_kept_weights_of_whole_columns(tiny_llama_folder, calib):
    loaded = open_model(tiny_llama_folder)
    plan = PrunePlan.build(method="sparsegpt", pattern="columns", sparsity=0.5, device="cpu",
                           quantization=QuantScheme(bits=4, joint=True))
    result = pipeline.prune(loaded, calib, plan)
    modules = dict(loaded.model.named_modules())
    for layer in result.layers:
        weight = weight_matrix(modules[layer.name]).detach()
        # a kept weight may round to the zero level: whole zero columns are the pruned ones
        assert int((weight == 0).all(0).sum()) == weight.shape[1] // 2 and layer.notes["dampening"] == 0.01


def test_the_command_line_prunes_rows(tiny_llama_folder, text_file, tmp_path, capsys):
    out = tmp_path / "rows"
    code = main(["prune", str(tiny_llama_folder), "--calib", str(text_file), "--nsamples", "4", "--seqlen", "32",
                 "--method", "wanda", "--pattern", "rows", "--sparsity", "0.25", "--out", str(out), "--json",
                 "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["pattern"] == "rows" and abs(result["sparsity"] - 0.25) < 1e-6
    from transformers import AutoModelForCausalLM

    down = AutoModelForCausalLM.from_pretrained(out).model.layers[1].mlp.down_proj.weight.detach()
    zero_rows = (down == 0).all(1)
    assert int(zero_rows.sum()) == down.shape[0] // 4 and torch.equal(down == 0, zero_rows[:, None].expand_as(down))
