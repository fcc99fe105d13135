"""Issue 15 in the window: every bad input the command line refuses that the window lets a user enter, entered
through the window's own widgets, gives a message saying what is wrong (no traceback, no "unexpectedly"), and
the window stays usable: its buttons work again and the next job runs. A bug inside a job, or in a slot on the
window's thread, is logged to a crash log the message names, and the window goes on.

One window, with the tiny Llama opened once, serves every case (each starts from the same panel choices), so
the whole file stays quick. The inputs the widgets cannot express at all (a sparsity of 1, no windows, a CUDA
device on a machine without one, …) are checked to be impossible instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

pytestmark = pytest.mark.qt_log_ignore(r"^This plugin does not support propagateSizeHints\(\)$")

WAIT = 60_000
BUG_WORDS = ("unexpectedly", "Traceback", "File \"")


# ---------------------------------------------------------------- one window for the module


@pytest.fixture(scope="module")
def shared_window(qapp, tmp_path_factory):
    from PySide6.QtCore import QSettings

    from studio.main_window import MainWindow

    settings = QSettings(str(tmp_path_factory.mktemp("bad_inputs_settings") / "studio.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.show()
    yield window
    window.close()
    window.deleteLater()
    qapp.processEvents()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Calibration and evaluation files a user could pick, good and bad."""
    folder = tmp_path_factory.mktemp("bad_input_files")

    def write(name, content):
        path = folder / name
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path

    return {
        "empty": write("empty.txt", ""),
        "binary": write("blob.txt", bytes(range(256)) * 10),
        "latin-1": write("latin.txt", ("café au lait " * 50).encode("latin-1")),
        "short": write("short.txt", "tiny"),
        "jsonl without the field": write("records.jsonl", '{"body": "the model prunes weights"}\n' * 20),
        "csv without the column": write("table.csv", "title,body\n" + "a,the model prunes weights\n" * 20),
        "broken json lines": write("broken.jsonl", '{"text": "fine"}\n{"text": oops\n'),
        "pdf": write("paper.pdf", "%PDF-1.4 not really"),
        "not a gguf": write("weights.bin", "not a model"),
        "corrupt gguf": write("broken.gguf", "GGUF but not really"),
        "a file": write("a-file", "a file where a folder should be"),
        "missing": folder / "no-such-file.txt",
        "folder": folder,
    }


@pytest.fixture(scope="module")
def defaults(qapp):
    """The Prune panel's choices in a fresh window: every case starts from them."""
    from studio.run_panel import RunPanel

    panel = RunPanel()
    state = panel.state()
    panel.deleteLater()
    return state


@pytest.fixture
def window(qtbot, shared_window, studio_tiny_llama, studio_calib_text, defaults):
    """The shared window with the tiny model open, a valid calibration and evaluation chosen, the message bar
    hidden and the Prune panel at its defaults (CPU, 2 windows of 16 tokens)."""
    w = shared_window
    if w.controller.loaded is None:
        with qtbot.waitSignal(w.controller.model_opened, timeout=WAIT):
            w.open_model(str(studio_tiny_llama))
    qtbot.waitUntil(lambda: not w.controller.engine.busy, timeout=WAIT)
    w.pages.setCurrentIndex(1)
    w.message_bar.hide()
    panel = w.run_panel
    panel.restore_state(defaults)
    panel.pattern.setCurrentText("unstructured")
    panel.overrides.setPlainText("")
    panel.ignore.setText("")
    panel.device.setCurrentIndex(panel.device.findData("cpu"))
    calibration = w.calibration_panel
    calibration.files.clear()
    calibration.add_files([str(studio_calib_text)])
    calibration.text_field.setText("text")
    calibration.nsamples.setValue(2)
    calibration.seqlen.setValue(16)
    evaluation = w.evaluate_panel
    evaluation.path.setText(str(studio_calib_text))
    evaluation.seqlen.setValue(16)
    evaluation.windows.setValue(2)
    w.bench.tokens.setText("1,8")
    yield w
    assert_usable(qtbot, w)


