"""Quantization in the studio: the Quantize section of the Prune panel and the plans it builds, the
quantization error in the layer table, the code histogram, the quantize step in the progress bar, the
export dialog's formats and its size chart, on the tiny Llama."""

from __future__ import annotations

import re

import numpy as np
import pytest

from core.errors import UserError
from core.events import BlockStarted, Phase
from core.quantization.scheme import QuantScheme

pytest.importorskip("pytestqt")

pytestmark = pytest.mark.qt_log_ignore(r"^This plugin does not support propagateSizeHints\(\)$")

WAIT = 60_000
FIRST = "model.layers.0.self_attn.q_proj"


@pytest.fixture
def panel(qtbot):
    from studio.run_panel import RunPanel

    panel = RunPanel()
    qtbot.addWidget(panel)
    panel.show()
    return panel


def choose(combo, value) -> None:
    index = combo.findData(value)
    assert index >= 0, value
    combo.setCurrentIndex(index)


def plan_of(panel):
    from core.pruning.plan import PrunePlan

    return PrunePlan.build(**panel.plan_options())


def quantize(panel, bits, group=None, symmetric=True, method="gptq", act_order=False, joint=False) -> None:
    q = panel.quantize
    choose(q.bits, bits)
    q.group_size.setCurrentText(group)
    choose(q.symmetric, symmetric)
    choose(q.method, method)
    q.act_order.setChecked(act_order)
    q.joint.setChecked(joint)


# ---------------------------------------------------------------- the panel


def test_each_quantize_choice_reaches_the_plan(qtbot, panel, studio_settings):
    from studio.run_panel import RunPanel

    q = panel.quantize
    assert q.bits.currentText() == "off" and plan_of(panel).quantization is None
    assert not q.group_size.isVisible() and not q.method.isVisible()            # details only while quantizing
    quantize(panel, 4, "64", symmetric=False, method="rtn")
    assert q.group_size.isVisible() and q.method.isVisible()
    assert not q.act_order.isEnabled()                                           # round to nearest has no order
    plan = plan_of(panel)
    assert plan.method == "wanda" and plan.sparsity == 0.5
    assert plan.quantization == QuantScheme(bits=4, symmetric=False, group_size=64, method="rtn")
    quantize(panel, 8, "per channel", act_order=True)
    assert plan_of(panel).quantization == QuantScheme(bits=8, group_size=0, act_order=True)
    quantize(panel, 4, "auto")
    assert plan_of(panel).quantization == QuantScheme(bits=4, group_size=None)
    q.group_size.setCurrentText("256")                                          # typed: any multiple of 8
    assert plan_of(panel).quantization.group_size == 256
    q.group_size.lineEdit().clear()
    qtbot.keyClicks(q.group_size.lineEdit(), "12x")                              # the field takes digits only
    assert q.group_size.currentText() == "12" and q.group_value() == 12
    with pytest.raises(UserError, match="group size 12 must be a positive multiple of 8"):
        plan_of(panel)
    q.group_size.setCurrentIndex(q.group_size.findText("64"))
    panel.method.setCurrentText("sparsegpt")
    panel.dampening.setValue(0.05)                                              # GPTQ shares SparseGPT's, as the CLI
    assert plan_of(panel).quantization.dampening == pytest.approx(0.05)
    panel.method.setCurrentText("wanda")
    assert plan_of(panel).quantization.dampening == QuantScheme.dampening

    quantize(panel, 8, "32", symmetric=False, method="gptq", act_order=True)
    studio_settings.setValue("run/last", panel.state())                          # an INI file gives back strings
    studio_settings.sync()
    again = RunPanel()
    again.restore_state(studio_settings.value("run/last"))
    assert again.plan_options() == panel.plan_options()
    assert again.plan_options()["quantization"] == QuantScheme(bits=8, symmetric=False, group_size=32, act_order=True)
    again.deleteLater()


