"""The Evaluate panel's zero-shot table: a tiny local multiple-choice task (lm-eval YAML + JSONL) on the tiny
Llama, dense before a run and dense, pruned and % retained after one (also in the run's row in Runs); a bad
task name gives a message."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("lm_eval")

pytestmark = pytest.mark.qt_log_ignore(r"^This plugin does not support propagateSizeHints\(\)$")

WAIT = 120_000
DOCS = [{"q": "the model prunes", "choices": ["weights", "the blocks of every layer"], "label": 0},
        {"q": "sparse matrices stay", "choices": ["close to dense ones", "far"], "label": 0},
        {"q": "the studio draws", "choices": ["histograms", "masks", "nothing at all"], "label": 1},
        {"q": "feed forward", "choices": ["projections", "attention"], "label": 0}]


@pytest.fixture
def tasks_dir(tmp_path):
    data = tmp_path / "mini.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "mini.yaml").write_text(json.dumps({
        "task": "mini_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{q}}",
        "doc_to_target": "{{label}}", "doc_to_choice": "{{choices}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}))
    return tmp_path


def _table(panel) -> list[list[str]]:
    table = panel.table
    return [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]


def _score(loaded, tasks_dir):
    from core.evaluation.local_tasks import load_tasks
    from core.evaluation.zero_shot import score_tasks

    return score_tasks(loaded.model, loaded.tokenizer, load_tasks(("mini_mc",), str(tasks_dir)),
                       device="cpu").scores["mini_mc"]


def test_the_table_shows_dense_then_pruned_and_retained(qtbot, studio_window, studio_tiny_llama, studio_calib_text,
                                                        tasks_dir):
    from test_studio import open_tiny, run, set_calibration

    loaded = open_tiny(qtbot, studio_window, studio_tiny_llama)
    dense = _score(loaded, tasks_dir)
    panel = studio_window.evaluate_panel.tasks
    panel.tasks.setText("mini_mc")
    panel.folder.setText(str(tasks_dir))
    with qtbot.waitSignal(studio_window.controller.tasks_done, timeout=WAIT):
        panel.button.click()
    rows = _table(panel)
    assert [r[:3] for r in rows] == [["mini_mc", "4", "acc"], ["mini_mc", "4", "acc_norm"]]
    assert [r[3].split(" ± ")[0] for r in rows] == [f"{dense.acc:.3f}", f"{dense.acc_norm:.3f}"]
    assert [r[4] for r in rows] == ["–", "–"]

    set_calibration(studio_window, studio_calib_text)
    run(qtbot, studio_window, "magnitude", sparsity=0.8)
    pruned = _score(loaded, tasks_dir)                   # the model holds the run's weights
    with qtbot.waitSignal(studio_window.controller.tasks_done, timeout=WAIT) as blocker:
        panel.button.click()
    rows = _table(panel)
    assert [r[4].split(" ± ")[0] for r in rows] == [f"{pruned.acc:.3f}", f"{pruned.acc_norm:.3f}"]
    assert [r[3].split(" ± ")[0] for r in rows] == [f"{dense.acc:.3f}", f"{dense.acc_norm:.3f}"]
    for row, (d, p) in zip(rows, [(dense.acc, pruned.acc), (dense.acc_norm, pruned.acc_norm)]):
        assert row[5] == (f"{p / d:.1%}" if d else "–")
    assert blocker.args[0].record is studio_window.controller.bench.applied
    from studio.history_table import column                # the run's row in Runs shows the same accuracy
    cell = studio_window.history.table.item(0, column("Zero-shot acc"))
    expected = f"{pruned.acc:.1%}" + (f" ({pruned.acc / dense.acc:.0%} of dense)" if dense.acc else "")
    assert cell.text() == expected
    assert f"mini_mc: {pruned.acc:.1%} (dense {dense.acc:.1%}, n 4)" in cell.toolTip()

    panel.tasks.setText("mini_mcc")                      # a typo: a message, and the window goes on
    with qtbot.waitSignal(studio_window.controller.error, timeout=WAIT) as blocker:
        panel.button.click()
    assert "unknown task 'mini_mcc'" in blocker.args[0] and "mini_mc" in blocker.args[0]
    assert panel.button.isEnabled() and len(_table(panel)) == 2