def assert_usable(qtbot, window) -> None:
    """No job left running, the buttons a user needs next enabled."""
    qtbot.waitUntil(lambda: not window.controller.engine.busy, timeout=WAIT)
    assert not window.controller.running
    assert window.run_panel.run_button.isEnabled() and not window.run_panel.cancel_button.isEnabled()
    assert not window.progress_panel.stop_button.isEnabled()
    assert window.bench.start_button.isEnabled()


def assert_told(window, message: str, expected) -> None:
    """The message says what is wrong (`expected`, or one of them), in the message bar, in words (not a bug report)."""
    assert any(words in message for words in ((expected,) if isinstance(expected, str) else expected)), message
    assert not any(word in message for word in BUG_WORDS), message
    assert window.message_bar.isVisible() and window.message_bar.text.text() == message


def refused(qtbot, window, action, expected) -> str:
    """Do `action` as the user would; the window answers with a message containing `expected`."""
    window.message_bar.hide()
    action()
    qtbot.waitUntil(window.message_bar.isVisible, timeout=WAIT)
    message = window.message_bar.text.text()
    assert_told(window, message, expected)
    qtbot.waitUntil(lambda: not window.controller.engine.busy, timeout=WAIT)
    return message


def still_runs_a_job(qtbot, window) -> None:
    """The engine takes the next job: the panel's (valid) calibration is tokenized."""
    with qtbot.waitSignal(window.controller.calibration_ready, timeout=WAIT):
        window.calibration_panel.load_button.click()
    assert "tokens found" in window.calibration_panel.status.text()


def still_prunes(qtbot, window):
    with qtbot.waitSignal(window.controller.run_finished, timeout=WAIT) as blocker:
        window.run_panel.run_button.click()
    return blocker.args[0]


# ---------------------------------------------------------------- the model (welcome page, drop)


def _model_case(case, files, tmp_path, studio_tiny_llama):
    """(how the user gives it: 'type' in the hub-id field or 'drop' on the window, what, expected words)."""
    if case == "missing path":
        return "type", str(tmp_path / "nope"), "no such file or folder"
    if case == "empty field":
        return "type", "   ", "Type a model folder"
    if case == "hub id not cached":
        return "type", "nobody-at-all/no-such-model-here", "not in the local Hugging Face cache"
    if case == "folder without config.json":
        return "drop", str(files["folder"]), "has no config.json"
    if case == "config.json without weights":
        folder = tmp_path / "no-weights"
        folder.mkdir()
        (folder / "config.json").write_text((studio_tiny_llama / "config.json").read_text())
        return "drop", str(folder), "no weights"
    if case == "corrupt safetensors":
        folder = tmp_path / "corrupt"
        folder.mkdir()
        (folder / "config.json").write_text((studio_tiny_llama / "config.json").read_text())
        (folder / "model.safetensors").write_bytes(b"not a safetensors file at all")
        return "drop", str(folder), ("could not read the model", "model.safetensors is damaged")
    if case == "a file that is not a .gguf":
        return "type", str(files["not a gguf"]), "is a file but not a .gguf"
    if case == "corrupt .gguf":
        return "drop", str(files["corrupt gguf"]), ("could not read the model", "broken.gguf is")
    raise KeyError(case)


MODEL_CASES = ["missing path", "empty field", "hub id not cached", "folder without config.json",
               "config.json without weights", "corrupt safetensors", "a file that is not a .gguf", "corrupt .gguf"]


@pytest.mark.parametrize("case", MODEL_CASES)
def test_a_bad_model_is_refused_and_the_open_model_is_kept(case, qtbot, window, files, tmp_path, studio_tiny_llama):
    from PySide6.QtCore import Qt

    how, spec, expected = _model_case(case, files, tmp_path, studio_tiny_llama)
    loaded = window.controller.loaded
    window.welcome_action.trigger()                 # File > Welcome page, as a user opening another model
    assert window.pages.currentIndex() == 0

    def give():
        if how == "type":
            window.welcome.hub_id.setText(spec)
            qtbot.keyClick(window.welcome.hub_id, Qt.Key.Key_Return)
        else:
            window.drop_paths([spec])

    refused(qtbot, window, give, expected)
    assert window.controller.loaded is loaded                    # nothing lost: the open model stays
    assert window.progress_panel.bar.format().startswith("failed")
    assert window.workspace_action.isEnabled()
    window.workspace_action.trigger()                            # and the user gets back to it
    assert window.pages.currentIndex() == 1
    still_runs_a_job(qtbot, window)


