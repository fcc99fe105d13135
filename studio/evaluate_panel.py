"""Perplexity choices: the text file to score, the window length and how many windows."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QSpinBox, QVBoxLayout)

from core.workbench import EvaluationRequest

from .zero_shot_table import ZeroShotTable


class EvaluatePanel(QGroupBox):
    evaluate_requested = Signal(object)   # EvaluationRequest

    def __init__(self, parent=None):
        super().__init__("Evaluate", parent)
        self.path = QLineEdit(placeholderText="Evaluation text, e.g. wiki.test.raw")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._choose)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        self.seqlen = QSpinBox()
        self.seqlen.setRange(8, 32768)
        self.seqlen.setValue(512)
        self.windows = QSpinBox()
        self.windows.setRange(0, 100000)
        self.windows.setValue(8)
        self.windows.setSpecialValueText("all")
        form = QFormLayout()
        form.addRow("Window", self.seqlen)
        form.addRow("Max windows", self.windows)
        self.button = QPushButton("Perplexity: dense and pruned")
        self.button.clicked.connect(lambda: self.evaluate_requested.emit(self.choice()))
        self.result = QLabel("")
        self.result.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addLayout(form)
        layout.addWidget(self.button)
        layout.addWidget(self.result)
        self.tasks = ZeroShotTable()          # zero-shot accuracy, started from the main window
        layout.addWidget(self.tasks)

    def choice(self) -> EvaluationRequest:
        return EvaluationRequest(self.path.text().strip(), self.seqlen.value(), self.windows.value())

    def show_result(self, dense, pruned) -> None:
        text = f"dense {dense.ppl:.2f}"
        if pruned is not None:
            text += f"   →   pruned {pruned.ppl:.2f}"
        self.result.setText(f"Perplexity: {text}   ({dense.windows} × {dense.seqlen} tokens)")

    def _choose(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Evaluation text")
        if path:
            self.path.setText(path)
