"""Quantization inside the block loop: every pruned zero stays zero, every N:M group keeps its pattern, every
weight sits on its group's grid, and the per-layer errors say what quantization itself cost."""

import pytest
import torch

from core.errors import UserError
from core.events import Cancelled, CancelToken, Job, Phase, Recorder
from core.models.architectures import weight_matrix
from core.models.open import open_model
from core.patterns import follows_pattern, parse_pattern
from core.pruning import pipeline
from core.pruning.plan import PrunePlan
from core.quantization.scheme import QuantScheme
from tests.tiny_models import tiny_calibration


@pytest.fixture()
def loaded(tiny_llama_folder):
    return open_model(tiny_llama_folder)


@pytest.fixture(scope="module")
def calib(tiny_llama_folder):
    return tiny_calibration(open_model(tiny_llama_folder).tokenizer, nsamples=6, seqlen=24)


def weights(loaded, result):
    return {l.name: weight_matrix(loaded.model.get_submodule(l.name)).detach().clone() for l in result.layers}


def assert_on_grid(loaded, result):
    for layer in result.layers:
        w = weight_matrix(loaded.model.get_submodule(layer.name)).detach()
        record = result.quantized[layer.name]
        assert torch.equal(record.dequantize(record.codes(w)).to(w.dtype), w), layer.name
        levels = record.codes(w).reshape(w.shape[0], -1, record.group_size)
        distinct = max(len(torch.unique(levels[r, g])) for r in range(0, w.shape[0], 7) for g in range(levels.shape[1]))
        assert distinct <= 2 ** record.bits


@pytest.mark.parametrize("method,pattern", [("magnitude", "unstructured"), ("wanda", "2:4"),
                                            ("sparsegpt", "unstructured"), ("sparsegpt", "2:4"), ("alps", "4:8")])
def test_quantizing_after_pruning_keeps_every_pruned_zero(tiny_llama_folder, calib, method, pattern):
    plain = open_model(tiny_llama_folder)
    sparsity = None if pattern != "unstructured" else 0.5
    alone = pipeline.prune(plain, calib, PrunePlan.build(method=method, pattern=pattern, sparsity=sparsity))
    quantized_model = open_model(tiny_llama_folder)
    plan = PrunePlan.build(method=method, pattern=pattern, sparsity=sparsity, quantization=QuantScheme(4))
    result = pipeline.prune(quantized_model, calib, plan)
    assert len(result.quantized) == len(result.layers) == 14
    assert_on_grid(quantized_model, result)
    for layer in result.layers:
        w = weight_matrix(quantized_model.model.get_submodule(layer.name)).detach()
        if pattern != "unstructured":
            assert follows_pattern(w, parse_pattern(pattern))
        if method == "magnitude":        # its masks do not depend on the inputs: the very same zeros, and more
            before = weight_matrix(plain.model.get_submodule(layer.name)).detach()
            assert (w[before == 0] == 0).all()
        assert layer.quant_error is not None and 0 < layer.quant_error < layer.error + 1e-9
        expected_group = 128 if layer.name.endswith("down_proj") else 64     # the largest of 128, 64, 32 dividing
        assert layer.notes["quantization"]["group_size"] == expected_group and layer.notes["quantization"]["bits"] == 4


def test_gptq_costs_less_output_error_than_round_to_nearest(tiny_llama_folder, calib):
    errors = {}
    for method in ("gptq", "rtn"):
        loaded = open_model(tiny_llama_folder)
        plan = PrunePlan.build(method="none", quantization=QuantScheme(4, method=method, group_size=0))
        errors[method] = sum(l.quant_error for l in pipeline.prune(loaded, calib, plan).layers)
    assert errors["gptq"] < 0.9 * errors["rtn"]


def test_quantizing_alone_changes_nothing_but_the_rounding(loaded, calib):
    dense = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    result = pipeline.prune(loaded, calib, PrunePlan.build(method="none", quantization=QuantScheme(8)))
    assert_on_grid(loaded, result)
    for layer in result.layers:
        w = weight_matrix(loaded.model.get_submodule(layer.name)).detach()
        record = result.quantized[layer.name]
        step = record.scale.float().repeat_interleave(record.group_size, dim=1)
        assert ((w - dense[layer.name + ".weight"]).abs() <= 4 * step + 1e-6).all()   # GPTQ moves weights a few steps
        assert layer.quant_error == pytest.approx(layer.error, rel=1e-4) and layer.error < 1e-3


def test_the_joint_pass_keeps_the_pattern_and_the_grid(loaded, calib):
    plan = PrunePlan.build(method="sparsegpt", pattern="2:4", quantization=QuantScheme(4, joint=True))
    result = pipeline.prune(loaded, calib, plan)
    assert_on_grid(loaded, result)
    for layer in result.layers:
        assert follows_pattern(weight_matrix(loaded.model.get_submodule(layer.name)), parse_pattern("2:4"))
        assert result.quantized[layer.name].notes["joint"] is True


def test_a_group_size_that_does_not_divide_a_layer_skips_that_layer_with_the_reason(loaded, calib):
    plan = PrunePlan.build(method="wanda", sparsity=0.5, quantization=QuantScheme(4, group_size=128))
    events = Recorder()
    result = pipeline.prune(loaded, calib, plan, Job(events))
    quantized = set(result.quantized)
    assert quantized == {l.name for l in result.layers if l.name.endswith("down_proj")}   # 128 inputs; the rest 64
    reasons = {s.name: s.reason for s in result.skipped}
    assert len(reasons) == 12 and all("not a multiple of group size 128" in r for r in reasons.values())
    assert all(l.sparsity >= 0.5 for l in result.layers)      # still pruned


def test_cancel_while_quantizing_restores_the_dense_model(loaded, calib):
    dense = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    token = CancelToken()

    def listener(event):
        if isinstance(event, Phase) and event.name == "quantize" and event.done == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        pipeline.prune(loaded, calib, PrunePlan.build(method="sparsegpt", quantization=QuantScheme(4)),
                       Job(listener, token))
    assert all(torch.equal(v, dense[k]) for k, v in loaded.model.state_dict().items())


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="wanda", quantization=QuantScheme(4, joint=True)), "joint"),
    (dict(method="none"), "quantizing alone"),
    (dict(method="none", sparsity=0.5, quantization=QuantScheme(4)), "quantizing alone"),
    (dict(method="sparsegpt", quantization=QuantScheme(3)), "int4 or int8"),
    (dict(method="sparsegpt", quantization=QuantScheme(4, group_size=12)), "multiple of 8"),
])
def test_plans_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        PrunePlan.build(**kwargs)


def test_the_plan_describes_its_quantization():
    plan = PrunePlan.build(method="sparsegpt", quantization=QuantScheme(4, symmetric=False, group_size=64))
    assert plan.describe()["quantization"] == {"bits": 4, "symmetric": False, "group_size": 64, "act_order": False,
                                               "method": "gptq", "dampening": 0.01, "blocksize": 128, "joint": False}
