"""Block-wise recovery: it lowers the block's output error, keeps every mask exact, aims at the dense
block's outputs on the dense inputs, and a cancel inside it restores the model."""

import pytest
import torch

from core.events import BlockRecovered, Cancelled, CancelToken, Job, RecoveryStep, Recorder
from core.models.architectures import weight_matrix
from core.models.open import open_model
from core.patterns import follows_pattern
from core.pruning import pipeline
from core.pruning.capture import capture_first_block_inputs, run_block
from core.pruning.activations import ActivationStore
from core.pruning.plan import PrunePlan
from core.recovery import blockwise
from core.recovery.options import RecoveryOptions
from tests.tiny_models import tiny_calibration

RECOVER = RecoveryOptions("blockwise", steps=12, learning_rate=1e-3, batch_windows=2)


@pytest.fixture(scope="module")
def calib(tiny_llama_folder):
    return tiny_calibration(open_model(tiny_llama_folder).tokenizer, nsamples=6, seqlen=24)


def dense_matrices(loaded):
    return {info.full_name: weight_matrix(loaded.model.get_submodule(info.full_name)).clone()
            for block in loaded.layout.inventory for info in block.linears}


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_every_mask_is_exact_after_recovery_and_the_error_falls(tiny_llama_folder, calib, pattern, monkeypatch):
    masks, starts = [], []
    real = blockwise.recover

    def spy(block, parameters, forward, target, batches, options, job):   # the masks as pruning left them
        masks.extend(p.detach() == 0 for p in parameters)
        starts.extend(p.detach().clone() for p in parameters)
        trained = list(parameters)
        curve = real(block, parameters, forward, target, batches, options, job)
        finals.extend(trained)
        return curve

    finals = []
    monkeypatch.setattr(blockwise, "recover", spy)
    loaded = open_model(tiny_llama_folder)
    recorder = Recorder()
    result = pipeline.prune(loaded, calib, PrunePlan.build(method="wanda", pattern=pattern, batch_size=4,
                                                           recovery=RECOVER), Job(recorder))
    assert len(masks) == len(result.layers) == 14
    for mask, start, weight in zip(masks, starts, finals):
        assert torch.equal(weight.detach()[mask], torch.zeros(int(mask.sum())))       # pruned stays zero
        assert not torch.equal(weight.detach(), start)                                # the kept weights trained
    for layer in result.layers:
        assert follows_pattern(weight_matrix(loaded.model.get_submodule(layer.name)), result.plan.pattern)
        assert layer.sparsity >= result.plan.sparsity - 1 / layer.shape[1]
    curves = [e.curve for e in recorder.of(BlockRecovered)]
    assert [c.block for c in curves] == [0, 1] and all(c.after < c.before for c in curves)
    assert len(recorder.of(RecoveryStep)) == 2 * RECOVER.steps
    assert result.describe()["recovery"]["mode"] == "blockwise"


def test_the_targets_are_the_dense_blocks_outputs_on_the_dense_inputs(tiny_llama_folder, calib, monkeypatch):
    dense = open_model(tiny_llama_folder)
    outputs = {}
    handles = [block.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out[0] if isinstance(out, tuple) else out))
               for i, block in enumerate(dense.layout.blocks)]
    with torch.no_grad():
        dense.model(input_ids=calib.input_ids)
    for h in handles:
        h.remove()
    seen = {}
    real = blockwise.recover

    def spy(block, parameters, forward, target, batches, options, job):
        seen[block] = torch.cat([target(b) for b in batches])
        return real(block, parameters, forward, target, batches, options, job)

    monkeypatch.setattr(blockwise, "recover", spy)
    loaded = open_model(tiny_llama_folder)
    pipeline.prune(loaded, calib, PrunePlan.build(method="wanda", batch_size=4, recovery=RECOVER))
    for i in (0, 1):      # block 1's targets come from the dense block 0's outputs, not the pruned one's
        torch.testing.assert_close(seen[i], outputs[i], rtol=1e-4, atol=1e-5)


def test_a_cancel_during_recovery_restores_every_weight(tiny_llama_folder, calib):
    loaded = open_model(tiny_llama_folder)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    token = CancelToken()

    def on_event(event):
        if isinstance(event, RecoveryStep) and event.block == 1 and event.step == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        pipeline.prune(loaded, calib, PrunePlan.build(method="sparsegpt", batch_size=4, recovery=RECOVER),
                       Job(on_event, token))
    after = loaded.model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert all(not p.requires_grad or p.grad is None for p in loaded.model.parameters())


def test_micro_batches_cover_every_window_once():
    assert blockwise.micro_batches([4, 4, 3], 3) == [(0, 0, 3), (0, 3, 4), (1, 0, 3), (1, 3, 4), (2, 0, 3)]


def test_a_call_cut_to_some_windows_gives_those_windows_outputs(tiny_llama_folder, calib):
    loaded = open_model(tiny_llama_folder)
    store = ActivationStore()
    calls = capture_first_block_inputs(loaded.model, loaded.layout.blocks, calib.input_ids[:4], torch.device("cpu"),
                                       4, Job(), store)
    block = loaded.layout.blocks[0]
    with torch.no_grad():
        full = run_block(block, store[0], calls[0])
        part = run_block(block, store[0][1:3], calls[0].windows(1, 3, 4))
    torch.testing.assert_close(part, full[1:3])


def test_recovery_options_count_steps_from_epochs():
    assert RecoveryOptions("blockwise", epochs=2, batch_windows=4).total_steps(10) == 6
    assert RecoveryOptions("blockwise", steps=7).total_steps(10) == 7


def _bf16_block():
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)).to(torch.bfloat16)
    block[1].bias.requires_grad_(False)          # a flag the helper must give back as it found it
    inputs = torch.randn(16, 8)
    targets = inputs @ torch.randn(8, 8)
    return block, inputs, targets


def test_recovery_of_a_half_precision_block_trains_in_float32_and_gives_back_dtype_and_flags():
    block, inputs, targets = _bf16_block()
    untrained = block[1].weight.detach().clone()
    seen = []

    def forward(micro):
        seen.append({p.dtype for p in block.parameters()})
        return block(inputs[micro[1]:micro[2]])

    curve = blockwise.recover_in_float32(0, block, [block[0].weight], forward, lambda m: targets[m[1]:m[2]],
                                         blockwise.micro_batches([16], 4), RecoveryOptions("blockwise", steps=30),
                                         Job())
    assert seen and all(dtypes == {torch.float32} for dtypes in seen)
    assert curve.after < curve.before
    assert {p.dtype for p in block.parameters()} == {torch.bfloat16}
    assert [p.requires_grad for p in block.parameters()] == [True, True, True, False]
    assert all(p.grad is None for p in block.parameters())
    assert torch.equal(block[1].weight, untrained)          # not among the trained parameters


def test_a_cancel_inside_half_precision_recovery_still_gives_back_dtype_and_flags():
    block, inputs, targets = _bf16_block()
    token = CancelToken()

    def on_event(event):
        if isinstance(event, RecoveryStep) and event.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        blockwise.recover_in_float32(0, block, [block[0].weight], lambda m: block(inputs[m[1]:m[2]]),
                                     lambda m: targets[m[1]:m[2]], blockwise.micro_batches([16], 4),
                                     RecoveryOptions("blockwise", steps=30), Job(on_event, token))
    assert {p.dtype for p in block.parameters()} == {torch.bfloat16}
    assert [p.requires_grad for p in block.parameters()] == [True, True, True, False]
