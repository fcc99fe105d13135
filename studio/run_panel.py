"""Pruning choices: method, sparsity, pattern, SparseGPT options, device, per-layer overrides and the
ignore list. Collects them as keyword arguments for `core.pruning.plan.PrunePlan.build`; validates nothing
itself (the plan does, and its message is shown)."""

from __future__ import annotations

import torch
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout,
                               QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from core.pruning.methods import METHODS
from core.pruning.methods.sparsegpt import Options


class RunPanel(QGroupBox):
    run_requested = Signal()
    cancel_requested = Signal()

    def __init__(self, parent=None):
        super().__init__("Prune", parent)
        self.method = QComboBox()
        for name, method in METHODS.items():
            self.method.addItem(name, name)
            self.method.setItemData(self.method.count() - 1, method.summary, role=3)  # tooltip role
        self.method.setCurrentText("wanda")
        self.pattern = QComboBox()
        self.pattern.setEditable(True)
        self.pattern.addItems(["unstructured", "2:4", "4:8"])
        self.pattern.setToolTip("unstructured, or N:M (keep N of every M weights along the input), e.g. 2:4")
        self.sparsity = QDoubleSpinBox()
        self.sparsity.setRange(0.0, 0.99)
        self.sparsity.setSingleStep(0.05)
        self.sparsity.setValue(0.5)
        self.pattern.currentTextChanged.connect(self._pattern_changed)
        self.device = QComboBox()
        for label, value in devices():
            self.device.addItem(label, value)
        self.blocksize = QSpinBox()
        self.blocksize.setRange(1, 4096)
        self.blocksize.setValue(Options.blocksize)
        self.dampening = QDoubleSpinBox()
        self.dampening.setDecimals(4)
        self.dampening.setRange(0.0001, 1.0)
        self.dampening.setSingleStep(0.01)
        self.dampening.setValue(Options.dampening)
        self.update_weights = QCheckBox("update kept weights")
        self.update_weights.setChecked(Options.update_weights)
        self.sparsegpt_box = QWidget()
        sg = QFormLayout(self.sparsegpt_box)
        sg.setContentsMargins(0, 0, 0, 0)
        sg.addRow("Blocksize", self.blocksize)
        sg.addRow("Dampening", self.dampening)
        sg.addRow("", self.update_weights)
        self.method.currentTextChanged.connect(lambda m: self.sparsegpt_box.setVisible(m == "sparsegpt"))
        self.sparsegpt_box.setVisible(False)
        self.overrides = QPlainTextEdit()
        self.overrides.setPlaceholderText("Per-layer overrides, one per line: glob = sparsity\ne.g. *mlp.down_proj = 0.3")
        self.overrides.setMaximumHeight(54)
        self.ignore = QLineEdit()
        self.ignore.setPlaceholderText("Keep dense (globs, comma-separated), e.g. *.0.*, *o_proj")
        form = QFormLayout()
        form.addRow("Method", self.method)
        form.addRow("Pattern", self.pattern)
        form.addRow("Sparsity", self.sparsity)
        form.addRow("Device", self.device)
        self.run_button = QPushButton("Run")
        self.run_button.setObjectName("primary")
        self.run_button.clicked.connect(self.run_requested)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("danger")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 2)
        buttons.addWidget(self.cancel_button, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.sparsegpt_box)
        layout.addWidget(self.overrides)
        layout.addWidget(self.ignore)
        layout.addLayout(buttons)

    def plan_options(self) -> dict:
        """Keyword arguments for PrunePlan.build, overrides and ignore list as typed (the plan parses them)."""
        pattern = self.pattern.currentText().strip() or "unstructured"
        return {
            "method": self.method.currentData(),
            "pattern": pattern,
            "sparsity": None if pattern != "unstructured" else self.sparsity.value(),
            "device": self.device.currentData(),
            "overrides": tuple(self.overrides.toPlainText().splitlines()),
            "ignore": self.ignore.text(),
            "sparsegpt": Options(self.blocksize.value(), self.dampening.value(), self.update_weights.isChecked()),
        }

    def set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def state(self) -> dict:
        return {"method": self.method.currentText(), "pattern": self.pattern.currentText(),
                "sparsity": self.sparsity.value(), "blocksize": self.blocksize.value(),
                "dampening": self.dampening.value(), "update_weights": self.update_weights.isChecked()}

    def restore_state(self, state: dict) -> None:
        if not state:
            return
        self.method.setCurrentText(str(state.get("method", "wanda")))
        self.pattern.setCurrentText(str(state.get("pattern", "unstructured")))
        self.sparsity.setValue(float(state.get("sparsity", 0.5)))
        self.blocksize.setValue(int(state.get("blocksize", Options.blocksize)))
        self.dampening.setValue(float(state.get("dampening", Options.dampening)))
        self.update_weights.setChecked(str(state.get("update_weights", True)).lower() in ("true", "1"))

    def _pattern_changed(self, text: str) -> None:
        structured = text.strip() not in ("", "unstructured")
        self.sparsity.setEnabled(not structured)


def devices() -> list[tuple[str, str]]:
    """The CPU and every CUDA device with its free memory."""
    found = [("auto (CUDA if present)", "auto"), ("CPU", "cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            found.append((f"cuda:{i} {torch.cuda.get_device_name(i)} ({free / 2**30:.1f} of {total / 2**30:.0f} GiB free)",
                          f"cuda:{i}"))
    return found
