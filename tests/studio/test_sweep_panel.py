"""The Sweep tab on the tiny Llama: the chart's curves and the table get the points' values as they come, the
chart and results export through core, and a cancelled sweep keeps its finished points with the model dense."""

from __future__ import annotations

import csv
import math

import pytest

pytest.importorskip("pytestqt")

pytestmark = pytest.mark.qt_log_ignore(r"^This plugin does not support propagateSizeHints\(\)$")

WAIT = 120_000


def _open(qtbot, window, folder, text):
    with qtbot.waitSignal(window.controller.model_opened, timeout=WAIT):
        window.open_model(str(folder))
    window.calibration_panel.add_files([str(text)])
    window.calibration_panel.nsamples.setValue(4)
    window.calibration_panel.seqlen.setValue(32)
    panel = window.sweep_panel
    for name, box in panel.methods.items():
        box.setChecked(name in ("magnitude", "wanda"))
    panel.sparsities.setText("0.3, 0.6")
    panel.patterns.setText("unstructured")
    panel.eval_path.setText(str(text))
    panel.windows.setValue(2)
    return panel


def test_a_sweep_fills_the_chart_and_table_and_exports(qtbot, studio_window, studio_tiny_llama, studio_calib_text,
                                                       tmp_path):
    window = studio_window
    panel = _open(qtbot, window, studio_tiny_llama, studio_calib_text)
    seen = []
    window.controller.sweep_point.connect(lambda p: seen.append(len(panel.chart.values.get(p.point.curve, []))))
    with qtbot.waitSignal(window.controller.sweep_finished, timeout=WAIT) as blocker:
        panel.start_button.click()
    result = blocker.args[0]
    assert [(p.method, p.target_sparsity) for p in result.points] == \
        [("magnitude", 0.3), ("magnitude", 0.6), ("wanda", 0.3), ("wanda", 0.6)]
    assert seen == [1, 2, 1, 2]                         # each point on its curve as it came
    for method in ("magnitude", "wanda"):
        mine = sorted((100 * p.sparsity, p.ppl) for p in result.points if p.method == method)
        assert panel.chart.values[method] == mine
        xs, ys = panel.chart.curves[method].getData()
        assert list(xs) == pytest.approx([x for x, _ in mine])
        assert list(ys) == pytest.approx([y for _, y in mine]) or \
            list(ys) == pytest.approx([math.log10(y) for _, y in mine])
    assert panel.chart.dense.value() == pytest.approx(math.log10(result.ppl_dense))
    assert panel.table.rowCount() == 4 and panel.table.item(3, 4).text() == f"{result.points[3].ppl:.3f}"
    assert "dense again" in panel.status.text() and panel.start_button.isEnabled()

    panel.export_chart(str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"
    panel.save_results(str(tmp_path / "points.csv"))
    rows = list(csv.DictReader((tmp_path / "points.csv").open()))
    assert [float(r["ppl"]) for r in rows] == [p.ppl for p in result.points]


def test_a_cancelled_sweep_keeps_its_points_and_the_dense_model(qtbot, studio_window, studio_tiny_llama,
                                                               studio_calib_text, tmp_path):
    import torch

    window = studio_window
    panel = _open(qtbot, window, studio_tiny_llama, studio_calib_text)
    c = window.controller
    model = c.loaded.model
    dense = {name: p.detach().clone() for name, p in model.named_parameters()}
    c.sweep_point.connect(lambda p: c.cancel_sweep())
    with qtbot.waitSignal(c.sweep_finished, timeout=WAIT) as blocker:
        panel.start_button.click()
    assert blocker.args == [None]
    assert len(panel.points) == 1 and panel.table.rowCount() == 1
    assert panel.chart.values == {"magnitude": [(100 * panel.points[0].sparsity, panel.points[0].ppl)]}
    assert "stopped after 1 of 4 points" in panel.status.text()
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), dense[name]), name
    assert c.bench.applied is None and not c.running and panel.start_button.isEnabled()
    panel.save_results(str(tmp_path / "kept.json"))
    from core.studies.sweep_points import load_sweep

    kept = load_sweep(tmp_path / "kept.json")
    assert kept.status == "cancelled" and kept.points == panel.points


def test_bad_choices_are_said_in_the_panel(qtbot, studio_window, studio_tiny_llama, studio_calib_text):
    window = studio_window
    panel = _open(qtbot, window, studio_tiny_llama, studio_calib_text)
    for text, expected in (("0.5 abc", "type fractions"), ("1.5", "outside [0, 1)"), ("", "no points")):
        panel.sparsities.setText(text)
        panel.start_button.click()
        assert expected in panel.status.text() and not window.controller.running
