"""The sequential pipeline: what each block is fed, what it reports, what it skips, and how it undoes itself."""

import pytest
import torch

from core.pruning import pipeline
from core.models.architectures import weight_matrix
from core.analysis import summaries
from core.events import BlockStarted, Cancelled, CancelToken, Finished, Job, LayerPruned, Message, Phase, Recorder
from core.pruning.methods import METHODS, Method
from core.models.open import open_model
from core.pruning.plan import PrunePlan
from tests.tiny_models import tiny_calibration, tiny_model_folder


@pytest.fixture()
def loaded(tiny_llama_folder):
    return open_model(tiny_llama_folder)


@pytest.fixture(scope="module")
def calib(tiny_llama_folder):
    return tiny_calibration(open_model(tiny_llama_folder).tokenizer, nsamples=6, seqlen=24)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert changed == []


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_each_block_is_fed_the_outputs_of_the_already_pruned_block_before(loaded, calib, method):
    blocks = loaded.layout.blocks
    calls = {0: [], 1: []}

    def recorder(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            calls[index].append((hidden.clone(), args[1:], dict(kwargs)))
        return hook

    handles = [blocks[i].register_forward_pre_hook(recorder(i), with_kwargs=True) for i in (0, 1)]
    try:
        pipeline.prune(loaded, calib, PrunePlan.build(method=method, sparsity=0.5, batch_size=4, device="cpu"))
    finally:
        for handle in handles:
            handle.remove()
    batches = 2                                      # 6 windows in batches of 4
    first_inputs = calls[0][:batches]                # block 0 seen while capturing its inputs
    fed_to_block_1 = [hidden for hidden, _, _ in calls[1][:batches]]   # block 1's first pass: gathering stats
    assert len(calls[1]) == 2 * batches              # gather statistics, then propagate
    with torch.no_grad():
        for (hidden, args, kwargs), fed in zip(first_inputs, fed_to_block_1):
            kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            pruned_out = blocks[0](hidden, *args, **kwargs)
            pruned_out = pruned_out[0] if isinstance(pruned_out, tuple) else pruned_out
            torch.testing.assert_close(fed, pruned_out, rtol=0, atol=1e-6)
    dense = open_model(loaded.path)
    with torch.no_grad():
        hidden, args, kwargs = first_inputs[0]
        dense_out = dense.layout.blocks[0](hidden, *args, **kwargs)
        dense_out = dense_out[0] if isinstance(dense_out, tuple) else dense_out
    assert (dense_out - fed_to_block_1[0]).abs().max() > 1e-3     # pruning block 0 did change block 1's inputs


def test_results_report_the_achieved_sparsity_of_every_layer(loaded, calib):
    result = pipeline.prune(loaded, calib, PrunePlan.build(method="sparsegpt", sparsity=0.5, error_tokens=50, device="cpu"))
    inventory = [info for block in loaded.layout.inventory for info in block.linears]
    assert [r.name for r in result.layers] == [info.full_name for info in inventory]
    modules = dict(loaded.model.named_modules())
    zeros = total = 0
    for r, info in zip(result.layers, inventory):
        weight = weight_matrix(modules[r.name])
        assert r.shape == info.shape == tuple(weight.shape)
        assert r.block == int(r.name.split(".")[2])
        assert r.target_sparsity == 0.5
        assert r.sparsity == float((weight == 0).sum()) / weight.numel() == pytest.approx(0.5, abs=0.01)
        assert 0 < r.error < 1 and r.error_tokens == 50 and r.seconds >= 0
        assert r.notes["dampening"] == 0.01
        zeros += int((weight == 0).sum())
        total += weight.numel()
    assert result.sparsity == pytest.approx(zeros / total)
    assert result.skipped == []
    assert "cpu" in result.device


def test_ignore_list_and_overrides_by_glob(loaded, calib):
    dense = snapshot(loaded.model)
    plan = PrunePlan.build(method="wanda", sparsity=0.5, ignore=("*.mlp.down_proj", "model.layers.1.self_attn.o_proj"),
                           overrides=(("q_proj", 0.25), ("model.layers.1.*", 0.75)))
    result = pipeline.prune(loaded, calib, plan)
    by_name = {r.name: r for r in result.layers}
    skipped = {s.name: s.reason for s in result.skipped}
    assert skipped == {"model.layers.0.mlp.down_proj": "in the ignore list", "model.layers.1.mlp.down_proj": "in the ignore list",
                       "model.layers.1.self_attn.o_proj": "in the ignore list"}
    for name in skipped:
        assert torch.equal(loaded.model.get_submodule(name).weight, dense[name + ".weight"])
    assert by_name["model.layers.0.self_attn.q_proj"].sparsity == 0.25   # first matching override wins
    assert by_name["model.layers.1.self_attn.q_proj"].sparsity == 0.25
    assert by_name["model.layers.1.mlp.up_proj"].sparsity == 0.75
    assert by_name["model.layers.0.mlp.up_proj"].sparsity == 0.5
    assert len(by_name) == 14 - 3


def test_a_layer_whose_input_dimension_does_not_divide_into_m_is_skipped_with_the_reason(tmp_path):
    folder = tiny_model_folder("llama", tmp_path / "m", intermediate_size=100)   # 100 = 12·8 + 4
    loaded = open_model(folder)
    dense = snapshot(loaded.model)
    events = Recorder()
    result = pipeline.prune(loaded, tiny_calibration(loaded.tokenizer, 4, 16), PrunePlan.build(method="wanda", pattern="4:8"),
                            Job(events))
    assert [s.name for s in result.skipped] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert all("100" in s.reason and "M=8" in s.reason for s in result.skipped)
    assert len([m for m in events.of(Message) if "down_proj" in m.text]) == 2
    assert torch.equal(loaded.model.model.layers[0].mlp.down_proj.weight, dense["model.layers.0.mlp.down_proj.weight"])
    assert len(result.layers) == 12 and all(r.sparsity == 0.5 for r in result.layers)


def test_cancel_after_the_first_layer_restores_every_weight_bit_for_bit(loaded, calib):
    dense = snapshot(loaded.model)
    token, events = CancelToken(), Recorder()

    def listener(event):
        events(event)
        if isinstance(event, LayerPruned):
            token.cancel()

    with pytest.raises(Cancelled):
        pipeline.prune(loaded, calib, PrunePlan.build(method="sparsegpt", sparsity=0.5), Job(listener, token))
    assert events.of(LayerPruned) and not events.of(Finished)
    assert_same_weights(loaded.model, dense)


@pytest.mark.parametrize("failing_call", [2, 10])     # inside block 0, and inside block 1
def test_an_error_mid_run_restores_every_weight(loaded, calib, monkeypatch, failing_call):
    dense = snapshot(loaded.model)
    real = METHODS["wanda"]
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == failing_call:
            raise RuntimeError("boom")
        return real.prune(*args, **kwargs)

    monkeypatch.setitem(METHODS, "wanda", Method("wanda", flaky, real.needs, real.summary))
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.prune(loaded, calib, PrunePlan.build(method="wanda", sparsity=0.5))
    assert len(calls) == failing_call
    assert_same_weights(loaded.model, dense)


def test_events_arrive_in_order(loaded, calib):
    events = Recorder()
    result = pipeline.prune(loaded, calib, PrunePlan.build(method="wanda", pattern="2:4"), Job(events))
    typed = [e for e in events.events if isinstance(e, (BlockStarted, LayerPruned, Finished))]
    expected = []
    for index, block in enumerate(loaded.layout.inventory):
        expected.append(("start", index, len(loaded.layout.inventory)))
        expected += [("layer", index, info.full_name) for info in block.linears]
    expected.append(("finished",))
    seen = [("start", e.index, e.total) if isinstance(e, BlockStarted) else
            ("layer", e.block, e.result.name) if isinstance(e, LayerPruned) else ("finished",) for e in typed]
    assert seen == expected
    assert events.events[-1] is typed[-1] and typed[-1].result is result
    assert [e.result for e in events.of(LayerPruned)] == result.layers


def test_summaries_ride_on_the_layer_events_only_when_asked(loaded, calib):
    events = Recorder()
    pipeline.prune(loaded, calib, PrunePlan.build(method="wanda"), Job(events), summarize=summaries.summarize)
    summary = events.of(LayerPruned)[0].summary
    assert summary is not None and summary.heatmap.shape == (64, 64)
    assert summary.weights_before.counts.sum() == 64 * 64
    assert summary.weights_after.counts.sum() == 64 * 64 // 2


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_models_are_pruned_in_their_own_dtype(tiny_llama_folder, dtype):
    loaded = open_model(tiny_llama_folder, dtype=dtype)
    calib = tiny_calibration(loaded.tokenizer, nsamples=4, seqlen=24)
    result = pipeline.prune(loaded, calib, PrunePlan.build(method="sparsegpt", pattern="2:4"))
    assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, dtype)}
    for r in result.layers:
        weight = weight_matrix(loaded.model.get_submodule(r.name))
        assert ((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all()
        assert r.error is not None and r.error < 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_pruning_on_cuda_matches_the_cpu_and_leaves_the_model_on_the_cpu(tiny_llama_folder, method):
    results = {}
    for device in ("cpu", "cuda"):
        loaded = open_model(tiny_llama_folder)
        calib = tiny_calibration(loaded.tokenizer, nsamples=6, seqlen=24)
        result = pipeline.prune(loaded, calib, PrunePlan.build(method=method, pattern="2:4", device=device))
        assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}
        assert {b.device.type for b in loaded.model.buffers()} == {"cpu"}
        results[device] = (result, {k: v.clone() for k, v in loaded.model.state_dict().items()})
    assert results["cuda"][0].device.startswith("cuda")
    cpu_state, cuda_state = results["cpu"][1], results["cuda"][1]
    same_mask = sum(int(((cpu_state[k] == 0) == (cuda_state[k] == 0)).sum()) for k in cpu_state)
    assert same_mask / sum(v.numel() for v in cpu_state.values()) > 0.99      # float rounding may flip near-ties
    for k in cpu_state:
        both_kept = (cpu_state[k] != 0) & (cuda_state[k] != 0)
        torch.testing.assert_close(cuda_state[k][both_kept], cpu_state[k][both_kept], rtol=1e-3, atol=1e-3, msg=k)


def test_the_weights_before_the_run_wait_on_disk_and_the_folder_goes_when_the_run_ends(loaded, calib, monkeypatch):
    from core.pruning import stash

    folders = []
    real_put = stash.WeightStash.put

    def put(self, name, tensor):
        real_put(self, name, tensor)
        folders.append(self._folder)
        assert torch.equal(self.get(name), tensor)             # what comes back is what went in
    monkeypatch.setattr(stash.WeightStash, "put", put)
    dense = snapshot(loaded.model)
    token = CancelToken()
    with pytest.raises(Cancelled):
        pipeline.prune(loaded, calib, PrunePlan.build(method="sparsegpt", sparsity=0.5, device="cpu"), Job(
                       lambda e: token.cancel() if isinstance(e, BlockStarted) and e.index == 1 else None, token))
    assert len(folders) == 7 and len(set(folders)) == 1         # block 0's seven layers, in one folder
    assert not folders[0].exists()
    assert_same_weights(loaded.model, dense)                    # restored from the disk copies, bit for bit


@pytest.mark.parametrize("family", ["llama", "gpt2"])          # gpt2: Conv1D stores [in, out]
def test_weights_the_caller_already_holds_replace_the_disk_copies(tmp_path, monkeypatch, family):
    from core.pruning import stash

    folder = tiny_model_folder(family, tmp_path / family)
    plan = PrunePlan.build(method="sparsegpt", sparsity=0.5, device="cpu")
    reference = open_model(folder)
    calib = tiny_calibration(reference.tokenizer, nsamples=6, seqlen=24)
    expected = pipeline.prune(reference, calib, plan)

    monkeypatch.setattr(stash.WeightStash, "put", lambda *a: pytest.fail("the stash was used"))
    loaded = open_model(folder)
    before = snapshot(loaded.model)
    held = {info.full_name: weight_matrix(loaded.model.get_submodule(info.full_name)).detach().clone()
            for block in loaded.layout.inventory for info in block.linears}
    result = pipeline.prune(loaded, calib, plan, dense=held)
    assert [r.error for r in result.layers] == [r.error for r in expected.layers]     # the probe saw the same dense weights
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name

    loaded.model.load_state_dict(before)
    token = CancelToken()
    block_1 = {info.full_name for info in loaded.layout.inventory[1].linears}
    with pytest.raises(Cancelled):
        pipeline.prune(loaded, calib, plan, Job(
                       lambda e: token.cancel() if isinstance(e, Phase) and e.name == "prune" and e.done == 2
                       and e.detail in block_1 else None, token), dense=held)      # mid block 1: two of its layers pruned
    assert_same_weights(loaded.model, before)