def test_method_none_quantizes_only(panel):
    q = panel.quantize
    panel.pattern.setCurrentText("2:4")
    panel.overrides.setPlainText("*mlp* = 0.3")
    assert q.bits.currentText() == "off" and panel.pattern.isEnabled()
    panel.method.setCurrentText("none")
    assert q.bits.currentText() == "int4" and not q.bits.model().item(0).isEnabled()   # off cannot be chosen
    assert not panel.pattern.isEnabled() and not panel.sparsity.isEnabled() and not panel.overrides.isEnabled()
    assert not panel.allocation.isEnabled()
    plan = plan_of(panel)
    assert plan.method == "none" and plan.sparsity == 0 and str(plan.pattern) == "unstructured"
    assert plan.overrides == () and plan.quantization == QuantScheme(bits=4)
    panel.method.setCurrentText("wanda")                     # leaving none undoes what none chose
    assert q.bits.currentText() == "off" and panel.pattern.isEnabled() and panel.sparsity.isEnabled() is False
    panel.pattern.setCurrentText("unstructured")
    assert panel.sparsity.isEnabled()
    panel.method.setCurrentText("none")
    choose(q.bits, 8)                                        # ... but not what the user chose
    panel.method.setCurrentText("magnitude")
    assert q.bits.currentText() == "int8" and q.bits.model().item(0).isEnabled()


def test_the_joint_pass_is_offered_with_sparsegpt_only(panel):
    q = panel.quantize
    choose(q.bits, 4)
    for method in ("wanda", "magnitude", "alps", "none"):
        panel.method.setCurrentText(method)
        assert not q.joint.isEnabled(), method
    q.joint.setChecked(True)                                 # ticked, but not offered: not in the plan
    assert plan_of(panel).quantization.joint is False
    panel.method.setCurrentText("sparsegpt")
    assert q.joint.isEnabled() and plan_of(panel).quantization.joint is True
    assert not q.act_order.isEnabled()                       # the joint pass has SparseGPT's column order
    q.joint.setChecked(False)
    q.act_order.setChecked(True)
    assert not q.joint.isEnabled() and plan_of(panel).quantization.act_order is True
    q.act_order.setChecked(False)
    choose(q.method, "rtn")
    assert not q.joint.isEnabled() and not q.act_order.isEnabled()


# ---------------------------------------------------------------- a run in the window


def open_and_calibrate(qtbot, window, model, text):
    with qtbot.waitSignal(window.controller.model_opened, timeout=WAIT):
        window.open_model(str(model))
    panel = window.calibration_panel
    panel.add_files([str(text)])
    panel.nsamples.setValue(4)
    panel.seqlen.setValue(32)
    window.run_panel.device.setCurrentIndex(window.run_panel.device.findData("cpu"))


def run(qtbot, window, method="wanda", pattern="unstructured", bits=None, **options):
    panel = window.run_panel
    panel.method.setCurrentText(method)
    panel.pattern.setCurrentText(pattern)
    panel.sparsity.setValue(0.5)
    if bits is not None or method != "none":
        quantize(panel, bits, options.pop("group", "auto"), **options)
    with qtbot.waitSignal(window.controller.run_finished, timeout=WAIT) as blocker:
        window.start_run()
    return blocker.args[0]


def select(qtbot, window, name):
    with qtbot.waitSignal(window.controller.layer_view_ready, timeout=WAIT,
                          check_params_cb=lambda view: view.name == name) as blocker:
        window.layer_tree.select(name)
        if window.selected_layer == name:
            window.select_layer(name)
    view = blocker.args[0]
    qtbot.waitUntil(lambda: window.histograms.view is view, timeout=WAIT)
    qtbot.wait(10)
    return view


def test_a_bad_combination_shows_the_engine_message(qtbot, studio_window, studio_tiny_llama, studio_calib_text):
    from core.pruning.plan import PrunePlan

    window = studio_window
    open_and_calibrate(qtbot, window, studio_tiny_llama, studio_calib_text)
    quantize(window.run_panel, 4)
    window.run_panel.recovery.setCurrentIndex(window.run_panel.recovery.findData("e2e"))
    for group, problem in ((None, "end-to-end recovery"), ("20", "group size 20")):
        if group:
            window.run_panel.recovery.setCurrentIndex(0)
            window.run_panel.quantize.group_size.setCurrentText(group)
        with pytest.raises(UserError) as expected:
            PrunePlan.build(**window.run_panel.plan_options())
        with qtbot.waitSignal(window.controller.error, timeout=WAIT) as blocker:
            window.start_run()
        assert blocker.args[0] == str(expected.value) and problem in blocker.args[0]
        assert window.message_bar.isVisible() and problem in window.message_bar.text.text()
        assert window.run_panel.run_button.isEnabled() and not window.controller.running


