"""The Sensitivity tab: bars and table fill from UnitProfiled events and sort; a real profile of the tiny Llama
from the window, used as the allocation; a cancelled one says the model is dense again, and it is."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

pytestmark = pytest.mark.qt_log_ignore(r"^This plugin does not support propagateSizeHints\(\)$")

WAIT = 60_000


def entry(name, kind, block, delta, error=0.1, params=1000):
    from core.studies.profile_file import UnitEntry

    return UnitEntry(name, kind, block, params, (name,), error, delta, None if delta is None else 10 + delta)


@pytest.fixture
def panel(qtbot):
    from studio.profile_panel import ProfilePanel

    panel = ProfilePanel()
    qtbot.addWidget(panel)
    panel.resize(1000, 700)
    return panel


def test_bars_fill_from_events_coloured_by_kind_and_sort(panel):
    from core.studies.sensitivity import ProfileRequest, UnitProfiled
    from studio.profile_chart import SENSITIVITY
    from studio.profile_panel import UNIT

    units = [entry("model.layers.0.self_attn.q_proj", "self_attn.q_proj", 0, 0.5),
             entry("model.layers.0.mlp.down_proj", "mlp.down_proj", 0, 2.0),
             entry("model.layers.1.self_attn.q_proj", "self_attn.q_proj", 1, 0.1),
             entry("model.layers.1.mlp.down_proj", "mlp.down_proj", 1, 1.0)]
    panel.begin(ProfileRequest(unit="layer", eval_path="x.txt"))
    assert panel.cancel_button.isEnabled() and not panel.start_button.isEnabled()
    for i, unit in enumerate(units):
        panel.on_event(UnitProfiled(unit, i + 1, len(units)))
        assert panel.chart.bar_count == i + 1 and panel.table.rowCount() == i + 1
    assert panel.chart.heights_in_order() == [0.5, 2.0, 0.1, 1.0]            # by depth
    assert set(panel.chart.series) == {"self_attn.q_proj", "mlp.down_proj"}   # one series (colour) per kind
    assert list(panel.chart.series["mlp.down_proj"].opts["x"]) == [1, 3]
    assert panel.chart.colours["self_attn.q_proj"] != panel.chart.colours["mlp.down_proj"]
    assert [label.text for _, label in panel.chart.legend.items] == ["self_attn.q_proj", "mlp.down_proj"]
    assert "4 of 4 units" in panel.status.text()
    panel.order.setCurrentIndex(panel.order.findData(SENSITIVITY))
    assert panel.chart.heights_in_order() == [2.0, 1.0, 0.5, 0.1]
    assert [panel.table.item(r, UNIT).text() for r in range(4)] == [units[i].name for i in (1, 3, 0, 2)]
    assert [panel.table.item(r, 0).text() for r in range(4)] == ["1", "2", "3", "4"]
    assert "rank 1 of 4" in panel.chart.describe(0) and "Δ +2.000" in panel.chart.describe(0)
    panel.stopped(cancelled=True)
    assert panel.status.text().startswith("cancelled: the model is dense again")
    assert not panel.use_button.isEnabled()                                  # nothing finished to allocate from


def _open(qtbot, window, folder, text):
    with qtbot.waitSignal(window.controller.model_opened, timeout=WAIT):
        window.open_model(str(folder))
    window.calibration_panel.add_files([str(text)])
    window.calibration_panel.nsamples.setValue(4)
    window.calibration_panel.seqlen.setValue(32)


def test_a_profile_from_the_window_fills_live_and_becomes_the_allocation(
        qtbot, studio_window, studio_tiny_llama, studio_calib_text, tmp_path):
    from core.patterns import UNSTRUCTURED
    from core.pruning.allocation import AllocationOptions, preset
    from core.studies.sensitivity import UnitProfiled

    window = studio_window
    _open(qtbot, window, studio_tiny_llama, studio_calib_text)
    panel = window.profile_panel
    panel.fast.setChecked(True)
    seen = []
    window.controller.progress.connect(lambda e: seen.append(panel.chart.bar_count) if isinstance(e, UnitProfiled)
                                       else None)
    with qtbot.waitSignal(window.controller.profile_finished, timeout=WAIT) as blocker:
        panel.start_button.click()
    profile = blocker.args[0]
    layers = sum(len(b.linears) for b in window.controller.loaded.layout.inventory)
    assert len(profile.entries) == layers and seen == list(range(1, layers + 1))   # a bar per event, as they came
    assert panel.chart.heights_in_order() == pytest.approx([e.error for e in profile.entries])
    assert panel.table.rowCount() == layers and panel.use_button.isEnabled()
    assert "dense again" in panel.status.text()

    window.run_panel.sparsity.setValue(0.5)
    panel.use_button.click()
    editor = window.allocation_editor
    expected = preset(AllocationOptions(kind="sensitivity", profile=profile, min_sparsity=panel.lo.value(),
                                        max_sparsity=panel.hi.value()), editor.params, 0.5, UNSTRUCTURED).sparsity
    assert editor.bar_heights == pytest.approx(expected) and editor.source == "profile"
    assert window.tabs.currentWidget() is editor
    options = window.run_panel.plan_options()["allocation"]
    assert options.kind == "explicit" and options.sparsities == pytest.approx(expected)

    saved = tmp_path / "profile.json"
    window._save_profile(str(saved))
    panel.table.setRowCount(0)
    window._load_profile(str(saved))
    assert panel.table.rowCount() == layers and [e.name for e in panel.profile.entries] == \
        [e.name for e in profile.entries]


def test_a_cancelled_profile_leaves_the_model_dense_and_says_so(
        qtbot, studio_window, studio_tiny_llama, studio_calib_text):
    from core.studies.sensitivity import UnitProfiled

    window = studio_window
    _open(qtbot, window, studio_tiny_llama, studio_calib_text)
    model = window.controller.loaded.model
    dense = {name: p.detach().clone() for name, p in model.named_parameters()}
    panel = window.profile_panel
    panel.eval_path.setText(str(studio_calib_text))
    panel.windows.setValue(2)
    panel.seqlen.setValue(32)
    c = window.controller
    c.progress.connect(lambda e: c.cancel_profile() if isinstance(e, UnitProfiled) else None)
    with qtbot.waitSignal(c.profile_stopped, timeout=WAIT) as blocker:
        panel.start_button.click()
    assert blocker.args == [True]
    assert panel.status.text().startswith("cancelled: the model is dense again")
    assert 1 <= panel.chart.bar_count < sum(len(b.linears) for b in c.loaded.layout.inventory)
    assert all(v is not None for v in [panel.chart.entries[0].delta_ppl])     # measured, not fast
    for name, p in model.named_parameters():
        assert torch_equal(p, dense[name]), name
    assert panel.start_button.isEnabled() and window.run_panel.run_button.isEnabled()
    assert "cancelled: the model is dense again" in window.progress_panel.label.text()


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a.detach(), b)
