"""The run panel's allocation, recovery and ALPS choices, the allocation and recovery charts, and a run
with OWL and blockwise recovery on the tiny Llama, from the panel to the history row."""

from __future__ import annotations

import pytest

from core.events import RecoveryStep

pytest.importorskip("pytestqt")

pytestmark = pytest.mark.qt_log_ignore(r"^This plugin does not support propagateSizeHints\(\)$")

WAIT = 60_000


@pytest.fixture
def panel(qtbot):
    from studio.run_panel import RunPanel

    panel = RunPanel()
    qtbot.addWidget(panel)
    return panel


def choose(combo, value) -> None:
    index = combo.findData(value)
    assert index >= 0, value
    combo.setCurrentIndex(index)


def test_plan_options_build_a_plan_with_alps_owl_and_recovery(panel, studio_settings):
    from core.pruning.allocation import AllocationOptions
    from core.pruning.methods import METHODS
    from core.pruning.plan import PrunePlan
    from core.recovery.options import RecoveryOptions
    from studio.run_panel import RunPanel

    assert "alps" in [panel.method.itemData(i) for i in range(panel.method.count())] and "alps" in METHODS
    panel.show()
    assert not panel.alps_box.isVisible() and not panel.owl_lambda.isVisible() and not panel.recovery_epochs.isVisible()
    panel.method.setCurrentText("alps")
    assert panel.alps_box.isVisible() and not panel.sparsegpt_box.isVisible()
    for field in (panel.alps_rho, panel.alps_iterations, panel.alps_refit):
        assert field.toolTip()
    panel.alps_rho.setValue(0.25)
    panel.alps_iterations.setValue(40)
    panel.alps_refit.setValue(3)
    choose(panel.allocation, "owl")
    assert panel.owl_lambda.isVisible()
    panel.owl_lambda.setValue(0.05)
    choose(panel.recovery, "blockwise")
    assert panel.recovery_epochs.isVisible() and panel.recovery_lr.isVisible()
    panel.recovery_epochs.setValue(0.5)
    panel.recovery_lr.lineEdit().setText("3e-4")
    panel.recovery_lr.interpretText()
    plan = PrunePlan.build(**panel.plan_options())
    assert plan.method == "alps" and plan.method_options is plan.alps
    assert (plan.alps.rho, plan.alps.max_iterations, plan.alps.refit_steps) == (0.25, 40, 3)
    assert plan.allocation == AllocationOptions(kind="owl", owl_lambda=0.05)            # M as the engine's default
    assert plan.recovery == RecoveryOptions(mode="blockwise", epochs=0.5, learning_rate=pytest.approx(3e-4))
    assert plan.describe()["recovery"]["mode"] == "blockwise"
    choose(panel.recovery, "e2e")
    assert PrunePlan.build(**panel.plan_options()).recovery.mode == "e2e"
    choose(panel.recovery, "none")
    assert not panel.recovery_epochs.isVisible()

    # remembered through an INI file, where every value comes back as a string
    studio_settings.setValue("run/last", panel.state())
    studio_settings.sync()
    again = RunPanel()
    again.restore_state(studio_settings.value("run/last"))
    assert again.plan_options() == panel.plan_options()
    assert again.allocation.currentData() == "owl" and again.owl_lambda.value() == pytest.approx(0.05)
    again.deleteLater()


def test_the_learning_rate_field_reads_and_steps_in_decades(panel):
    lr = panel.recovery_lr
    lr.setValue(1e-4)
    assert lr.text() == "0.0001"
    lr.stepBy(1)
    assert lr.value() == pytest.approx(2e-4)
    lr.stepBy(2)
    assert lr.value() == pytest.approx(1e-3)
    lr.stepBy(-3)
    assert lr.value() == pytest.approx(1e-4)