def test_a_quantized_run_shows_its_quantization_error_and_codes(qtbot, studio_window, studio_tiny_llama,
                                                                studio_calib_text):
    from studio.layer_tree import ERROR, QUANT_ERROR

    window, tree = studio_window, studio_window.layer_tree
    open_and_calibrate(qtbot, window, studio_tiny_llama, studio_calib_text)
    plain = run(qtbot, window, "wanda")
    assert not plain.plan.quantizing and tree.tree.isColumnHidden(QUANT_ERROR)   # no column for pruning alone
    select(qtbot, window, FIRST)
    assert not window.histograms.codes_plot.isVisible()

    record = run(qtbot, window, "wanda", bits=4, group="32")
    assert record.plan.quantization == QuantScheme(bits=4, group_size=32)
    assert not tree.tree.isColumnHidden(QUANT_ERROR)
    for layer in record.result.layers:
        item = tree.items[layer.name]
        text = item.text(QUANT_ERROR)
        assert layer.quant_error is not None and 0 < layer.quant_error < layer.error
        assert re.fullmatch(r"\d\.\de[+-]\d\d", text) and float(text) == pytest.approx(layer.quant_error, rel=0.05)
        assert "int4 grid (symmetric, groups of 32)" in item.toolTip(QUANT_ERROR)
        assert tree.tree.fontMetrics().horizontalAdvance(text) < tree.tree.columnWidth(QUANT_ERROR)
        assert item.text(ERROR) != text                       # the two columns say different things
    assert tree.tree.header().length() <= tree.tree.viewport().width()
    assert f"{FIRST}: 50.0% zeros" in window.progress_panel.log.toPlainText()
    assert re.search(re.escape(FIRST) + r": .*\(quantization \d", window.progress_panel.log.toPlainText())
    assert "layers quantized" in window.progress_panel.bar.format()
    from studio.history_table import column
    assert window.history.table.item(1, column("Method")).text() == "wanda + int4"

    view = select(qtbot, window, FIRST)
    codes, plot = view.summary.codes, window.histograms.codes_plot
    assert codes is not None and plot.isVisible() and window.histograms.scores_plot.isVisible()
    bars = window.histograms.code_bars.opts
    assert list(bars["x"]) == list(range(-8, 8))             # one bar per level of the symmetric int4 grid
    assert np.allclose(bars["height"], np.log10(np.maximum(codes.counts, 1)))
    assert plot.getPlotItem().titleLabel.text == "int4 codes"
    assert plot.getAxis("bottom").labelText == "level (16 levels)"
    ticks = sorted(value for level in plot.getAxis("bottom")._tickLevels for value, _ in level)
    assert ticks == list(range(-8, 8))                       # a tick per level; -8, -4, 0, 4 always labelled
    assert [label for _, label in plot.getAxis("bottom")._tickLevels[0]] == ["-8", "-4", "0", "4"]
    window.histograms.log_y.setChecked(False)
    assert np.allclose(window.histograms.code_bars.opts["height"], codes.counts)

    only = run(qtbot, window, "none", bits=8, symmetric=False)
    assert only.plan.method == "none" and only.plan.sparsity == 0 and len(only.result.quantized) == 14
    assert only.sparsity < 0.05                              # only the weights that rounded to zero
    view = select(qtbot, window, FIRST)
    assert window.histograms.codes_plot.getAxis("bottom").labelText == "level (256 levels)"
    assert len(window.histograms.code_bars.opts["x"]) == 256 and window.histograms.code_bars.opts["x"][0] == -128
    assert not window.histograms.scores_plot.isVisible()     # nothing was ranked: the codes take its place
    assert window.progress_panel.bar.format() == "done: run 3, 14 layers quantized"
    assert window.history.table.item(2, column("Method")).text() == "int8 only"


