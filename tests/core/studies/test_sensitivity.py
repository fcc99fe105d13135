"""The sensitivity profile on a tiny model: restores bit for bit, agrees with the pruning pipeline restricted
to one layer, computes the fast error as defined, ranks like Spearman says, and refuses another model's profile."""

from __future__ import annotations

import math

import pytest
import torch

from core import workbench as wb
from core.errors import UserError
from core.evaluation.perplexity import evaluation_windows, perplexity
from core.events import Cancelled, Job, Phase, Recorder
from core.models.architectures import weight_matrix
from core.pruning.methods import wanda
from core.pruning.plan import PrunePlan
from core.pruning.stats import LayerStats
from core.studies.profile_file import load_profile, model_identity, save_profile
from core.studies.sensitivity import ProfileRequest, UnitProfiled, average_ranks, run_profile, spearman

SEQLEN, NSAMPLES, WINDOWS = 32, 4, 2


def state(loaded) -> dict:
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def opened(folder, text_file) -> wb.Workbench:
    bench = wb.Workbench(remember=False)
    wb.open_model(bench, wb.OpenRequest(str(folder)), Job())
    wb.calibrate(bench, wb.CalibrationRequest((str(text_file),), NSAMPLES, SEQLEN, seed=0), Job())
    return bench


def request(text_file, **kw) -> ProfileRequest:
    return ProfileRequest(**{"eval_path": str(text_file), "eval_windows": WINDOWS, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def measured(tiny_llama_folder, text_file):
    bench = opened(tiny_llama_folder, text_file)
    before = state(bench.loaded)
    recorder = Recorder()
    profile = run_profile(bench, request(text_file), Job(recorder))
    return bench, before, profile, recorder


def test_every_unit_is_restored_bit_for_bit_and_reported_as_it_finishes(measured):
    bench, before, profile, recorder = measured
    after = state(bench.loaded)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    events = recorder.of(UnitProfiled)
    assert [e.entry for e in events] == profile.entries and [e.done for e in events] == list(range(1, 15))
    assert len(profile.entries) == 14 and all(e.delta_ppl is not None for e in profile.entries)
    assert all(math.isclose(e.ppl - profile.dense_ppl, e.delta_ppl, rel_tol=1e-9, abs_tol=1e-9)
               for e in profile.entries)


def test_a_cancel_between_units_leaves_the_model_dense(tiny_llama_folder, text_file):
    bench = opened(tiny_llama_folder, text_file)
    before = state(bench.loaded)
    job = Job()

    done = []

    def cancel_inside_the_second_unit(event):    # while the second block is pruned and evaluated
        done.extend([1] if isinstance(event, UnitProfiled) else [])
        if done and isinstance(event, Phase) and event.name == "perplexity":
            job.cancel.cancel()
    job.on_event = cancel_inside_the_second_unit
    with pytest.raises(Cancelled):
        run_profile(bench, request(text_file, unit="block"), job)
    after = state(bench.loaded)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method, layer", [("wanda", "model.layers.1.mlp.up_proj"),
                                           ("sparsegpt", "model.layers.0.self_attn.o_proj")])
def test_a_units_delta_ppl_is_the_pipelines_with_every_other_layer_ignored(method, layer, measured, tiny_llama_folder,
                                                                          text_file):
    bench, _, profile, _ = measured
    if method != "wanda":
        profile = run_profile(bench, request(text_file, method=method), Job())
    entry = next(e for e in profile.entries if e.name == layer)
    others = [info.full_name for b in bench.loaded.layout.inventory for info in b.linears if info.full_name != layer]
    fresh = opened(tiny_llama_folder, text_file)
    wb.prune(fresh, PrunePlan.build(method=method, sparsity=0.5, ignore=tuple(others), device="cpu"), Job())
    windows = evaluation_windows(fresh.loaded.tokenizer, text_file, SEQLEN, WINDOWS)
    brute = perplexity(fresh.loaded.model, windows, device="cpu")
    assert entry.ppl == pytest.approx(brute.ppl, rel=1e-5)
    assert entry.delta_ppl == pytest.approx(brute.ppl - profile.dense_ppl, rel=1e-4, abs=1e-4)


def test_the_fast_error_is_the_relative_output_error_on_the_calibration_inputs(measured):
    bench, _, profile, _ = measured
    name = "model.layers.1.self_attn.v_proj"
    layer = bench.loaded.model.get_submodule(name)
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        bench.loaded.model(input_ids=bench.calib.input_ids, use_cache=False)
    handle.remove()
    x = torch.cat(seen).double()
    w = weight_matrix(layer).detach().double()
    stats = LayerStats(tokens=x.shape[0], column_sq_norms=(x * x).sum(0).float())
    pruned = wanda.prune(w.float(), stats, 0.5, PrunePlan().pattern).weight.double()
    direct = float(((x @ (w - pruned).t()) ** 2).sum() / ((x @ w.t()) ** 2).sum())
    entry = next(e for e in profile.entries if e.name == name)
    assert entry.error == pytest.approx(direct, rel=1e-4)
    assert 0 < entry.error < 1


def test_fast_mode_needs_no_evaluation_text_and_gives_the_same_errors(measured, text_file):
    bench, _, profile, _ = measured
    fast = run_profile(bench, ProfileRequest(fast=True, device="cpu"), Job())
    assert fast.dense_ppl is None and all(e.delta_ppl is None for e in fast.entries)
    assert [e.error for e in fast.entries] == pytest.approx([e.error for e in profile.entries], rel=1e-6)
    assert profile.spearman == pytest.approx(spearman([e.error for e in profile.entries],
                                                      [e.delta_ppl for e in profile.entries]))


def test_spearman_against_the_textbook_example_and_ties():
    # IQ against hours of television a week (the standard worked example): ρ = −29/165.
    iq = [106, 100, 86, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 27, 2, 50, 28, 29, 20, 12, 6, 17]
    assert spearman(iq, tv) == pytest.approx(-29 / 165)
    assert average_ranks([10, 20, 20, 30, 20]) == [1, 3, 3, 5, 3]
    a, b = [1, 2, 2, 3, 5, 5, 5, 8], [2, 1, 4, 4, 3, 9, 9, 7]
    scipy_stats = pytest.importorskip("scipy.stats")
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_a_profile_round_trips_and_another_models_is_refused(measured, tmp_path):
    bench, _, profile, _ = measured
    path = save_profile(profile, tmp_path / "p.json")
    again = load_profile(path, model_identity(bench.loaded))
    assert again.entries == profile.entries and again.dense_ppl == profile.dense_ppl
    assert again.block_scores() == profile.block_scores()
    other = model_identity(bench.loaded)
    other["layers"] = [[n, o, i * 2 if "down_proj" in n else i] for n, o, i in other["layers"]]
    with pytest.raises(UserError, match="does not match this model") as info:
        load_profile(path, other)
    assert "\n" not in str(info.value)
    (tmp_path / "bad.json").write_text("{\"format\": \"something else\"}")
    with pytest.raises(UserError, match="not a sensitivity profile"):
        load_profile(tmp_path / "bad.json")


def test_bad_requests_are_refused_in_one_line(measured, text_file):
    bench, _, _, _ = measured
    for bad, message in [(dict(unit="head"), "unknown unit"), (dict(sparsity=1.5), "outside"),
                         (dict(eval_windows=0), "at least one")]:
        with pytest.raises(UserError, match=message):
            run_profile(bench, request(text_file, **bad), Job())
    with pytest.raises(UserError, match="needs evaluation text"):
        run_profile(bench, ProfileRequest(), Job())