def test_the_allocation_chart_draws_a_bar_per_block_and_the_target(qtbot):
    from core.patterns import UNSTRUCTURED, parse_pattern
    from core.pruning.allocation import AllocationOptions, owl
    from studio.allocation_chart import AllocationChart

    chart = AllocationChart()
    qtbot.addWidget(chart)
    chart.set_blocks(4)
    ratios = [0.010, 0.002, 0.006, 0.004]
    allocation = owl(ratios, 0.5, UNSTRUCTURED, AllocationOptions(kind="owl", owl_lambda=0.08))
    chart.show_allocation(allocation, 0.5)
    assert chart.bars.opts["x"] == [0, 1, 2, 3]
    assert chart.bar_heights == pytest.approx(allocation.sparsity)
    assert chart.bar_heights[0] < 0.5 < chart.bar_heights[1]           # more outliers, fewer weights pruned
    assert chart.target_line.isVisible() and chart.target_line.value() == pytest.approx(0.5)
    assert list(chart.outlier_bars.opts["height"]) == pytest.approx([100 * r for r in ratios])
    assert "outlier ratio 1.00%" in chart.describe(0) and f"{allocation.sparsity[0]:.1%} allocated" in chart.describe(0)

    two_four = owl(ratios, 0.5, parse_pattern("2:4"), AllocationOptions(kind="owl", owl_lambda=0.25))
    chart.show_allocation(two_four, 0.5)
    assert chart.bar_heights == pytest.approx(two_four.sparsity)
    dense = [i for i, p in enumerate(two_four.patterns) if p is None]
    for i in dense:
        assert "kept dense" in chart.describe(i)
    chart.clear()
    assert chart.bar_heights == [] and not chart.target_line.isVisible()


def test_the_recovery_chart_draws_steps_in_batches_on_its_timer(qtbot):
    from core.recovery.blockwise import RecoveryCurve
    from studio.recovery_chart import CURRENT, EARLIER, RecoveryChart

    chart = RecoveryChart()
    qtbot.addWidget(chart)
    ticks = []
    chart._timer.timeout.connect(lambda: ticks.append(1))
    first = [0.30, 0.21, 0.15, 0.12, 0.10, 0.09]
    for step, loss in enumerate(first, 1):
        chart.add_step(RecoveryStep(0, step, len(first), loss))
    assert chart.curve_count == 0                   # nothing drawn per event
    qtbot.waitUntil(lambda: chart.curve_count == 1, timeout=5_000)
    assert len(ticks) == 1                           # six steps, one redraw
    assert list(chart.curves[0].yData) == pytest.approx(first)
    assert list(chart.curves[0].xData) == [1, 2, 3, 4, 5, 6]
    chart.add_curve(RecoveryCurve(0, 0.32, 0.085, len(first), 0.5, first))
    second = [0.5, 0.4]
    for step, loss in enumerate(second, 1):
        chart.add_step(RecoveryStep(1, step, 4, loss))
    qtbot.waitUntil(lambda: chart.curve_count == 2, timeout=5_000)
    assert list(chart.curves[1].yData) == pytest.approx(second)
    assert chart.curves[1].opts["pen"] == CURRENT and chart.curves[0].opts["pen"] == EARLIER   # earlier: faint
    assert list(chart.before_marks.yData) == [0.32] and list(chart.after_marks.yData) == [0.085]
    assert "block 1: step 2 of 4, loss 0.4" in chart.status.text()
    chart.clear()
    assert chart.curve_count == 0 and chart.curves == {}


def _open_and_calibrate(qtbot, window, folder, text):
    with qtbot.waitSignal(window.controller.model_opened, timeout=WAIT):
        window.open_model(str(folder))
    panel = window.calibration_panel
    panel.add_files([str(text)])
    panel.nsamples.setValue(4)
    panel.seqlen.setValue(32)


def _run(qtbot, window):
    with qtbot.waitSignal(window.controller.run_finished, timeout=WAIT) as blocker:
        window.start_run()
    return blocker.args[0]


