"""The Edit allocation tab: a mouse drag on a bar and a typed table cell each set a block while the others
hold the parameter-weighted mean; presets; and a run on the tiny Llama prunes each block by the edited bars."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

pytestmark = pytest.mark.qt_log_ignore(r"^This plugin does not support propagateSizeHints\(\)$")

WAIT = 60_000
SPARSITY = 1          # the editor table's sparsity column (studio.allocation_editor.SPARSITY)
PARAMS = [100, 300, 200, 400]


@pytest.fixture
def editor(qtbot):
    from studio.allocation_editor import AllocationEditor

    editor = AllocationEditor()
    qtbot.addWidget(editor)
    editor.resize(900, 500)
    editor.show()
    editor.set_target(0.5)
    editor.set_model(PARAMS, other_params=1000, bytes_per_weight=2)
    qtbot.waitExposed(editor)
    return editor


def weighted(values, params=PARAMS):
    return sum(v * w for v, w in zip(values, params)) / sum(params)


def drag(qtbot, editor, block: int, start: float, end: float) -> None:
    """Press on bar `block` at height `start`, move to `end` with the button held, release: real mouse events."""
    from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    plot = editor.plot
    box = editor.box

    def at(y):
        scene = box.mapViewToScene(QPointF(block, y))
        return plot.mapFromScene(scene)

    viewport = plot.viewport()
    a, b = at(start), at(end)
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    steps = [a + (b - a) * (k / 8) for k in range(1, 9)]
    QApplication.sendEvent(viewport, QMouseEvent(QEvent.Type.MouseButtonPress, QPointF(a), QPointF(viewport.mapToGlobal(a)),
                                                 left, left, Qt.KeyboardModifier.NoModifier))
    for p in steps:
        QApplication.sendEvent(viewport, QMouseEvent(QEvent.Type.MouseMove, QPointF(p), QPointF(viewport.mapToGlobal(p)),
                                                     none, left, Qt.KeyboardModifier.NoModifier))
    QApplication.sendEvent(viewport, QMouseEvent(QEvent.Type.MouseButtonRelease, QPointF(b),
                                                 QPointF(viewport.mapToGlobal(QPoint(b.x(), b.y()))), left, none,
                                                 Qt.KeyboardModifier.NoModifier))
    qtbot.wait(20)


def _ready_to_run(qtbot, window, folder, text):
    """The tiny model open, its calibration set, the run on the CPU: the Prune panel, ready for Run."""
    from test_studio import open_tiny, set_calibration

    open_tiny(qtbot, window, folder)
    set_calibration(window, text)
    panel = window.run_panel
    panel.device.setCurrentIndex(panel.device.findData("cpu"))
    return panel


def test_dragging_a_bar_sets_it_and_the_others_hold_the_mean(qtbot, editor):
    from core.pruning.allocation_edit import rebalance

    edits = []
    editor.edited.connect(edits.append)
    assert editor.bar_heights == pytest.approx([0.5] * 4)
    drag(qtbot, editor, 1, 0.45, 0.2)
    heights = editor.bar_heights
    assert edits, "the drag reached the editor"
    assert heights[1] == pytest.approx(0.2, abs=0.02)                     # the pointer's height, to a pixel or so
    assert weighted(heights) == pytest.approx(0.5, abs=1e-9)              # the parameter-weighted mean held
    assert heights == pytest.approx(list(rebalance([0.5] * 4, PARAMS, 1, heights[1], 0.0, 0.95)))
    assert heights[0] == pytest.approx(heights[2]) and heights[2] == pytest.approx(heights[3]) and heights[0] > 0.5
    assert editor.locked == {1} and editor.source == "edited"
    assert tuple(edits[-1]) == pytest.approx(heights)
    assert editor.table.item(1, SPARSITY).text() == f"{100 * heights[1]:.1f}"

    # a second drag leaves the first (locked) block where it was
    drag(qtbot, editor, 3, 0.55, 0.8)
    again = editor.bar_heights
    assert again[1] == pytest.approx(heights[1]) and again[3] == pytest.approx(0.8, abs=0.02)
    assert weighted(again) == pytest.approx(0.5, abs=1e-9)
    # a drag that starts between the bars moves nothing
    before = editor.bar_heights
    drag(qtbot, editor, 1.5, 0.5, 0.9)
    assert editor.bar_heights == before


def test_typing_a_cell_rebalances_within_the_bounds_and_shows_the_size(qtbot, editor):
    from core.pruning.allocation_edit import resulting_size

    editor.hi.setValue(0.6)
    editor.table.item(0, SPARSITY).setText("10")
    heights = editor.bar_heights
    # block 0 (100 weights) at 0.1 leaves 40 weighted sparsity-points for the others (900 weights): +0.0444 each
    assert heights == pytest.approx([0.1, 0.5 + 40 / 900, 0.5 + 40 / 900, 0.5 + 40 / 900])
    assert weighted(heights) == pytest.approx(0.5)
    editor.table.item(3, SPARSITY).setText("20")    # asked: block 3 (400 weights) down to 0.2, 120 points for blocks 1, 2
    heights = editor.bar_heights
    # …but blocks 1 and 2 (500 weights) can only rise to max 0.6: 500·(0.6 − 0.5444) points, so block 3 stops there
    room = 500 * (0.6 - (0.5 + 40 / 900))
    assert heights == pytest.approx([0.1, 0.6, 0.6, 0.5 + 40 / 900 - room / 400])
    assert weighted(heights) == pytest.approx(0.5)
    size = resulting_size(PARAMS, heights, 1000, 2)
    assert f"{size.kept_params / 1e3:.2f}k" in editor.summary.text()
    editor.table.item(2, SPARSITY).setText("not a number")
    assert editor.bar_heights == heights and editor.table.item(2, SPARSITY).text() == f"{100 * heights[2]:.1f}"


def test_presets_and_the_target_move_every_bar(qtbot, editor):
    assert not editor.owl_button.isEnabled() and not editor.profile_button.isEnabled()
    editor.set_owl([0.45, 0.55, 0.40, 0.60])                # made for a mean of 0.5125 here: moved to the target
    assert editor.owl_button.isEnabled()
    editor.owl_button.click()
    heights = editor.bar_heights
    assert weighted(heights) == pytest.approx(0.5)
    assert [b - a for a, b in zip(heights, heights[1:])] == pytest.approx([0.10, -0.15, 0.20])
    editor.set_target(0.6)
    assert weighted(editor.bar_heights) == pytest.approx(0.6)
    editor.uniform_button.click()
    assert editor.bar_heights == pytest.approx([0.6] * 4) and editor.source == "uniform"


def test_run_uses_the_edited_allocation(qtbot, studio_window, studio_tiny_llama, studio_calib_text):
    window = studio_window
    panel = _ready_to_run(qtbot, window, studio_tiny_llama, studio_calib_text)
    panel.sparsity.setValue(0.5)
    editor = window.allocation_editor
    assert len(editor.params) == 2 and editor.params[0] == editor.params[1]
    assert panel.allocation.currentData() == "uniform"
    editor.table.item(0, SPARSITY).setText("30")
    assert panel.allocation.currentData() == "explicit"
    assert editor.bar_heights == pytest.approx([0.3, 0.7])
    options = panel.plan_options()["allocation"]
    assert options.kind == "explicit" and options.sparsities == pytest.approx((0.3, 0.7))
    with qtbot.waitSignal(window.controller.run_finished, timeout=WAIT) as blocker:
        window.start_run()
    record = blocker.args[0]
    assert record.plan.allocation.kind == "explicit"
    assert record.plan.describe()["allocation"]["block_sparsity"] == pytest.approx([0.3, 0.7])
    for layer in record.result.layers:
        assert layer.sparsity == pytest.approx([0.3, 0.7][layer.block], abs=0.02)
    assert window.allocation.bar_heights == pytest.approx([0.3, 0.7])


def test_with_an_nm_pattern_a_dragged_bar_and_the_others_take_multiples_of_1_over_m(qtbot, editor):
    editor.set_pattern(4, 0.5)
    assert editor.bar_heights == pytest.approx([0.5] * 4) and "multiple of 1/4" in editor.hint.text()
    drag(qtbot, editor, 3, 0.5, 0.28)                       # 400 weights pulled to about a quarter
    heights = editor.bar_heights
    assert all(abs(h * 4 - round(h * 4)) < 1e-12 for h in heights)
    assert heights[3] == 0.25
    # block 3 gave up 0.25 × 400 = 100 weighted points; the others, shifted to 0.667 and rounded to 0.75, take
    # 200 too many, which block 2 (200 weights) one level down gives back exactly
    assert heights == [0.75, 0.75, 0.5, 0.25]
    assert weighted(heights) == pytest.approx(0.5, abs=1e-12)
    assert editor.locked == {3}
    editor.set_pattern(0, 0.5)                              # back to unstructured: every value allowed again
    editor.table.item(0, SPARSITY).setText("33")
    assert editor.bar_heights[0] == pytest.approx(0.33)


def test_bounds_that_hold_no_level_say_so_instead_of_snapping(qtbot, editor):
    editor.lo.setValue(0.3)
    editor.hi.setValue(0.45)
    editor.set_pattern(4, 0.5)
    assert "no multiple of 1/4 lies within" in editor.summary.text()


def test_a_2_4_run_uses_the_edited_levels_as_per_block_patterns(qtbot, studio_window, studio_tiny_llama,
                                                               studio_calib_text):
    window = studio_window
    panel = _ready_to_run(qtbot, window, studio_tiny_llama, studio_calib_text)
    panel.sparsity.setValue(0.3)                            # ignored: 2:4 sets the average to 0.5
    panel.pattern.setCurrentText("2:4")
    editor = window.allocation_editor
    assert editor.m == 4 and editor.target == 0.5 and editor.bar_heights == pytest.approx([0.5, 0.5])
    editor.table.item(0, SPARSITY).setText("30")            # snaps to 25%, block 1 makes up with 75%
    assert editor.bar_heights == pytest.approx([0.25, 0.75])
    assert panel.plan_options()["allocation"].sparsities == pytest.approx((0.25, 0.75))
    with qtbot.waitSignal(window.controller.run_finished, timeout=WAIT) as blocker:
        window.start_run()
    record = blocker.args[0]
    from core.models.architectures import weight_matrix
    from core.patterns import Pattern, follows_pattern
    for layer in record.result.layers:
        keep = {0: 3, 1: 1}[layer.block]                    # 1 of 4 pruned in block 0, 3 of 4 in block 1
        matrix = weight_matrix(window.controller.loaded.model.get_submodule(layer.name))
        assert follows_pattern(matrix, Pattern(keep, 4))
        assert layer.sparsity == pytest.approx(1 - keep / 4, abs=0.01)
