"""OWL's per-block allocation against its definition, and the pipeline holding the average it promises."""

import pytest
import torch

from core.errors import UserError
from core.events import AllocationChosen, Job, Recorder
from core.models.architectures import weight_matrix
from core.models.open import open_model
from core.patterns import TWO_FOUR, follows_pattern
from core.pruning import allocation, pipeline
from core.pruning.allocation import AllocationOptions
from core.pruning.methods.wanda import scores as wanda_scores
from core.pruning.plan import PrunePlan
from tests.tiny_models import tiny_calibration, tiny_model_folder


def test_owl_keeps_the_mean_and_gives_outlier_rich_blocks_less_sparsity():
    ratios = [0.010, 0.030, 0.020, 0.005, 0.012]
    sparsity = allocation.owl_sparsities(ratios, 0.7, 0.08)
    assert sum(sparsity) / len(sparsity) == pytest.approx(0.7, abs=1e-12)
    order = sorted(range(len(ratios)), key=ratios.__getitem__)
    assert [sparsity[i] for i in order] == sorted(sparsity, reverse=True)
    assert max(sparsity) - min(sparsity) == pytest.approx(2 * 0.08)      # the range is 2λ wide


def test_equal_outlier_ratios_give_the_uniform_allocation():
    assert allocation.owl_sparsities([0.02] * 4, 0.5, 0.08) == [0.5] * 4


def test_outlier_ratio_is_the_share_of_scores_above_m_times_the_block_mean():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(8, 16, generator=g) ** 4, torch.rand(4, 32, generator=g) ** 4]
    flat = torch.cat([s.flatten() for s in scores]).tolist()
    mean = sum(flat) / len(flat)
    expected = sum(1 for v in flat if v > 3 * mean) / len(flat)
    assert allocation.outlier_ratio(scores, 3.0) == pytest.approx(expected)


@pytest.mark.parametrize("m", [4, 8])
def test_nm_levels_meet_the_mean_exactly_and_stay_close(m):
    continuous = [0.2, 0.35, 0.5, 0.62, 0.8, 0.53]
    levels = allocation.nm_levels(continuous, 0.5, m)
    assert sum(levels) == 0.5 * m * len(levels)
    assert all(0 <= level < m for level in levels)
    assert levels[0] < levels[2] < levels[4]          # the order of OWL's wishes survives the rounding


def test_with_the_papers_lambda_2_4_stays_2_4_everywhere():
    chosen = allocation.owl([0.01, 0.05, 0.02, 0.03], 0.5, TWO_FOUR, AllocationOptions("owl"))
    assert chosen.patterns == [TWO_FOUR] * 4 and chosen.sparsity == [0.5] * 4


@pytest.mark.parametrize("sparsity", [0.95, 0.05])
def test_a_target_owl_cannot_reach_is_refused(sparsity):
    with pytest.raises(UserError, match="cannot allow"):
        PrunePlan.build(sparsity=sparsity, allocation=AllocationOptions("owl"))


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    """Wide enough (most inputs 256 or 512 wide) that flooring each row's count costs well under 0.5% of sparsity."""
    return tiny_model_folder("llama", tmp_path_factory.mktemp("wide-llama"), hidden_size=256, intermediate_size=512,
                             num_hidden_layers=4)


@pytest.mark.parametrize("method,sparsity", [("wanda", 0.7), ("sparsegpt", 0.5), ("magnitude", 0.6)])
def test_the_achieved_average_is_the_target_within_half_a_percent(wide_llama, method, sparsity):
    loaded = open_model(wide_llama)
    calib = tiny_calibration(loaded.tokenizer, nsamples=4, seqlen=32)
    plan = PrunePlan.build(method=method, sparsity=sparsity, allocation=AllocationOptions("owl", owl_lambda=0.1))
    recorder = Recorder()
    result = pipeline.prune(loaded, calib, plan, Job(recorder))
    assert abs(result.sparsity - sparsity) < 0.005
    chosen = recorder.of(AllocationChosen)[0].allocation
    assert len(set(chosen.sparsity)) > 1 and chosen is result.plan.blocks
    for layer in result.layers:        # every layer got its block's share
        assert layer.target_sparsity == chosen.sparsity[layer.block]
        assert layer.sparsity == pytest.approx(chosen.sparsity[layer.block], abs=1 / layer.shape[1])
    described = result.describe()["allocation"]
    assert described["kind"] == "owl" and described["block_sparsity"] == chosen.sparsity


def test_the_survey_measures_wanda_scores_of_the_dense_model(wide_llama):
    """The outlier ratios equal a brute-force computation: inputs of every layer from one dense forward."""
    loaded = open_model(wide_llama)
    calib = tiny_calibration(loaded.tokenizer, nsamples=4, seqlen=32)
    inputs = {}

    def keep(name):
        def hook(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            inputs[name] = torch.cat([inputs[name], x]) if name in inputs else x
        return hook

    layers = [(b, info) for b, block in enumerate(loaded.layout.inventory) for info in block.linears]
    handles = [loaded.model.get_submodule(info.full_name).register_forward_pre_hook(keep(info.full_name))
               for _, info in layers]
    with torch.no_grad():
        loaded.model(input_ids=calib.input_ids)
    for h in handles:
        h.remove()
    expected = []
    for b in range(len(loaded.layout.inventory)):
        scores = [wanda_scores(weight_matrix(loaded.model.get_submodule(info.full_name)), inputs[info.full_name].norm(dim=0))
                  for block, info in layers if block == b]
        expected.append(allocation.outlier_ratio(scores, 5.0))
    recorder = Recorder()
    pipeline.prune(loaded, calib, PrunePlan.build(sparsity=0.5, allocation=AllocationOptions("owl")), Job(recorder))
    measured = recorder.of(AllocationChosen)[0].allocation.outlier_ratios
    assert measured == pytest.approx(expected, abs=1e-6)


def test_an_nm_allocation_gives_each_block_one_pattern(wide_llama):
    loaded = open_model(wide_llama)
    calib = tiny_calibration(loaded.tokenizer, nsamples=4, seqlen=32)
    plan = PrunePlan.build(method="wanda", pattern="2:4", allocation=AllocationOptions("owl", owl_lambda=0.3))
    result = pipeline.prune(loaded, calib, plan)
    patterns = result.plan.blocks.patterns
    assert len(set(map(str, patterns))) > 1          # a wide λ mixes patterns
    assert sum(result.plan.blocks.sparsity) / len(patterns) == pytest.approx(0.5)
    for layer in result.layers:
        assert follows_pattern(weight_matrix(loaded.model.get_submodule(layer.name)), patterns[layer.block])
    dense_blocks = {b for b, p in enumerate(patterns) if p is None}
    assert {s.name.split(".")[2] for s in result.skipped} == {str(b) for b in dense_blocks}
