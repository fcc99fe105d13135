"""NaN and Inf stop a run at the layer or block where they first appear, with its name, and the model is
left as it was before the run; a normal run is not changed by the checks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.cli.main import main
from core.errors import NonFiniteError, UserError
from core.models.architectures import weight_matrix
from core.models.open import open_model
from core.pruning import finite, pipeline, quantize_step
from core.pruning.methods import Method
from core.pruning.plan import PrunePlan
from core.pruning.snapshot import WeightSnapshot
from core.quantization.scheme import QuantScheme
from core.recovery.options import RecoveryOptions
from tests.tiny_models import tiny_calibration, tiny_model_folder


@pytest.fixture()
def loaded(tiny_llama_folder):
    return open_model(tiny_llama_folder)


@pytest.fixture(scope="module")
def calib(tiny_llama_folder):
    return tiny_calibration(open_model(tiny_llama_folder).tokenizer, nsamples=4, seqlen=24)


def plan(method="wanda", **options):
    return PrunePlan.build(method=method, sparsity=0.5, device="cpu", **options)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_as_before(model, before):
    """Every tensor bit for bit as before the run (a NaN injected on purpose counts as equal to itself)."""
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype and after[key].device == tensor.device, key
        torch.testing.assert_close(after[key], tensor, rtol=0, atol=0, equal_nan=True, msg=key)


def fail(loaded, calib, run_plan, **kwargs) -> str:
    before = state(loaded.model)
    with pytest.raises(NonFiniteError) as caught:
        pipeline.prune(loaded, calib, run_plan, **kwargs)
    assert isinstance(caught.value, UserError)
    assert_as_before(loaded.model, before)
    return str(caught.value)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_nan_source_weight_is_named_and_the_model_stays_as_it_was(loaded, calib, method):
    with torch.no_grad():
        loaded.model.model.layers[1].mlp.down_proj.weight[3, 5] = float("nan")
    message = fail(loaded, calib, plan(method))      # block 0 was pruned before block 1 was reached
    assert message.startswith("model.layers.1.mlp.down_proj has NaN/Inf weights in the source model (1 NaN of")
    assert "damaged" in message


def test_an_inf_norm_weight_is_named_too(loaded, calib):
    with torch.no_grad():
        loaded.model.model.layers[0].post_attention_layernorm.weight[7] = float("inf")
    message = fail(loaded, calib, plan())
    assert message.startswith("model.layers.0.post_attention_layernorm has NaN/Inf weights in the source model (1 Inf")


def test_a_nan_embedding_is_named_from_the_first_block_inputs(loaded, calib):
    with torch.no_grad():
        loaded.model.model.embed_tokens.weight[calib.input_ids[0, 3]] = float("nan")
    message = fail(loaded, calib, plan())
    assert "first decoder block's inputs" in message and "model.embed_tokens.weight" in message


def _blow_up_once_pruned(module, args, output):
    """A down projection that overflows only with pruned weights (exact zeros)."""
    return output * float("inf") if bool((module.weight == 0).any()) else output


def _blow_up_always(module, args, output):
    return output * float("inf")


@pytest.mark.parametrize("hook, dense_finite", [(_blow_up_once_pruned, True), (_blow_up_always, False)])
def test_inf_block_outputs_name_the_block_and_say_whether_the_dense_block_overflows_too(loaded, calib, hook,
                                                                                        dense_finite):
    handle = loaded.model.model.layers[1].mlp.down_proj.register_forward_hook(hook)
    try:
        message = fail(loaded, calib, plan(), dense=WeightSnapshot(loaded).weights)   # as the studio runs it
    finally:
        handle.remove()
    assert message.startswith("the outputs of model.layers.1 are NaN/Inf after pruning")
    assert ("the dense block's outputs on the same inputs are finite" in message) == dense_finite
    assert ("and so are the dense block's outputs" in message) == (not dense_finite)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_overflowing_activations_in_the_statistics_name_the_layer(loaded, calib, method):
    def overflow(module, args):
        return (args[0] * 1e30,)       # float32 still, but its square is not

    handle = loaded.model.model.layers[1].mlp.down_proj.register_forward_pre_hook(overflow)
    try:
        message = fail(loaded, calib, plan(method))
    finally:
        handle.remove()
    what = "input column norms" if method == "wanda" else "XᵀX"
    assert message.startswith(f"the calibration statistics of model.layers.1.mlp.down_proj ({what}) are NaN/Inf")
    assert "--nsamples, --seqlen" in message


def _poisoned(method, at_call: int):
    calls = [0]

    def prune(weight, *args, **kwargs):
        result = method.prune(weight, *args, **kwargs)
        calls[0] += 1
        if calls[0] == at_call:
            result.weight[0, 0] = float("nan")
        return result

    return Method(method.name, prune, method.needs, method.summary)


def test_a_method_update_that_makes_nan_names_the_layer_and_the_method(loaded, calib, monkeypatch):
    original = pipeline.METHODS["sparsegpt"]
    monkeypatch.setitem(pipeline.METHODS, "sparsegpt", _poisoned(original, at_call=7 + 3))   # block 1's third layer
    message = fail(loaded, calib, plan("sparsegpt"))
    assert message.startswith("SparseGPT's update made model.layers.1.self_attn.v_proj non-finite (1 NaN of")
    assert "raise the dampening (--dampening, now 0.01)" in message


def test_an_update_beyond_float16s_range_says_so(tiny_llama_folder, calib, monkeypatch):
    half = open_model(tiny_llama_folder, dtype="float16")
    original = pipeline.METHODS["sparsegpt"]

    def huge(weight, *args, **kwargs):
        result = original.prune(weight, *args, **kwargs)
        result.weight[0, 0] = 1e6
        return result

    monkeypatch.setitem(pipeline.METHODS, "sparsegpt", Method("sparsegpt", huge, original.needs, original.summary))
    message = fail(half, calib, plan("sparsegpt"))
    assert message.startswith("SparseGPT's update gave model.layers.0.self_attn.q_proj values beyond float16's range")


def test_quantization_that_makes_nan_names_the_layer(loaded, calib, monkeypatch):
    original = quantize_step._quantize

    def poisoned(*args, **kwargs):
        quantized, record = original(*args, **kwargs)
        quantized[0, 0] = float("nan")
        return quantized, record

    monkeypatch.setattr(quantize_step, "_quantize", poisoned)
    message = fail(loaded, calib, plan("wanda", quantization=QuantScheme(bits=4, group_size=32)))
    assert message.startswith("GPTQ quantization made model.layers.0.self_attn.q_proj non-finite")
    assert "--dampening" in message


def test_recovery_that_makes_nan_names_the_layer(loaded, calib, monkeypatch):
    original = pipeline.recover_block

    def poisoned(turn, modules, *args, **kwargs):
        curve = original(turn, modules, *args, **kwargs)
        with torch.no_grad():
            modules["mlp.up_proj"].weight[1, 1] = float("nan")
        return curve

    monkeypatch.setattr(pipeline, "recover_block", poisoned)
    message = fail(loaded, calib, plan(recovery=RecoveryOptions(mode="blockwise", steps=1)))
    assert message.startswith("block-wise recovery made model.layers.0.mlp.up_proj non-finite")
    assert "--recover-lr" in message


def test_checks_only_read_a_normal_run_is_bit_identical_without_them(tiny_llama_folder, calib, monkeypatch):
    run_plan = plan("sparsegpt", quantization=QuantScheme(bits=4, group_size=32))
    checked = open_model(tiny_llama_folder)
    pipeline.prune(checked, calib, run_plan)
    for name in ("check_block", "check_stats", "check_weight", "check_outputs", "check_embedded"):
        monkeypatch.setattr(finite, name, lambda *args, **kwargs: None)
    unchecked = open_model(tiny_llama_folder)
    pipeline.prune(unchecked, calib, run_plan)
    assert_as_before(checked.model, unchecked.model.state_dict())


def test_the_cli_exits_2_with_one_line_naming_the_layer_and_writes_nothing(tmp_path, text_file, capsys):
    folder = tiny_model_folder("llama", tmp_path / "model")
    weights = load_file(str(folder / "model.safetensors"))
    weights["model.layers.1.self_attn.o_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    code = main(["prune", str(folder), "--calib", str(text_file), "--nsamples", "2", "--seqlen", "32",
                 "--method", "sparsegpt", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: model.layers.1.self_attn.o_proj has NaN/Inf weights")
    assert not out.exists()


def test_the_weight_check_sees_every_layer_it_is_shown(loaded):
    """One NaN anywhere in a block's parameters, biases and norms included, is found."""
    block = loaded.layout.blocks[0]
    finite.check_block(block, "model.layers.0")
    for name, param in block.named_parameters():
        with torch.no_grad():
            kept = param.flatten()[-1].item()
            param.view(-1)[-1] = float("nan")
        with pytest.raises(NonFiniteError, match=f"model.layers.0.{name.rpartition('.')[0]} has NaN/Inf"):
            finite.check_block(block, "model.layers.0")
        with torch.no_grad():
            param.view(-1)[-1] = kept
    assert weight_matrix(block.mlp.down_proj).isfinite().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_agrees_with_isfinite_wherever_the_bad_value_sits(dtype):
    """`finite` reads the smallest and largest value (NaN propagates through both, as documented)."""
    for n in (1, 7, 33, 1000, 10_007):
        clean = torch.randn(n).to(dtype)
        assert finite.finite(clean) and finite.finite(clean.view(-1, 1).t())
        for position in {0, n // 2, n - 1}:
            for value in (float("nan"), float("inf"), -float("inf")):
                bad = clean.clone()
                bad[position] = value
                assert not finite.finite(bad) and not finite.finite(bad.view(-1, 1))
    assert finite.finite(torch.empty(0))
