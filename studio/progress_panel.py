"""The job in progress: a bar with its step (block and layer during a run, a block's recovery and its
quantization),
elapsed time and, where the total is known, an ETA; and a log of messages."""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget

from core.events import (AllocationChosen, BlockRecovered, BlockStarted, Finished, LayerPruned, Message, Phase,
                         RecoveryStep, eta_seconds)
from core.kernels.results import MemorySampled

# How the engine's step names read in the bar and the label; any other name shows as it is.
PHASE_NAMES = {"recover": "recovering", "survey outliers": "surveying outliers (OWL)", "quantize": "quantizing"}


def phase_name(name: str) -> str:
    return PHASE_NAMES.get(name, name)


class ProgressPanel(QWidget):
    stop_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setFormat("idle")
        self.label = QLabel("")
        self.label.setMinimumWidth(320)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the job in progress: opening, calibration, a run, an evaluation, an export")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_requested)
        top = QHBoxLayout()
        top.addWidget(self.bar, 3)
        top.addWidget(self.label, 2)
        top.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.log, 1)
        self.started = None
        self.blocks_done, self.blocks_total, self.layer = 0, 0, ""
        self.step = None                  # (name, started, done at start, done, total) of the step with a known total
        self.recovering = None            # (block, started, steps done at start, step, total, loss) of a recovery
        self.quantizing = None            # (layers done, layers) of the current block's quantization
        self._recovery_start = None       # when the current "recover" phase began
        self.vram = None                  # (allocated, reserved) bytes of the latest VRAM sample (CUDA runs only)
        self._ticker = QTimer(self, interval=500)
        self._ticker.timeout.connect(self._refresh_label)

    def begin(self, title: str) -> None:
        self.started = time.perf_counter()
        self.blocks_done, self.blocks_total, self.layer, self.step, self.recovering = 0, 0, "", None, None
        self.quantizing, self.vram = None, None
        self.bar.setRange(0, 0)
        self.bar.setFormat(title)
        self.write(title)
        self._ticker.start()

    def end(self, text: str) -> None:
        self._ticker.stop()
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if text.startswith("done") else 0)
        self.bar.setFormat(text)
        elapsed = time.perf_counter() - self.started if self.started else 0.0
        self.label.setText(f"{text} in {elapsed:.1f} s" if self.started else text)
        self.started, self.recovering, self._recovery_start, self.quantizing = None, None, None, None
        self.write(text)

    def on_event(self, event) -> None:
        if isinstance(event, MemorySampled):
            if event.sample.allocated_bytes is not None:
                self.vram = (event.sample.allocated_bytes, event.sample.reserved_bytes)
        elif isinstance(event, BlockStarted):
            self.blocks_done, self.blocks_total = event.index, event.total
            self.step, self.recovering, self.quantizing = None, None, None   # what came before is over
            self.bar.setRange(0, event.total)
            self.bar.setValue(event.index)
            self.bar.setFormat(self._block_text())
        elif isinstance(event, Phase):
            quantizing = self.quantizing
            self.quantizing = (event.done, event.total) if event.name == "quantize" and self.blocks_total else None
            if event.name == "prune" or self.quantizing is not None:
                self.layer = event.detail
            elif self.blocks_total == 0 and event.total:
                self.bar.setRange(0, event.total)
                self.bar.setValue(event.done)
                self.bar.setFormat(f"{phase_name(event.name)} {event.done}/{event.total}")
                self._track_step(event)
            if event.name == "recover" and event.done == 0:
                self.recovering, self._recovery_start = None, time.perf_counter()   # a recovery's own clock
            elif event.name != "recover" and self.recovering is not None:
                self.recovering = None
                if self.blocks_total:
                    self.bar.setFormat(self._block_text())
            if self.blocks_total and (self.quantizing is not None or quantizing is not None):
                self.bar.setFormat(self._block_text())       # the block's quantization, begun or over
        elif isinstance(event, RecoveryStep):
            self._track_recovery(event)
        elif isinstance(event, BlockRecovered):
            self.write(_recovered_text(event))
        elif isinstance(event, AllocationChosen):
            self.write(_allocation_text(event.allocation))
        elif isinstance(event, LayerPruned):
            r = event.result
            error = "" if r.error is None else f", error {r.error:.3g}"
            if r.quant_error is not None:
                error += f" (quantization {r.quant_error:.3g})"
            self.write(f"{r.name}: {r.sparsity:.1%} zeros{error} ({r.seconds:.2f} s)")
        elif isinstance(event, Message):
            self.write(("⚠ " if event.level == "warning" else "") + event.text)
        elif isinstance(event, Finished) and self.blocks_total:
            self.bar.setValue(self.blocks_total)
            # Every block is done; a step after them (end-to-end recovery) gets the bar to itself.
            self.blocks_done, self.blocks_total, self.layer, self.recovering = 0, 0, "", None
        self._refresh_label()

    def _block_text(self) -> str:
        text = f"block {self.blocks_done + 1} of {self.blocks_total}"
        if self.recovering is not None:
            _, _, _, step, total, _ = self.recovering
            text += f"  ·  {phase_name('recover')} {step}/{total}"
        elif self.quantizing is not None:
            done, total = self.quantizing
            text += f"  ·  {phase_name('quantize')} {min(done + 1, total)}/{total}"
        return text

    def _track_step(self, event: Phase) -> None:
        """Remember when the current step began, for its ETA; a new name or a count going back is a new step.
        A step first seen midway (its first report after some work) counts from there."""
        restarted = self.step is None or self.step[0] != event.name or event.done < self.step[3]
        since, first = (time.perf_counter(), event.done) if restarted else self.step[1:3]
        self.step = (event.name, since, first, event.done, event.total)

    def _track_recovery(self, event: RecoveryStep) -> None:
        now = time.perf_counter()
        current = self.recovering
        if current is None or current[0] != event.block or event.step < current[3]:
            if self._recovery_start is not None:      # counted from the "recover" phase's start
                current = (event.block, self._recovery_start, 0)
            else:                                     # from the first step seen
                current = (event.block, now, event.step)
            self._recovery_start = None
        self.recovering = (event.block, current[1], current[2], event.step, event.total, event.loss)
        if self.blocks_total:
            self.bar.setFormat(self._block_text())

    def _recovery_text(self) -> str:
        block, since, first, step, total, loss = self.recovering
        if block < 0 or not self.blocks_total:      # after the blocks: the bar and the ETA are the recovery's
            return f"{'end-to-end' if block < 0 else f'block {block}'}, {'KL' if block < 0 else 'loss'} {loss:.3g}"
        text = f"{phase_name('recover')} block {block}: step {step} of {total}"
        eta = eta_seconds(since, step - first, total - first)     # this block's; the run's ETA comes first
        if eta is not None:
            text += f" (ETA {eta:.0f} s)"
        return text + f", loss {loss:.3g}"

    def write(self, text: str) -> None:
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S')}  {text}")

    def _refresh_label(self) -> None:
        if self.started is None:
            return
        elapsed = time.perf_counter() - self.started
        text = f"elapsed {elapsed:.0f} s"
        eta = eta_seconds(self.started, self.blocks_done, self.blocks_total)
        if eta is None and self.step is not None:
            name, since, first, done, total = self.step
            eta = eta_seconds(since, done - first, total - first)
            text = f"{phase_name(name)}: {text}"
        if eta is not None:
            text += f",  ETA {eta:.0f} s"
        if self.recovering is not None:
            text += f"   ·  {self._recovery_text()}"
        elif self.layer:
            text += f"   ·  {phase_name('quantize') + ' ' if self.quantizing is not None else ''}{self.layer}"
        if self.vram is not None:
            text += f"   ·  {vram_text(*self.vram)}"
        self.label.setText(text)


def vram_text(allocated: int, reserved: int | None) -> str:
    text = f"VRAM {allocated / 2**30:.2f} GiB allocated"
    return text + (f", {reserved / 2**30:.2f} GiB reserved" if reserved is not None else "")


def _recovered_text(event: BlockRecovered) -> str:
    curve = event.curve
    if event.block < 0:
        return (f"end-to-end recovery: KL {curve.before:.3g} → {curve.after:.3g} per token "
                f"in {curve.steps} steps ({curve.seconds:.1f} s)")
    return (f"block {event.block} recovered: output error {curve.before:.3g} → {curve.after:.3g} "
            f"in {curve.steps} steps ({curve.seconds:.1f} s)")


def _allocation_text(allocation) -> str:
    low, high = min(allocation.sparsity), max(allocation.sparsity)
    text = (f"{allocation.kind.upper() if allocation.kind == 'owl' else allocation.kind} allocation: block sparsity "
            f"{low:.1%} to {high:.1%}, mean {allocation.mean:.1%}")
    if allocation.patterns is not None:
        dense = sum(p is None for p in allocation.patterns)
        if dense:
            text += f", {dense} block{'s' if dense > 1 else ''} kept dense"
    return text