def test_the_progress_bar_names_the_quantize_step(qtbot):
    from studio.progress_panel import ProgressPanel

    panel = ProgressPanel()
    qtbot.addWidget(panel)
    panel.begin("wanda unstructured at 50% + int4 GPTQ")
    panel.on_event(BlockStarted(0, 2))
    panel.on_event(Phase("prune", 0, 7, "model.layers.0.self_attn.q_proj"))
    assert panel.bar.format() == "block 1 of 2"
    panel.on_event(Phase("quantize", 2, 7, "model.layers.0.self_attn.v_proj"))
    assert panel.bar.format() == "block 1 of 2  ·  quantizing 3/7"
    assert panel.label.text().endswith("·  quantizing model.layers.0.self_attn.v_proj")
    panel.on_event(Phase("propagate", 0, 1, "block 0"))
    assert panel.bar.format() == "block 1 of 2"


# ---------------------------------------------------------------- export


def export_dialog(qtbot, window, path):
    from studio.export_dialog import ExportDialog

    c = window.controller
    with qtbot.waitSignals([c.export_refusals_ready, c.export_sizes_ready], timeout=WAIT):
        dialog = ExportDialog.for_run(window, c, str(path))
        assert not any(radio.isEnabled() for radio in dialog.radios.values())      # until the checks come back
        assert not dialog.buttons.buttons()[0].isEnabled() and "Checking" in dialog.radios["hf"].toolTip()
    qtbot.addWidget(dialog)
    return dialog


def test_the_export_dialog_offers_what_the_run_can_be_written_in(qtbot, studio_window, studio_tiny_llama,
                                                                 studio_calib_text, tmp_path):
    from core import workbench as wb

    window, bench = studio_window, studio_window.controller.bench
    open_and_calibrate(qtbot, window, studio_tiny_llama, studio_calib_text)
    run(qtbot, window, "wanda", "2:4")
    dialog = export_dialog(qtbot, window, tmp_path / "a")
    radios = dialog.radios
    assert not radios["compressed-tensors"].isEnabled() and radios["compact"].isEnabled()
    assert "not quantized" in radios["compressed-tensors"].toolTip()
    assert dialog.format == "hf" and dialog.option_key == "hf"
    for fmt in ("hf", "compressed-tensors", "gguf", "compact"):
        assert radios[fmt].isEnabled() == wb.can_export(bench, fmt), fmt
    dialog.deleteLater()

    run(qtbot, window, "wanda", "unstructured", bits=4)
    dialog = export_dialog(qtbot, window, tmp_path / "b")
    radios = dialog.radios
    assert radios["compressed-tensors"].isEnabled() and not radios["compact"].isEnabled()
    assert "2:4 weights only" in radios["compact"].toolTip()
    assert dialog.format == "compressed-tensors"                # the engine's auto choice for a quantized run
    assert dialog.gguf_type.currentData() == "q4_0"
    for fmt in ("hf", "compressed-tensors", "gguf", "compact"):
        assert radios[fmt].isEnabled() == wb.can_export(bench, fmt), fmt
    for qtype in ("f16", "q8_0", "q4_0"):
        item = dialog.gguf_type.model().item(dialog.gguf_type.findData(qtype))
        refusal = window.controller.export_refusals()[f"gguf {qtype}"]
        assert item.isEnabled() == (refusal is None) and item.toolTip() == (refusal or "")
    ok = dialog.buttons.buttons()[0]
    assert ok.isEnabled() and dialog.choice() == (str(tmp_path / "b"), False, "compressed-tensors", None)
    if radios["gguf"].isEnabled():
        radios["gguf"].setChecked(True)
        dialog.gguf_type.setCurrentIndex(dialog.gguf_type.findData("q8_0"))
        assert dialog.choice()[2:] == ("gguf", "q8_0") and dialog.sizes.selected == "gguf q8_0"
        assert "model-q8_0.gguf" in dialog.about.text()
    radios["compressed-tensors"].setChecked(True)
    dialog.deleteLater()

    out = tmp_path / "packed"
    with qtbot.waitSignal(window.controller.export_done, timeout=WAIT) as blocker:
        window.controller.export(str(out), False, "compressed-tensors")
    assert "compressed-tensors (int4)" in blocker.args[1] and (out / "config.json").is_file()


