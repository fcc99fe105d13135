"""The progress line of every job: elapsed time always, and an ETA wherever the total is known."""

from __future__ import annotations

import pytest

from core.events import BlockStarted, Phase
from core.kernels.results import MemorySample, MemorySampled

pytest.importorskip("pytestqt")


@pytest.fixture
def panel(qtbot, monkeypatch):
    import studio.progress_panel as module

    clock = {"now": 100.0}
    monkeypatch.setattr(module.time, "perf_counter", lambda: clock["now"])
    panel = module.ProgressPanel()
    qtbot.addWidget(panel)
    return panel, clock


def test_a_step_with_a_total_shows_its_eta(panel):
    panel, clock = panel
    panel.begin("perplexity on wiki.test.raw")
    panel.on_event(Phase("perplexity", 0, 10))
    clock["now"] += 4.0
    panel.on_event(Phase("perplexity", 4, 10))         # 4 of 10 in 4 s: 6 s to go
    assert panel.label.text() == "perplexity: elapsed 4 s,  ETA 6 s"
    panel.on_event(Phase("export", 0, 3))              # a new step starts its own clock
    clock["now"] += 1.0
    panel.on_event(Phase("export", 1, 3))
    assert panel.label.text() == "export: elapsed 5 s,  ETA 2 s"


def test_a_run_counts_blocks_after_its_calibration(panel):
    panel, clock = panel
    panel.begin("wanda unstructured at 50%")
    panel.on_event(Phase("tokenize calibration", 0, 1, "calib.txt"))
    clock["now"] += 2.0
    panel.on_event(Phase("tokenize calibration", 1, 1))
    panel.on_event(BlockStarted(0, 30))
    clock["now"] += 3.0
    panel.on_event(BlockStarted(10, 30))                # 10 blocks in 5 s since the run began
    panel.on_event(Phase("prune", 2, 7, "model.layers.10.mlp.up_proj"))
    assert panel.label.text() == "elapsed 5 s,  ETA 10 s   ·  model.layers.10.mlp.up_proj"
    assert panel.bar.format() == "block 11 of 30"
    panel.end("done: run 1")
    assert panel.label.text() == "done: run 1 in 5.0 s"


def test_recovery_shows_as_its_own_step_with_its_eta(panel):
    from core.events import BlockRecovered, Finished, RecoveryStep
    from core.recovery.blockwise import RecoveryCurve

    panel, clock = panel
    panel.begin("wanda unstructured at 50%, blockwise recovery")
    panel.on_event(BlockStarted(0, 2))
    panel.on_event(Phase("prune", 0, 7, "model.layers.0.self_attn.q_proj"))
    clock["now"] += 1.0
    panel.on_event(Phase("recover", 0, 4, "block 0"))
    clock["now"] += 2.0
    panel.on_event(RecoveryStep(0, 1, 4, 0.25))
    panel.on_event(Phase("recover", 1, 4, "block 0 loss 0.25"))
    assert panel.bar.format() == "block 1 of 2  ·  recovering 1/4"
    assert panel.label.text() == "elapsed 3 s   ·  recovering block 0: step 1 of 4 (ETA 6 s), loss 0.25"
    panel.on_event(BlockRecovered(0, RecoveryCurve(0, 0.3, 0.1, 4, 8.0, [0.25, 0.2, 0.15, 0.1])))
    assert "block 0 recovered: output error 0.3 → 0.1 in 4 steps (8.0 s)" in panel.log.toPlainText()
    panel.on_event(Phase("propagate", 0, 1, "block 0"))        # recovery is over: the bar says the block again
    assert panel.bar.format() == "block 1 of 2"
    panel.on_event(BlockStarted(1, 2))
    panel.on_event(Finished())
    clock["now"] += 1.0
    panel.on_event(RecoveryStep(-1, 1, 10, 0.5))                  # end to end, after the blocks
    panel.on_event(Phase("recover", 1, 10, "KL 0.5"))
    assert panel.bar.format() == "recovering 1/10"
    assert panel.label.text() == "recovering: elapsed 4 s   ·  end-to-end, KL 0.5"
    clock["now"] += 2.0
    panel.on_event(Phase("recover", 3, 10, "KL 0.4"))              # 2 steps in 2 s since the first: 7 s to go
    assert panel.label.text() == "recovering: elapsed 6 s,  ETA 7 s   ·  end-to-end, KL 0.5"


def test_live_vram_shows_beside_the_run_and_not_for_a_cpu_sample(panel):
    panel, clock = panel
    panel.begin("pruning")
    panel.on_event(BlockStarted(0, 4))
    panel.on_event(MemorySampled(MemorySample(0.0, None, None, None, 123)))       # the CPU's view: no VRAM
    assert "VRAM" not in panel.label.text()
    panel.on_event(MemorySampled(MemorySample(1.0, 3 << 29, 2 << 30, None, None)))
    assert panel.label.text().endswith("VRAM 1.50 GiB allocated, 2.00 GiB reserved")
    panel.begin("next run")
    panel.on_event(BlockStarted(0, 4))
    assert panel.vram is None and "VRAM" not in panel.label.text()
