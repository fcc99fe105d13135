"""The job in progress: a bar with its step (block and layer during a run), elapsed time and, where the
total is known, an ETA; and a log of messages."""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget

from core.events import BlockStarted, Finished, LayerPruned, Message, Phase, eta_seconds


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
        self.step = None                  # (name, started, done, total) of the current step with a known total
        self._ticker = QTimer(self, interval=500)
        self._ticker.timeout.connect(self._refresh_label)

    def begin(self, title: str) -> None:
        self.started = time.perf_counter()
        self.blocks_done, self.blocks_total, self.layer, self.step = 0, 0, "", None
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
        self.started = None
        self.write(text)

    def on_event(self, event) -> None:
        if isinstance(event, BlockStarted):
            self.blocks_done, self.blocks_total = event.index, event.total
            self.bar.setRange(0, event.total)
            self.bar.setValue(event.index)
            self.bar.setFormat(f"block {event.index + 1} of {event.total}")
        elif isinstance(event, Phase):
            if event.name == "prune":
                self.layer = event.detail
            elif self.blocks_total == 0 and event.total:
                self.bar.setRange(0, event.total)
                self.bar.setValue(event.done)
                self.bar.setFormat(f"{event.name} {event.done}/{event.total}")
                self._track_step(event)
        elif isinstance(event, LayerPruned):
            r = event.result
            error = "" if r.error is None else f", error {r.error:.3g}"
            self.write(f"{r.name}: {r.sparsity:.1%} zeros{error} ({r.seconds:.2f} s)")
        elif isinstance(event, Message):
            self.write(("⚠ " if event.level == "warning" else "") + event.text)
        elif isinstance(event, Finished) and self.blocks_total:
            self.bar.setValue(self.blocks_total)
        self._refresh_label()

    def _track_step(self, event: Phase) -> None:
        """Remember when the current step began, for its ETA; a new name or a count going back is a new step."""
        restarted = self.step is None or self.step[0] != event.name or event.done < self.step[2]
        since = time.perf_counter() if restarted else self.step[1]
        self.step = (event.name, since, event.done, event.total)

    def write(self, text: str) -> None:
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S')}  {text}")

    def _refresh_label(self) -> None:
        if self.started is None:
            return
        elapsed = time.perf_counter() - self.started
        text = f"elapsed {elapsed:.0f} s"
        eta = eta_seconds(self.started, self.blocks_done, self.blocks_total)
        if eta is None and self.step is not None:
            name, since, done, total = self.step
            eta = eta_seconds(since, done, total)
            text = f"{name}: {text}"
        if eta is not None:
            text += f",  ETA {eta:.0f} s"
        if self.layer:
            text += f"   ·  {self.layer}"
        self.label.setText(text)
