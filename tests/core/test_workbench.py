"""The workbench's jobs without any window: each driven with a recording job context, as the studio's
controller and the command line drive them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core import workbench as wb
from core.cli import main
from core.errors import UserError
from core.evaluation.perplexity import evaluation_windows, perplexity
from core.events import BlockStarted, Cancelled, CancelToken, Job, LayerPruned, Phase, Recorder
from core.formats.names import REPORT
from core.models.architectures import weight_matrix
from core.pruning.plan import PrunePlan
from tests.tiny_models import sample_text


def weights(loaded) -> dict:
    return {info.full_name: weight_matrix(loaded.model.get_submodule(info.full_name)).detach().clone()
            for block in loaded.layout.inventory for info in block.linears}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def calib_request(text_file) -> wb.CalibrationRequest:
    return wb.CalibrationRequest((str(text_file),), nsamples=4, seqlen=32, seed=0)


@pytest.fixture
def bench(tiny_llama_folder, calib_request) -> wb.Workbench:
    bench = wb.Workbench(remember=True)
    wb.open_model(bench, wb.OpenRequest(str(tiny_llama_folder)), Job())
    wb.calibrate(bench, calib_request, Job())
    return bench


def without_durations(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    report.pop("durations_seconds")
    report["pruning"].pop("seconds")
    for layer in report["pruning"]["layers"]:
        layer.pop("seconds")
    return report


def test_the_cli_and_the_workbench_write_the_same_report_for_the_same_plan(tiny_llama_folder, text_file, calib_request,
                                                                         tmp_path, capsys):
    """One place builds sparsity.json: the CLI's run and a studio-style session (dense snapshot kept,
    calibrated, evaluated, exported) give the same report and weights, durations aside."""
    argv = ["prune", str(tiny_llama_folder), "--calib", str(text_file), "--nsamples", "4", "--seqlen", "32",
            "--method", "sparsegpt", "--pattern", "2:4", "--device", "cpu", "--eval", str(text_file),
            "--eval-windows", "3", "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    capsys.readouterr()
    bench = wb.Workbench(remember=True)
    wb.open_model(bench, wb.OpenRequest(str(tiny_llama_folder)), Job())
    wb.calibrate(bench, calib_request, Job())
    plan = PrunePlan.build(method="sparsegpt", pattern="2:4", device="cpu")
    evaluation = wb.EvaluationRequest(str(text_file), 32, 3)
    wb.evaluate(bench, evaluation, Job())
    wb.prune(bench, plan, Job())
    wb.evaluate(bench, evaluation, Job())
    done = wb.export_run(bench, wb.ExportRequest(str(tmp_path / "studio")), Job())
    cli = json.loads((tmp_path / "cli" / REPORT).read_text())
    studio = json.loads((done.path / REPORT).read_text())
    assert studio["perplexity"]["pruned"]["ppl"] > studio["perplexity"]["dense"]["ppl"] > 1
    assert without_durations(cli) == without_durations(studio)
    assert set(cli["durations_seconds"]) == set(studio["durations_seconds"])
    from safetensors.torch import load_file
    assert same(load_file(tmp_path / "cli" / "model.safetensors"), load_file(done.path / "model.safetensors"))


def test_every_run_starts_from_the_dense_model_and_keeps_its_masks(bench):
    dense = weights(bench.loaded)
    first = wb.prune(bench, PrunePlan.build(method="magnitude", sparsity=0.3, device="cpu"), Job())
    after_first = weights(bench.loaded)
    second = wb.prune(bench, PrunePlan.build(method="magnitude", sparsity=0.3, device="cpu"), Job())
    assert same(weights(bench.loaded), after_first)           # the same plan from the same dense model
    assert [r.number for r in bench.runs] == [1, 2] and bench.applied is second
    for name, weight in after_first.items():
        assert torch.equal(torch.from_numpy(first.masks[name].unpack()), weight == 0)
    wb.restore_dense(bench, Job())
    assert bench.applied is None and same(weights(bench.loaded), dense)


def test_layer_events_carry_the_view_the_studio_draws(bench):
    events = Recorder()
    record = wb.prune(bench, PrunePlan.build(method="wanda", device="cpu"), Job(events))
    pruned = events.of(LayerPruned)
    assert len(pruned) == 14 and all(e.summary is record.layer_views[e.result.name] for e in pruned)
    view = wb.layer_view(bench, pruned[0].result.name, 0.5, Job())
    assert view.pruned and view.summary.heatmap.mean() == pytest.approx(0.5, abs=1e-6)


def test_a_cancelled_run_leaves_the_dense_model_and_no_run(bench):
    dense = weights(bench.loaded)
    token = CancelToken()
    job = Job(lambda e: token.cancel() if isinstance(e, BlockStarted) and e.index == 1 else None, token)
    with pytest.raises(Cancelled):
        wb.prune(bench, PrunePlan.build(method="sparsegpt", device="cpu"), job)
    assert same(weights(bench.loaded), dense) and bench.runs == [] and bench.applied is None
    assert not bench.pruning
    assert wb.prune(bench, PrunePlan.build(method="wanda", device="cpu"), Job()).number == 1   # still usable


def test_evaluation_measures_dense_once_and_the_applied_run(bench, text_file):
    request = wb.EvaluationRequest(str(text_file), 32, 2)
    first = wb.evaluate(bench, request, Job())
    assert first.pruned is None and first.record is None
    record = wb.prune(bench, PrunePlan.build(method="magnitude", sparsity=0.6, device="cpu"), Job())
    before = weights(bench.loaded)
    events = Recorder()
    second = wb.evaluate(bench, request, Job(events))
    assert second.dense is first.dense                      # cached: one pass, over the pruned model only
    assert len([e for e in events.of(Phase) if e.done == 0]) == 1
    windows = evaluation_windows(bench.loaded.tokenizer, text_file, 32, 2)
    assert second.pruned.ppl == pytest.approx(perplexity(bench.loaded.model, windows, device="cpu").ppl, rel=1e-9)
    assert second.pruned.ppl != second.dense.ppl and record.ppl is second.pruned
    assert same(weights(bench.loaded), before)              # the pruned weights are still in place
    bench.dense_ppl.clear()
    third = wb.evaluate(bench, request, Job())              # dense measured with the run applied: swapped in and out
    assert third.dense.ppl == pytest.approx(first.dense.ppl, rel=1e-6) and same(weights(bench.loaded), before)


def test_opening_calibrating_and_exporting_can_be_cancelled(tiny_llama_folder, bench, calib_request, tmp_path):
    cancelled = CancelToken()
    cancelled.cancel()
    with pytest.raises(Cancelled):
        wb.open_model(wb.Workbench(), wb.OpenRequest(str(tiny_llama_folder)), Job(cancel=cancelled))
    other = wb.CalibrationRequest(calib_request.files, nsamples=5, seqlen=32)
    with pytest.raises(Cancelled):
        wb.calibrate(bench, other, Job(cancel=cancelled))
    assert bench.calib_request == calib_request              # the calibration loaded before stays
    wb.prune(bench, PrunePlan.build(method="wanda", device="cpu"), Job())
    token = CancelToken()
    job = Job(lambda e: token.cancel() if isinstance(e, Phase) and e.name == "export" else None, token)
    with pytest.raises(Cancelled):
        wb.export_run(bench, wb.ExportRequest(str(tmp_path / "out")), job)
    assert list(tmp_path.iterdir()) == []                    # no folder, no partial leftovers


def test_bad_requests_are_user_errors_before_any_work(bench, tiny_llama_folder, tmp_path):
    empty = wb.Workbench()
    with pytest.raises(UserError, match="Open a model first"):
        wb.prune(empty, PrunePlan.build(), Job())
    with pytest.raises(UserError, match="Nothing to export yet"):
        wb.export_run(bench, wb.ExportRequest(str(tmp_path / "x")), Job())
    wb.prune(bench, PrunePlan.build(method="magnitude", device="cpu"), Job())
    with pytest.raises(UserError, match="2:4 weights only"):
        wb.export_run(bench, wb.ExportRequest(str(tmp_path / "x"), format="compact"), Job())
    assert not wb.can_export(bench, "compact") and wb.can_export(bench, "hf")
    with pytest.raises(UserError, match="different runs"):
        wb.compare_runs(bench, 1, 1, None, Job())
    with pytest.raises(UserError, match="no run 7"):
        wb.compare_runs(bench, 1, 7, None, Job())
    with pytest.raises(UserError, match="streaming needs a model folder"):
        wb.open_model(wb.Workbench(), wb.OpenRequest(str(tmp_path / "nothing"), stream=True), Job())
    assert not (tmp_path / "x").exists()


def test_a_session_that_remembers_nothing_cannot_undo(tiny_llama_folder, calib_request, text_file):
    bench = wb.Workbench(remember=False)
    wb.open_model(bench, wb.OpenRequest(str(tiny_llama_folder)), Job())
    wb.calibrate(bench, calib_request, Job())
    record = wb.prune(bench, PrunePlan.build(method="wanda", device="cpu"), Job())
    assert bench.dense is None and record.masks == {} and record.layer_views == {} and bench.runs == []
    with pytest.raises(UserError, match="keeps no dense copy"):
        wb.prune(bench, PrunePlan.build(method="wanda", device="cpu"), Job())
    with pytest.raises(UserError, match="before pruning"):
        wb.evaluate(bench, wb.EvaluationRequest(str(text_file), 32, 1), Job())


def test_a_streamed_session_prunes_into_its_export(tiny_llama_folder, calib_request, tmp_path):
    bench = wb.Workbench(remember=False)
    wb.open_model(bench, wb.OpenRequest(str(tiny_llama_folder), stream=True), Job())
    wb.calibrate(bench, calib_request, Job())
    plan = PrunePlan.build(method="wanda", device="cpu")
    with pytest.raises(UserError, match="straight into its export"):
        wb.prune(bench, plan, Job())
    record = wb.prune(bench, plan, Job(), export=wb.ExportRequest(str(tmp_path / "out")))
    report = json.loads((record.exported / REPORT).read_text())
    assert record.exported == (tmp_path / "out").resolve() and report["pruning"]["method"] == "wanda"
    assert report["calibration"]["nsamples"] == 4 and "total" in report["durations_seconds"]
    with pytest.raises(UserError, match="cannot be evaluated here"):
        wb.evaluate(bench, wb.EvaluationRequest(str(tmp_path / "x.txt")), Job())


def test_a_dense_tile_scores_weights_by_magnitude_and_views_are_cached(bench):
    name = "model.layers.0.mlp.up_proj"
    tile = wb.layer_tile(bench, name, (0, 8), (0, 8), Job())
    assert tile.scores is not None and torch.allclose(torch.from_numpy(tile.scores), torch.from_numpy(tile.before).abs())
    view = wb.layer_view(bench, name, 0.5, Job())
    assert not view.pruned and wb.layer_view(bench, name, 0.5, Job()) is view


def test_calibration_is_not_redone_for_the_same_request(bench, calib_request):
    first = bench.calib
    events = Recorder()
    assert wb.calibrate(bench, calib_request, Job(events)) is first
    assert [type(e) for e in events.events] == [wb.Calibrated]


def test_text_written_by_the_test_is_enough_for_a_session(tmp_path):
    """The workbench needs nothing but files: a tiny folder and a text file the test writes."""
    from tests.tiny_models import tiny_model_folder

    folder = tiny_model_folder("llama", tmp_path / "m")
    text = tmp_path / "t.txt"
    text.write_text(sample_text())
    bench = wb.Workbench()
    loaded = wb.open_model(bench, wb.OpenRequest(str(folder)), Job())
    calib = wb.calibrate(bench, wb.CalibrationRequest((str(text),), 2, 16), Job())
    assert loaded is bench.loaded and tuple(calib.input_ids.shape) == (2, 16) and Path(calib.files[0].path) == text
