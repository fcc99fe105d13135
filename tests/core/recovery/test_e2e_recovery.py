"""End-to-end recovery: the KL to the dense model falls, masks stay exact, a cancel restores the model."""

import pytest
import torch

from core import workbench as wb
from core.events import Cancelled, CancelToken, Job, RecoveryStep
from core.models.architectures import weight_matrix
from core.patterns import follows_pattern, TWO_FOUR
from core.pruning.plan import PrunePlan
from core.recovery.e2e import kl_per_token
from core.recovery.options import RecoveryOptions

E2E = RecoveryOptions("e2e", steps=8, learning_rate=1e-3, batch_windows=2)


def bench_with(folder, text_file):
    bench = wb.Workbench(remember=False)
    wb.open_model(bench, wb.OpenRequest(str(folder)))
    wb.calibrate(bench, wb.CalibrationRequest((str(text_file),), 6, 24))
    return bench


def test_kl_is_zero_for_equal_logits_and_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    assert float(kl_per_token(t, t)) == pytest.approx(0, abs=1e-6)
    p, logq = t.softmax(-1), s.log_softmax(-1)
    assert float(kl_per_token(s, t)) == pytest.approx(float((p * (p.log() - logq)).sum(-1).mean()), rel=1e-5)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_e2e_lowers_the_kl_and_keeps_every_mask(tiny_llama_folder, text_file, pattern, monkeypatch):
    from core.recovery import e2e

    masks = {}
    real = e2e.recover_model

    def spy(student, teacher, parameters, *args):        # the masks as pruning left them
        masks.update({id(p): p.detach() == 0 for p in parameters})
        return real(student, teacher, parameters, *args)

    monkeypatch.setattr(e2e, "recover_model", spy)
    bench = bench_with(tiny_llama_folder, text_file)
    record = wb.prune(bench, PrunePlan.build(method="wanda", pattern=pattern, recovery=E2E))
    [curve] = record.result.recovery
    assert curve.after < curve.before and curve.steps == E2E.steps
    assert len(masks) == len(record.result.layers)
    for layer in record.result.layers:
        weight = bench.loaded.model.get_submodule(layer.name).weight.detach()
        mask = masks[id(bench.loaded.model.get_submodule(layer.name).weight)]
        assert torch.equal(weight[mask], torch.zeros(int(mask.sum())))
        if pattern == "2:4":
            assert follows_pattern(weight_matrix(bench.loaded.model.get_submodule(layer.name)), TWO_FOUR)
    assert all(p.dtype == torch.float32 and p.grad is None for p in bench.loaded.model.parameters())


def test_a_cancel_during_e2e_recovery_leaves_the_dense_model(tiny_llama_folder, text_file):
    bench = bench_with(tiny_llama_folder, text_file)
    before = {k: v.clone() for k, v in bench.loaded.model.state_dict().items()}
    token = CancelToken()

    def on_event(event):
        if isinstance(event, RecoveryStep) and event.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        wb.prune(bench, PrunePlan.build(method="wanda", recovery=E2E), Job(on_event, token))
    after = bench.loaded.model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert bench.applied is None