def test_the_size_chart_draws_format_sizes_and_the_kv_cache(qtbot, studio_window, studio_tiny_llama,
                                                            studio_calib_text, tmp_path):
    from core.export.sizes import format_sizes, kv_cache_bytes
    from core.workbench import EvaluationRequest
    from studio.size_chart import GiB, MiB, format_name

    window = studio_window
    open_and_calibrate(qtbot, window, studio_tiny_llama, studio_calib_text)
    record = run(qtbot, window, "wanda", "2:4", bits=8)
    with qtbot.waitSignal(window.controller.evaluation_done, timeout=WAIT):
        window.evaluate(EvaluationRequest(str(studio_calib_text), 32, 2))
    assert record.ppl is not None
    dialog = export_dialog(qtbot, window, tmp_path / "x")
    dialog.show()
    chart, loaded = dialog.sizes, window.controller.loaded
    expected = format_sizes(loaded, record.result.quantized)
    assert chart.sizes == expected and {"hf", "compressed-tensors", "compact"} <= {s.format for s in expected}
    byte_counts = [s.bytes for s in expected]
    assert chart.unit == MiB
    assert chart.bar_widths(chart.file_bars) == pytest.approx(byte_counts)
    assert chart.bar_widths(chart.weight_bars) == pytest.approx(byte_counts)
    ticks = [label for _, label in sorted(chart.files_plot.getAxis("left")._tickLevels[0], reverse=True)]
    assert ticks == [format_name(s.format) for s in expected]            # the first format on top
    labels = {s.format: label.toPlainText() for s, label in zip(expected, chart.file_labels)}
    assert f"ppl {record.ppl.ppl:.2f}" in labels["hf"] and f"ppl {record.ppl.ppl:.2f}" in labels["compact"]
    assert all("ppl" not in text for fmt, text in labels.items() if fmt.startswith("gguf"))
    assert "MiB" in labels["hf"] and labels["compact"].strip().startswith(f"{expected[-1].bytes / MiB:.3g} MiB")

    config = loaded.model.config
    chart.batch.setValue(3)
    chart.context.setValue(1000)
    kv = kv_cache_bytes(config, 3, 1000)
    assert kv == 2 * config.num_hidden_layers * config.num_key_value_heads * 16 * 1000 * 3 * 2
    assert chart.kv_bytes == kv
    assert chart.bar_widths(chart.kv_bars) == pytest.approx([kv] * len(expected))
    assert np.asarray(chart.kv_bars.opts["x0"]) * chart.unit == pytest.approx(byte_counts)   # stacked on the weights
    assert f"{kv / MiB:.3g} MiB" in chart.kv_note.text()

    chart.batch.setValue(64)                     # a long context: the cache outweighs every format's weights
    chart.context.setValue(chart.context.maximum())
    kv = kv_cache_bytes(config, 64, chart.context.maximum())
    assert kv > 10 * GiB and chart.unit == GiB
    assert chart.bar_widths(chart.kv_bars) == pytest.approx([kv] * len(expected))
    assert chart.bar_widths(chart.file_bars) == pytest.approx(byte_counts)
    assert all(re.search(r"cache (9\d|100)%", label.toPlainText()) for label in chart.memory_labels)
    qtbot.waitExposed(dialog)

    def outside():                                # every label inside the plot, right of where its bar ends
        bad = []
        for plot, labels in ((chart.files_plot, chart.file_labels), (chart.memory_plot, chart.memory_labels)):
            area = plot.getViewBox().sceneBoundingRect()
            bad += [label.toPlainText() for label in labels
                    if not (area.left() < label.sceneBoundingRect().left()
                            and label.sceneBoundingRect().right() <= area.right() + 1)]
        return bad

    try:        # the ranges are refitted once the view boxes have their final size (a busy machine is slower)
        qtbot.waitUntil(lambda: not outside(), timeout=3000)
    except Exception:
        pass
    assert outside() == []
    dialog.close()
    dialog.deleteLater()
