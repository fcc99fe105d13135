"""A first run that needs no files: with nothing chosen but the model, Run calibrates on text the model writes
itself, labelled as such in the panel and the export; adding a file switches to the files."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.data.generated import GeneratedCalibration, GenerationOptions, generate_ids
from studio.calibration_panel import FILE_WINDOWS, GENERATED_WINDOWS, CalibrationPanel

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.qt_log_ignore(r"^This plugin does not support propagateSizeHints\(\)$")

WAIT = 60_000


def test_run_with_nothing_chosen_calibrates_on_text_the_model_writes(qtbot, studio_window, studio_tiny_llama,
                                                                     tmp_path):
    window, panel = studio_window, studio_window.calibration_panel
    assert panel.generated.chosen and not panel.files.isEnabled()          # the default when no file is given
    with qtbot.waitSignal(window.controller.model_opened, timeout=WAIT):
        window.open_model(str(studio_tiny_llama))
    assert window.control_tabs.currentIndex() == 2                         # the Prune tab: Run is one press away
    panel.nsamples.setValue(2)
    panel.seqlen.setValue(16)
    panel.seed.setValue(4)
    window.run_panel.device.setCurrentIndex(window.run_panel.device.findData("cpu"))
    with qtbot.waitSignal(window.controller.run_finished, timeout=WAIT):
        window.run_panel.run_button.click()
    calib = window.controller.bench.calib
    assert isinstance(calib, GeneratedCalibration) and calib.input_ids.shape == (2, 16)
    assert "the model wrote itself" in panel.status.text() and "seed 4" in panel.status.text()
    model = AutoModelForCausalLM.from_pretrained(studio_tiny_llama).eval()   # the dense model, seeded
    assert torch.equal(calib.input_ids, generate_ids(model, calib.start_token, 2, 16, 4, GenerationOptions()))
    out = tmp_path / "pruned"
    with qtbot.waitSignal(window.controller.export_done, timeout=WAIT):
        window.controller.export(str(out), False)
    report = json.loads((out / "sparsity.json").read_text())
    assert report["calibration"]["source"] == "self-generated" and report["calibration"]["seed"] == 4


def test_adding_a_file_switches_to_the_files_and_the_choice_can_come_back(qtbot, studio_window, studio_calib_text):
    panel = studio_window.calibration_panel
    assert panel.choice().generate is not None and panel.choice().files == ()
    assert panel.load_button.text() == "Write calibration text"
    panel.add_files([str(studio_calib_text)])
    assert not panel.generated.chosen and panel.files.isEnabled()
    assert panel.choice().generate is None and panel.choice().files == (str(studio_calib_text),)
    panel.generated.set_chosen(True)
    assert panel.choice().generate is not None and panel.choice().files == ()
    assert not panel.files.isEnabled() and panel.load_button.text() == "Write calibration text"


def test_the_models_own_text_starts_small_and_files_go_back_to_the_reference(qtbot):
    panel = CalibrationPanel()
    qtbot.addWidget(panel)
    assert panel.generated.chosen
    assert (panel.nsamples.value(), panel.seqlen.value()) == GENERATED_WINDOWS
    panel.generated.set_chosen(False)
    assert (panel.nsamples.value(), panel.seqlen.value()) == FILE_WINDOWS
    panel.nsamples.setValue(7)                      # the user's own numbers are kept
    panel.generated.set_chosen(True)
    assert panel.nsamples.value() == 7