# ---------------------------------------------------------------- calibration (the Calibration panel)


CALIBRATION_CASES = {
    "missing file": ("missing", "no such file"),
    "empty file": ("empty", "holds no text"),
    "binary file": ("binary", "looks binary"),
    "not UTF-8": ("latin-1", "not UTF-8"),
    "shorter than one window": ("short", "fewer than one window of 16"),
    "JSON lines without the text field": ("jsonl without the field", "has no field 'text'"),
    "CSV without the text column": ("csv without the column", "no column 'text'"),
    "broken JSON lines": ("broken json lines", "not valid JSON"),
    "unsupported file type": ("pdf", "unsupported file type .pdf"),
    "a folder": ("folder", "no such file"),
    "no file at all": (None, "no calibration files given"),
}


@pytest.mark.parametrize("case", list(CALIBRATION_CASES))
def test_bad_calibration_is_refused_in_the_panel_and_the_message_bar(case, qtbot, window, files, studio_calib_text):
    key, expected = CALIBRATION_CASES[case]
    panel = window.calibration_panel
    panel.files.clear()
    if key is not None:
        panel.add_files([str(files[key])])
    message = refused(qtbot, window, panel.load_button.click, expected)
    assert panel.status.text() == message                         # the panel says it too, beside the files
    panel.files.clear()
    panel.add_files([str(studio_calib_text)])
    still_runs_a_job(qtbot, window)


def test_a_text_field_that_is_not_there_is_named(qtbot, window, files):
    panel = window.calibration_panel
    panel.files.clear()
    panel.add_files([str(files["jsonl without the field"])])
    panel.text_field.setText("content")
    refused(qtbot, window, panel.load_button.click, "has no field 'content' (found: body)")
    panel.text_field.setText("body")                              # the field the message names: it loads
    still_runs_a_job(qtbot, window)


def test_bad_calibration_met_by_the_run_button_keeps_the_run_before_it(qtbot, pruned, files):
    """The run stops before it prunes: the run applied before it is still the model's, still shown, still exportable."""
    from studio.layer_tree import SPARSITY

    window, panel = pruned, pruned.calibration_panel
    before = window.controller.bench.applied
    panel.files.clear()
    panel.add_files([str(files["missing"])])
    message = refused(qtbot, window, window.run_panel.run_button.click, "no such file")
    assert panel.status.text() == message
    assert window.controller.bench.applied is before
    assert window.model_panel.fields["state"].text().startswith(f"run {before.number}: ")
    assert window.export_action.isEnabled()
    assert all(window.layer_tree.items[layer.name].text(SPARSITY) for layer in before.result.layers)
    assert window.overview.bar_count == len(before.result.layers)


# ---------------------------------------------------------------- the run (the Prune panel)


