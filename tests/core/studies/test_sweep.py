"""The sparsity sweep on a tiny model: every point equals an independent run at its setting, bit for bit; the
saved files read back; a cancel keeps the finished points and leaves the dense weights; bad grids are refused."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET

import pytest
import torch

from core import workbench as wb
from core.cli.main import main as cli_main
from core.errors import UserError
from core.events import Cancelled, CancelToken, Job, LayerPruned, Recorder
from core.models.architectures import weight_matrix
from core.pruning.plan import PrunePlan
from core.studies.sweep import run_sweep
from core.studies.sweep_plot import curves, plot_sweep
from core.studies.sweep_points import DensePerplexity, MethodOptions, PointFinished, SweepPoint, SweepRequest, \
    load_sweep

SEQLEN, NSAMPLES, WINDOWS = 32, 4, 3


def request(folder, text_file, out=None, **kw) -> SweepRequest:
    fields = {"methods": ("wanda", "sparsegpt"), "sparsities": (0.6,), "patterns": ("2:4",), **kw}
    return SweepRequest(wb.OpenRequest(str(folder)), wb.CalibrationRequest((str(text_file),), NSAMPLES, SEQLEN, 0),
                        wb.EvaluationRequest(str(text_file), SEQLEN, WINDOWS), options=MethodOptions(device="cpu"),
                        out=None if out is None else str(out), **fields)


def weights(loaded) -> dict:
    return {info.full_name: weight_matrix(loaded.model.get_submodule(info.full_name)).detach().clone()
            for block in loaded.layout.inventory for info in block.linears}


@pytest.fixture(scope="module")
def swept(tiny_llama_folder, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    recorder = Recorder()
    seen = []
    result = run_sweep(request(tiny_llama_folder, text_file, out), Job(recorder), on_point=seen.append)
    return result, recorder, seen, out


def test_the_grid_runs_nm_patterns_at_their_own_sparsity_and_the_sparsities_unstructured(tiny_llama_folder, text_file):
    points = request(tiny_llama_folder, text_file, sparsities=(0.3, 0.6, 0.3), patterns=("2:4", "4:8")).points()
    assert points == [SweepPoint(m, p, s) for m in ("wanda", "sparsegpt")
                      for p, s in (("unstructured", 0.3), ("unstructured", 0.6), ("2:4", 0.5), ("4:8", 0.5))]
    only_nm = request(tiny_llama_folder, text_file, sparsities=(), patterns=("2:4",)).points()
    assert only_nm == [SweepPoint("wanda", "2:4", 0.5), SweepPoint("sparsegpt", "2:4", 0.5)]


def test_every_point_equals_an_independent_run_at_its_setting(swept, tiny_llama_folder, text_file):
    result, _, _, _ = swept
    assert [p.point for p in result.points] == request(tiny_llama_folder, text_file).points()
    for point in (result.points[0], result.points[-1]):       # wanda 60% and sparsegpt 2:4 (the CLI test: wanda 2:4)
        bench = wb.Workbench(remember=False)
        wb.open_model(bench, wb.OpenRequest(str(tiny_llama_folder)))
        wb.calibrate(bench, wb.CalibrationRequest((str(text_file),), NSAMPLES, SEQLEN, 0))
        evaluation = wb.EvaluationRequest(str(text_file), SEQLEN, WINDOWS)
        dense = wb.evaluate(bench, evaluation).dense
        record = wb.prune(bench, PrunePlan.build(method=point.method, sparsity=point.target_sparsity,
                                                 pattern=point.pattern, device="cpu"))
        pruned = wb.evaluate(bench, evaluation).pruned
        assert (point.ppl, point.nll, point.sparsity) == (pruned.ppl, pruned.nll, record.result.sparsity)
        assert result.ppl_dense == dense.ppl
        assert point.parameters["method"] == point.method and point.parameters["pattern"] == point.pattern


def test_a_point_equals_the_cli_prune_with_eval(swept, tiny_llama_folder, text_file, tmp_path, capsys):
    point = next(p for p in swept[0].points if p.method == "wanda" and p.pattern == "2:4")
    code = cli_main(["prune", str(tiny_llama_folder), "--calib", str(text_file), "--nsamples", str(NSAMPLES),
                      "--seqlen", str(SEQLEN), "--method", "wanda", "--pattern", "2:4", "--device", "cpu",
                      "--eval", str(text_file), "--eval-windows", str(WINDOWS), "--out", str(tmp_path / "m"),
                      "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (printed["ppl"], printed["ppl_dense"], printed["sparsity"]) == (point.ppl, swept[0].ppl_dense,
                                                                           point.sparsity)


def test_progress_events_count_the_points_and_the_eta_runs_out(swept):
    result, recorder, seen, _ = swept
    events = recorder.of(PointFinished)
    assert events == seen == result.points
    assert [(e.done, e.total) for e in events] == [(i + 1, 4) for i in range(4)]
    assert all(e.eta_seconds > 0 for e in events[:-1]) and events[-1].eta_seconds is None
    assert [d.ppl for d in recorder.of(DensePerplexity)] == [result.ppl_dense]


def test_the_saved_json_and_csv_read_back(swept):
    result, _, _, out = swept
    loaded = load_sweep(out)
    assert loaded.status == "finished" and loaded.points == [PointFinished.from_row(p.row()) for p in result.points]
    assert loaded.dense == result.dense and loaded.calibration["nsamples"] == NSAMPLES
    rows = list(csv.DictReader(io.StringIO((out / "sweep.csv").read_text())))
    assert [(r["method"], r["pattern"], float(r["ppl"]), float(r["ppl_dense"])) for r in rows] == \
        [(p.method, p.pattern, p.ppl, result.ppl_dense) for p in result.points]
    assert all(json.loads(r["parameters"]) == p.parameters for r, p in zip(rows, result.points))
    assert rows[0]["evaluation_sha256"] == loaded.evaluation["sha256"] and len(rows[0]["calibration_sha256"]) == 64


def test_the_chart_has_one_curve_per_method_and_pattern(swept, tmp_path):
    result = swept[0]
    found = curves(result)
    assert set(found) == {"wanda", "sparsegpt", "wanda 2:4", "sparsegpt 2:4"}
    assert found["wanda"] == [(p.sparsity, p.ppl) for p in result.points if p.point.curve == "wanda"]
    png = plot_sweep(result, tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = ET.parse(plot_sweep(result, tmp_path / "chart.svg")).getroot()
    assert svg.tag.endswith("svg")
    with pytest.raises(UserError, match="PNG or SVG"):
        plot_sweep(result, tmp_path / "chart.jpg")


@pytest.mark.parametrize("where", ["between points", "inside the second point"])
def test_cancel_keeps_the_finished_point_and_the_dense_weights(tiny_llama_folder, text_file, tmp_path, where):
    bench = wb.Workbench(remember=True)
    wb.open_model(bench, wb.OpenRequest(str(tiny_llama_folder)))
    before = weights(bench.loaded)
    token, finished = CancelToken(), []

    def on_event(event):
        if where == "inside the second point" and finished and isinstance(event, LayerPruned):
            token.cancel()

    def on_point(point):
        finished.append(point)
        if where == "between points":
            token.cancel()

    with pytest.raises(Cancelled):
        run_sweep(request(tiny_llama_folder, text_file, tmp_path / "out"), Job(on_event, token), on_point, bench)
    saved = load_sweep(tmp_path / "out")
    assert saved.status == "cancelled" and saved.points == finished and len(finished) == 1
    after = weights(bench.loaded)
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert bench.applied is None and not bench.pruning and bench.runs == []


@pytest.mark.parametrize("fields, message", [
    ({"methods": ()}, "no methods"),
    ({"sparsities": (), "patterns": ("unstructured",)}, "no points"),
    ({"sparsities": (1.0,)}, r"outside \[0, 1\)"),
    ({"sparsities": (-0.1,)}, r"outside \[0, 1\)"),
    ({"sparsities": (float("nan"),)}, r"outside \[0, 1\)"),
    ({"methods": ("obs",)}, "unknown method"),
    ({"patterns": ("3:2",)}, "."),
    ({"patterns": ("diagonal",)}, "unknown pattern"),
    ({"methods": ("alps",), "patterns": ("rows",)}, "not supported yet for ALPS"),
])
def test_bad_grids_are_refused_in_one_line(tiny_llama_folder, text_file, fields, message):
    with pytest.raises(UserError, match=message) as caught:
        run_sweep(request(tiny_llama_folder, text_file, **fields))
    assert "\n" not in str(caught.value)


def test_the_cli_sweep_prints_a_table_and_refuses_bad_input_with_status_2(tiny_llama_folder, text_file, tmp_path,
                                                                         capsys):
    base = ["sweep", str(tiny_llama_folder), "--calib", str(text_file), "--eval", str(text_file), "--nsamples", "4",
            "--seqlen", "32", "--eval-windows", "2", "--device", "cpu", "--out", str(tmp_path / "out")]
    assert cli_main([*base, "--methods", "magnitude", "--sparsities", "0.4", "0.8", "--plot",
                      str(tmp_path / "c.svg")]) == 0
    table = capsys.readouterr().out
    assert "magnitude" in table and "80.0%" in table and (tmp_path / "c.svg").is_file()
    assert len(load_sweep(tmp_path / "out").points) == 2
    for bad in (["--sparsities", "1.5"], ["--sparsities"], ["--sparsities", "0.5", "--plot", "c.jpg"],
                ["--sparsities", "0.5", "--ray", "127.0.0.1:1"]):
        assert cli_main([*base, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err