def test_a_run_with_owl_and_blockwise_recovery_fills_both_charts_and_the_history(
        qtbot, studio_window, studio_tiny_llama, studio_calib_text):
    from studio.history_table import column

    window = studio_window
    _open_and_calibrate(qtbot, window, studio_tiny_llama, studio_calib_text)
    panel = window.run_panel
    panel.method.setCurrentText("wanda")
    panel.device.setCurrentIndex(panel.device.findData("cpu"))
    choose(panel.allocation, "owl")
    panel.owl_lambda.setValue(0.05)
    choose(panel.recovery, "blockwise")
    panel.recovery_epochs.setValue(1.5)             # 4 windows, 2 a step: 3 steps per block
    window.tabs.setCurrentWidget(window.recovery)
    chosen, steps, labels = [], [], []
    window.controller.allocation_chosen.connect(chosen.append)
    window.controller.recovery_step.connect(steps.append)
    window.controller.progress.connect(lambda e: labels.append((window.progress_panel.bar.format(),
                                                                window.progress_panel.label.text())))
    record = _run(qtbot, window)

    allocation = record.plan.blocks
    assert len(chosen) == 1 and chosen[0].sparsity == allocation.sparsity and allocation.kind == "owl"
    assert window.allocation.bar_heights == pytest.approx(allocation.sparsity) and len(allocation.sparsity) == 2
    assert window.allocation.achieved and window.allocation.target_line.value() == pytest.approx(0.5)
    curves = record.result.recovery
    assert [c.block for c in curves] == [0, 1] and all(c.steps == 3 for c in curves)
    assert len(steps) == 6 and [s.loss for s in steps if s.block == 1] == pytest.approx(curves[1].losses)
    assert window.recovery.curve_count == 2
    for curve in curves:
        assert list(window.recovery.curves[curve.block].yData) == pytest.approx(curve.losses)
    assert list(window.recovery.after_marks.yData) == pytest.approx([c.after for c in curves])
    assert any(bar.startswith("block ") and "recovering" in bar for bar, _ in labels)       # its own phase
    assert any("recovering block 1: step" in label for _, label in labels)
    log = window.progress_panel.log.toPlainText()
    assert "block 0 recovered: output error" in log and "OWL allocation: block sparsity" in log
    table = window.history.table
    assert table.item(0, column("Recovery")).text() == "blockwise"
    assert table.item(0, column("Allocation")).text() == "OWL λ 0.05"
    assert "mean relative output error of 2 blocks" in table.item(0, column("Recovery")).toolTip()

    # the same run without recovery: a row of its own beside it; the charts show the new run
    choose(panel.recovery, "none")
    again = _run(qtbot, window)
    assert table.rowCount() == 2 and table.item(1, column("Recovery")).text() == "none"
    assert table.item(1, column("Allocation")).text() == "OWL λ 0.05"
    assert again.result.recovery == [] and window.recovery.curve_count == 0
    assert window.allocation.bar_heights == pytest.approx(again.plan.blocks.sparsity)


def test_end_to_end_recovery_draws_one_kl_curve(qtbot, studio_window, studio_tiny_llama, studio_calib_text):
    from studio.history_table import column

    window = studio_window
    _open_and_calibrate(qtbot, window, studio_tiny_llama, studio_calib_text)
    panel = window.run_panel
    panel.method.setCurrentText("magnitude")
    panel.device.setCurrentIndex(panel.device.findData("cpu"))
    choose(panel.recovery, "e2e")
    panel.recovery_epochs.setValue(1.0)
    labels = []
    window.controller.progress.connect(lambda e: labels.append(window.progress_panel.bar.format()))
    record = _run(qtbot, window)
    (curve,) = record.result.recovery
    assert curve.block == -1 and len(curve.losses) == curve.steps == 2
    assert window.recovery.curve_count == 1
    assert list(window.recovery.curves[-1].yData) == pytest.approx(curve.losses)
    assert "KL" in window.recovery.loss_plot.getPlotItem().titleLabel.text
    assert "recovering 2/2" in labels                      # after the blocks, the bar is the recovery's
    assert window.history.table.item(0, column("Recovery")).text() == "end-to-end"
    assert window.allocation.bar_heights == pytest.approx([0.5, 0.5])     # uniform