def _set_run_case(panel, case) -> str:
    """Enter `case` in the Prune panel; the words the refusal must contain."""
    def choose(combo, value):
        combo.setCurrentIndex(combo.findData(value))

    if case == "pattern N >= M":
        panel.pattern.setCurrentText("5:4")
        return "0 < N < M"
    if case == "pattern N = M":
        panel.pattern.setCurrentText("4:4")
        return "0 < N < M"
    if case == "pattern not N:M":
        panel.pattern.setCurrentText("abc")
        return "unknown pattern 'abc'"
    if case == "pattern 0:4":
        panel.pattern.setCurrentText("0:4")
        return "0 < N < M"
    if case == "override without '='":
        panel.overrides.setPlainText("*mlp* lots")
        return "write GLOB=SPARSITY"
    if case == "override with a word for the sparsity":
        panel.overrides.setPlainText("*mlp* = lots")
        return "write GLOB=SPARSITY"
    if case == "override without a glob":
        panel.overrides.setPlainText("= 0.3")
        return "write GLOB=SPARSITY"
    if case == "override sparsity out of range":
        panel.overrides.setPlainText("*mlp.down_proj = 1.5")
        return "sparsity must be in [0, 1)"
    if case == "override with an N:M pattern":
        panel.pattern.setCurrentText("2:4")
        panel.overrides.setPlainText("*mlp.down_proj = 0.3")
        return "need the unstructured pattern"
    if case == "SparseGPT blocksize not a multiple of M":
        panel.method.setCurrentText("sparsegpt")
        panel.pattern.setCurrentText("2:4")
        panel.blocksize.setValue(3)
        return "multiple of M=4"
    if case == "OWL sparsity beyond λ":
        choose(panel.allocation, "owl")
        panel.sparsity.setValue(0.95)
        return "cannot allow"
    if case == "quantization group size not a multiple of 8":
        choose(panel.quantize.bits, 4)
        panel.quantize.group_size.setCurrentText("12")
        return "group size 12 must be a positive multiple of 8"
    if case == "joint pass with recovery":
        panel.method.setCurrentText("sparsegpt")
        choose(panel.quantize.bits, 4)
        panel.quantize.joint.setChecked(True)
        choose(panel.recovery, "blockwise")
        return "the joint pass quantizes while it prunes"
    if case == "quantization with end-to-end recovery":
        choose(panel.quantize.bits, 8)
        choose(panel.recovery, "e2e")
        return "end-to-end recovery runs after every block is quantized"
    raise KeyError(case)


RUN_CASES = ["pattern N >= M", "pattern N = M", "pattern not N:M", "pattern 0:4", "override without '='",
             "override with a word for the sparsity", "override without a glob", "override sparsity out of range",
             "override with an N:M pattern", "SparseGPT blocksize not a multiple of M", "OWL sparsity beyond λ",
             "quantization group size not a multiple of 8", "joint pass with recovery",
             "quantization with end-to-end recovery"]


@pytest.mark.parametrize("case", RUN_CASES)
def test_a_bad_plan_is_refused_before_anything_runs(case, qtbot, window):
    panel = window.run_panel
    expected = _set_run_case(panel, case)
    runs = window.history.table.rowCount()
    started = []
    window.controller.run_started.connect(started.append)
    try:
        refused(qtbot, window, panel.run_button.click, expected)
    finally:
        window.controller.run_started.disconnect(started.append)
    assert started == [] and window.history.table.rowCount() == runs      # refused before any work
    assert panel.run_button.isEnabled()


def test_after_the_bad_plans_a_valid_run_prunes(qtbot, window):
    refused(qtbot, window, lambda: (window.run_panel.pattern.setCurrentText("5:4"), window.run_panel.run_button.click()),
            "0 < N < M")
    window.run_panel.pattern.setCurrentText("unstructured")
    record = still_prunes(qtbot, window)
    assert record.sparsity == pytest.approx(0.5)
    assert not window.message_bar.isVisible()                   # a new run hides the last message


def test_an_override_that_matches_no_layer_is_refused(qtbot, window):
    window.run_panel.overrides.setPlainText("*no_such_layer* = 0.3")
    ended = []
    window.controller.run_finished.connect(ended.append)
    try:
        window.run_panel.run_button.click()
        qtbot.waitUntil(lambda: ended or window.message_bar.isVisible(), timeout=WAIT)
    finally:
        window.controller.run_finished.disconnect(ended.append)
    qtbot.waitUntil(lambda: not window.controller.engine.busy, timeout=WAIT)
    window.run_panel.overrides.setPlainText("")
    assert window.message_bar.isVisible(), "the run went ahead without a word"
    assert_told(window, window.message_bar.text.text(), "no_such_layer")


