"""Structured shrinking in the studio: the Prune panel's Shrink section builds the request, Shrink runs the
engine job on a copy (the dense model stays), the result shows the new shapes and perplexity, and Export
writes a folder transformers loads with the shrunk model's logits, on the tiny Llama."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("pytestqt")

pytestmark = pytest.mark.qt_log_ignore(r"^This plugin does not support propagateSizeHints\(\)$")

WAIT = 120_000


def test_the_section_builds_the_request_shrink_sends(qtbot):
    from studio.structure_options import StructureOptions

    options = StructureOptions()
    qtbot.addWidget(options)
    options.mlp.setValue(0.25)
    options.heads.setValue(0.5)
    options.criterion.setCurrentIndex(options.criterion.findData("wanda"))
    options.recovery.setCurrentIndex(options.recovery.findData("blockwise"))
    with qtbot.waitSignal(options.shrink_requested, timeout=1000) as blocker:
        options.shrink_button.click()
    request = blocker.args[0]
    assert (request.spec.mlp, request.spec.heads, request.spec.criterion) == (0.25, 0.5, "wanda")
    assert request.recovery.mode == "blockwise" and request.evaluation is None
    assert not options.export_button.isEnabled()      # nothing to export until a shrink finishes


def test_shrink_shows_the_smaller_model_and_exports_it(qtbot, studio_window, studio_tiny_llama,
                                                        studio_calib_text, tmp_path):
    from transformers import AutoModelForCausalLM

    window = studio_window
    with qtbot.waitSignal(window.controller.model_opened, timeout=WAIT):
        window.open_model(str(studio_tiny_llama))
    window.calibration_panel.add_files([str(studio_calib_text)])
    window.calibration_panel.nsamples.setValue(4)
    window.calibration_panel.seqlen.setValue(32)
    window.evaluate_panel.path.setText(str(studio_calib_text))
    window.evaluate_panel.seqlen.setValue(32)
    window.evaluate_panel.windows.setValue(2)
    options = window.run_panel.structure
    options.mlp.setValue(0.25)
    options.heads.setValue(0.5)
    options.recovery.setCurrentIndex(options.recovery.findData("blockwise"))
    dense = {k: v.clone() for k, v in window.controller.bench.loaded.model.state_dict().items()}
    with qtbot.waitSignal(window.controller.shrink_finished, timeout=WAIT) as blocker:
        options.shrink_button.click()
    view = blocker.args[0]
    assert view["intermediate_size"] == [128, 96] and view["num_attention_heads"] == [4, 2]
    assert view["parameters"][1] < view["parameters"][0]
    assert all(isinstance(v, (str, int, float, list, type(None))) for v in view.values())   # no tensor crosses
    text = options.result.text()
    assert f"{view['parameters'][1]:,}" in text and "MLP 128 → 96" in text and "perplexity" in text
    assert options.export_button.isEnabled() and options.shrink_button.isEnabled()
    # the session's dense model is untouched: the shrink worked on a copy
    after = window.controller.bench.loaded.model.state_dict()
    assert all(torch.equal(dense[k], after[k]) for k in dense)

    out = tmp_path / "small"
    options.out.setText(str(out))
    with qtbot.waitSignal(window.controller.export_done, timeout=WAIT):
        options.export_button.click()
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 96 and config["num_attention_heads"] == 2
    shrunk = window.controller.bench.shrunk.loaded.model
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(2, 200, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, shrunk(input_ids=ids).logits)
    report = json.loads((out / "sparsity.json").read_text())["structure"]
    assert report["recovery"]["mode"] == "blockwise" and len(report["recovery_blocks"]) == 2


def test_a_fraction_the_model_cannot_meet_shows_one_line_and_keeps_the_window_usable(
        qtbot, studio_window, studio_tiny_llama, studio_calib_text):
    window = studio_window
    with qtbot.waitSignal(window.controller.model_opened, timeout=WAIT):
        window.open_model(str(studio_tiny_llama))
    window.calibration_panel.add_files([str(studio_calib_text)])
    window.calibration_panel.nsamples.setValue(2)
    window.calibration_panel.seqlen.setValue(32)
    options = window.run_panel.structure
    options.heads.setValue(0.25)            # 2 key/value groups: only multiples of 0.5
    with qtbot.waitSignal(window.controller.shrink_failed, timeout=WAIT) as blocker:
        options.shrink_button.click()
    assert "whole key/value groups" in blocker.args[0] and "\n" not in blocker.args[0]
    assert "whole key/value groups" in options.result.text()
    assert options.shrink_button.isEnabled() and not options.export_button.isEnabled()
    assert window.controller.bench.shrunk is None