def test_inputs_the_widgets_cannot_express(qtbot, window):
    """The rest of the command line's list cannot be typed here: the widgets hold them in range."""
    from PySide6.QtGui import QValidator

    panel, calibration = window.run_panel, window.calibration_panel
    panel.sparsity.setValue(1.0)
    assert panel.sparsity.value() < 1                       # sparsity 1 (and negative): not in the box's range
    panel.sparsity.setValue(-0.1)
    assert panel.sparsity.value() == 0
    assert panel.owl_lambda.maximum() <= 0.5                # OWL λ beyond 0.5
    assert panel.alps_rho.minimum() > 0 and panel.recovery_lr.minimum() > 0 and panel.recovery_epochs.minimum() > 0
    assert panel.dampening.minimum() > 0 and panel.blocksize.minimum() >= 1
    assert calibration.nsamples.minimum() >= 1 and calibration.seqlen.minimum() >= 2
    assert calibration.seqlen.maximum() == window.controller.loaded.context_length    # windows beyond the context
    assert all(panel.device.itemData(i) in ("auto", "cpu") or panel.device.itemData(i).startswith("cuda:")
               for i in range(panel.device.count()))       # only devices this machine has
    validator = panel.quantize.group_size.lineEdit().validator()
    assert validator.validate("-8", 0)[0] == QValidator.State.Invalid
    assert validator.validate("eight", 0)[0] == QValidator.State.Invalid
    assert window.evaluate_panel.seqlen.minimum() >= 8


# ---------------------------------------------------------------- evaluation (the Evaluate panel)


EVALUATION_CASES = {
    "missing file": ("missing", "no such file"),
    "no file chosen": ("", "Choose the text to measure perplexity on"),
    "empty file": ("empty", "fewer than one window of 16"),
    "shorter than one window": ("short", "fewer than one window of 16"),
    "binary file": ("binary", "looks binary"),
    "unsupported file type": ("pdf", "unsupported file type .pdf"),
    "JSON lines without the text field": ("jsonl without the field", "has no field 'text'"),
}


@pytest.mark.parametrize("case", list(EVALUATION_CASES))
def test_bad_evaluation_text_is_refused(case, qtbot, window, files, studio_calib_text):
    key, expected = EVALUATION_CASES[case]
    panel = window.evaluate_panel
    panel.path.setText(str(files[key]) if key else "")
    refused(qtbot, window, panel.button.click, expected)
    if key:                                           # an empty field is refused before a job starts
        assert window.progress_panel.bar.format().startswith("failed")
    panel.path.setText(str(studio_calib_text))
    with qtbot.waitSignal(window.controller.evaluation_done, timeout=WAIT):
        panel.button.click()
    assert panel.result.text().startswith("Perplexity: dense")


# ---------------------------------------------------------------- export (File > Export, the dialog)


@pytest.fixture
def pruned(qtbot, window):
    """The window with an unstructured, unquantized run applied (neither compact nor compressed-tensors applies)."""
    applied = window.controller.bench.applied
    if applied is None or applied.plan.pattern.structured or applied.plan.quantizing:
        still_prunes(qtbot, window)
    assert window.export_action.isEnabled()
    return window


def through_export_dialog(qtbot, window, fill) -> None:
    """File > Export as a user goes through it: once the engine's format checks are in, `fill(dialog)` makes
    the choices and says whether to press Export (else the dialog is cancelled)."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QDialogButtonBox

    from studio.export_dialog import ExportDialog

    outcome = {}

    def when_ready():
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, ExportDialog) or not dialog.refusals:       # still checking the formats
            QTimer.singleShot(10, when_ready)
            return
        try:
            outcome["press"] = fill(dialog)
        except BaseException as exc:       # never leave the modal dialog open: the test would hang
            outcome["error"] = exc
        if outcome.get("press"):
            dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).click()
        else:
            dialog.reject()

    QTimer.singleShot(0, when_ready)
    window.export_action.trigger()
    if "error" in outcome:
        raise outcome["error"]


def _ok(dialog):
    from PySide6.QtWidgets import QDialogButtonBox

    return dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)


def test_export_to_an_existing_folder_needs_the_overwrite_box(qtbot, pruned, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    seen = {}

    def fill(dialog):
        dialog.path.setText(str(existing))
        seen["ok"], seen["note"] = _ok(dialog).isEnabled(), dialog.note.text()
        return False

    through_export_dialog(qtbot, pruned, fill)
    assert seen["ok"] is False and "already exists" in seen["note"] and "tick the box" in seen["note"]
    refused(qtbot, pruned, lambda: pruned.controller.export(str(existing), False), "already exists")
    assert (existing / "keep.txt").read_text() == "mine"


def test_export_without_a_folder_cannot_be_pressed(qtbot, pruned):
    seen = {}

    def fill(dialog):
        dialog.path.setText("  ")
        seen["ok"], seen["note"] = _ok(dialog).isEnabled(), dialog.note.text()
        return False

    through_export_dialog(qtbot, pruned, fill)
    assert seen == {"ok": False, "note": "Choose an output folder."}


EXPORT_CASES = {
    "unwritable location": (lambda files, tmp: "/proc/nope/out", False, ""),
    "a file with overwrite ticked": (lambda files, tmp: str(files["a file"]), True, "is a file"),
    "inside a file": (lambda files, tmp: str(files["a file"] / "out"), False, "a file, not a folder"),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_a_bad_export_destination_is_refused(case, qtbot, pruned, files, tmp_path):
    where, overwrite, expected = EXPORT_CASES[case]
    out = where(files, tmp_path)

    def fill(dialog):
        dialog.path.setText(out)
        if overwrite:
            dialog.overwrite.setChecked(True)
        assert _ok(dialog).isEnabled()
        return True

    refused(qtbot, pruned, lambda: through_export_dialog(qtbot, pruned, fill), expected)
    assert pruned.progress_panel.bar.format().startswith("failed")
    assert Path(files["a file"]).read_text() == "a file where a folder should be"
    good = tmp_path / "good"
    with qtbot.waitSignal(pruned.controller.export_done, timeout=WAIT):
        through_export_dialog(qtbot, pruned, lambda dialog: dialog.path.setText(str(good)) or True)
    assert (good / "sparsity.json").is_file()


@pytest.mark.parametrize("fmt, expected", [("compact", "2:4 weights only"),
                                           ("compressed-tensors", "not quantized")])
def test_a_format_the_run_cannot_be_written_in_is_refused(fmt, expected, qtbot, pruned, tmp_path):
    seen = {}

    def fill(dialog):
        seen["enabled"], seen["why"] = dialog.radios[fmt].isEnabled(), dialog.radios[fmt].toolTip()
        return False

    through_export_dialog(qtbot, pruned, fill)
    assert seen["enabled"] is False and expected in seen["why"]        # disabled, saying why
    refused(qtbot, pruned, lambda: pruned.controller.export(str(tmp_path / "out"), False, fmt), expected)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the Benchmark tab and the Runs table


@pytest.mark.parametrize("tokens", ["1, two", "0", "", "-4"])
def test_bad_benchmark_token_counts_are_refused(tokens, qtbot, window):
    window.bench.tokens.setText(tokens)
    refused(qtbot, window, window.bench.start_button.click, "token counts")
    assert window.bench.start_button.isEnabled() and not window.bench.stop_button.isEnabled()


# ---------------------------------------------------------------- bugs: logged, shown, and the window goes on


def test_a_bug_in_a_job_is_logged_shown_and_the_next_job_runs(qtbot, window, monkeypatch, tmp_path, capfd):
    import core.workbench as workbench_module

    logs = tmp_path / "logs"
    monkeypatch.setenv("COMPRESSION_STUDIO_LOGS", str(logs))
    real_evaluate = workbench_module.evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("a deliberate bug in evaluate")

    monkeypatch.setattr(workbench_module, "evaluate", broken)
    with qtbot.waitSignal(window.controller.error, timeout=WAIT) as blocker:
        window.evaluate_panel.button.click()
    message = blocker.args[0]
    (log,) = logs.glob("crash-*.log")
    assert message == (f"evaluation failed unexpectedly: RuntimeError: a deliberate bug in evaluate; "
                       f"the details are in {log}")
    assert window.message_bar.isVisible() and window.message_bar.text.text() == message
    text = log.read_text()
    assert "studio job 'evaluation'" in text and "Traceback (most recent call last)" in text
    assert "in broken" in text and "RuntimeError: a deliberate bug in evaluate" in text
    assert "Traceback" not in capfd.readouterr().err       # logged, not printed
    assert_usable(qtbot, window)
    assert window.progress_panel.bar.format().startswith("failed")
    monkeypatch.setattr(workbench_module, "evaluate", real_evaluate)
    with qtbot.waitSignal(window.controller.evaluation_done, timeout=WAIT):
        window.evaluate_panel.button.click()
    assert window.evaluate_panel.result.text().startswith("Perplexity: dense")


def test_a_bug_in_a_run_clears_the_running_state(qtbot, window, monkeypatch, tmp_path):
    import core.workbench as workbench_module

    monkeypatch.setenv("COMPRESSION_STUDIO_LOGS", str(tmp_path / "logs"))
    monkeypatch.setattr(workbench_module, "prune_in_memory",
                        lambda *a, **k: (_ for _ in ()).throw(KeyError("missing layer")))
    with qtbot.waitSignal(window.controller.run_failed, timeout=WAIT):
        window.run_panel.run_button.click()
    message = window.message_bar.text.text()
    assert message.startswith("pruning failed unexpectedly: KeyError: 'missing layer'; the details are in ")
    assert Path(message.rsplit(" ", 1)[1]).is_file()
    assert_usable(qtbot, window)
    monkeypatch.undo()
    record = still_prunes(qtbot, window)
    assert record.sparsity == pytest.approx(0.5)


def test_without_a_log_folder_the_bug_is_still_shown_and_printed(qtbot, window, monkeypatch, files, capfd):
    import core.workbench as workbench_module

    monkeypatch.setenv("COMPRESSION_STUDIO_LOGS", str(files["a file"] / "logs"))      # cannot be created
    monkeypatch.setattr(workbench_module, "evaluate", lambda *a, **k: 1 / 0)
    with qtbot.waitSignal(window.controller.error, timeout=WAIT) as blocker:
        window.evaluate_panel.button.click()
    assert blocker.args[0].startswith("evaluation failed unexpectedly: ZeroDivisionError: division by zero; "
                                      "no crash log could be written")
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err


def test_a_bug_in_a_slot_on_the_window_thread_is_logged_and_shown(qtbot, window, monkeypatch, tmp_path):
    """A view failing to draw a result: the crash handler the app installs logs it and shows one line."""
    from studio.app import install_crash_handler

    logs = tmp_path / "logs"
    monkeypatch.setenv("COMPRESSION_STUDIO_LOGS", str(logs))

    def broken_view(dense, pruned):
        raise ValueError("the view could not draw this")

    monkeypatch.setattr(window.evaluate_panel, "show_result", broken_view)
    previous = sys.excepthook
    install_crash_handler(window)
    try:
        with qtbot.waitSignal(window.controller.evaluation_done, timeout=WAIT):
            window.evaluate_panel.button.click()
        qtbot.waitUntil(window.message_bar.isVisible, timeout=WAIT)
    finally:
        sys.excepthook = previous
    (log,) = logs.glob("crash-*.log")
    assert window.message_bar.text.text() == (f"an update of the window failed unexpectedly: ValueError: the view "
                                              f"could not draw this; the details are in {log}")
    assert "in broken_view" in log.read_text() and "studio window (GUI thread)" in log.read_text()
    monkeypatch.undo()
    with qtbot.waitSignal(window.controller.evaluation_done, timeout=WAIT):
        window.evaluate_panel.button.click()
    assert window.evaluate_panel.result.text().startswith("Perplexity: dense")
