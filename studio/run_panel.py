"""Pruning choices: method, sparsity, pattern, the method's options (SparseGPT, ALPS), device, how the
sparsity is spread over the blocks (allocation), recovery after pruning, per-layer overrides, the
ignore list and the quantization after pruning (studio/quantize_options.py). Method "none" quantizes
without pruning: sparsity, pattern, overrides and allocation do not apply to it. Collects them as keyword
arguments for `core.pruning.plan.PrunePlan.build`; validates nothing itself (the plan does, and its
message is shown)."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from PySide6.QtCore import Signal
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout,
                               QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from core.errors import UserError
from core.patterns import parse_pattern
from core.pruning.allocation import AllocationOptions
from core.pruning.methods import METHODS
from core.pruning.methods.alps import Options as ALPSOptions
from core.pruning.methods.sparsegpt import Options
from core.recovery.options import RecoveryOptions

from .combo import choice_combo
from .quantize_options import QuantizeOptions
from .structure_options import StructureOptions

ALLOCATIONS = [("uniform", "uniform"), ("OWL (outlier-weighted)", "owl"), ("edited (Edit allocation tab)", "explicit")]
RECOVERIES = [("none", "none"), ("blockwise", "blockwise"), ("end-to-end", "e2e")]

ALLOCATION_TIP = ("How the target sparsity is spread over the decoder blocks.\n"
                  "uniform: every block at the target.\n"
                  "OWL: blocks with more outlier weights (Wanda scores above M × the block's mean, measured on the "
                  "dense model) keep more of their weights; the mean over blocks stays the target.\n"
                  "edited: the per-block sparsity set in the Edit allocation tab (dragged, typed, or from OWL or a "
                  "sensitivity profile), used as it is.")
RECOVERY_TIP = ("Train the kept weights after pruning; pruned weights stay exactly zero.\n"
                "blockwise: right after each block is pruned, its outputs are fitted to the dense block's "
                "(one block in memory at a time).\n"
                "end-to-end: after every block is pruned, the whole model is fitted to the dense model's "
                "next-token distributions (KL); needs the model twice in memory.")


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
        self.pattern.addItems(["unstructured", "2:4", "4:8", "rows", "columns", "blocks:64x64"])
        self.pattern.setToolTip("unstructured; N:M (keep N of every M weights along the input), e.g. 2:4; or whole "
                                "output rows, input columns or HxW blocks (blocks:64x64) at the sparsity set here")
        self.sparsity = QDoubleSpinBox()
        self.sparsity.setRange(0.0, 0.99)
        self.sparsity.setSingleStep(0.05)
        self.sparsity.setValue(0.5)
        self.pattern.currentTextChanged.connect(self._pattern_changed)
        self.device = QComboBox()
        for label, value in devices():
            self.device.addItem(label, value)
        self._build_sparsegpt()
        self._build_alps()
        self._build_allocation_and_recovery()
        self.quantize = QuantizeOptions()
        self.structure = StructureOptions()      # a smaller model, not a mask: its own Shrink button
        self.overrides = QPlainTextEdit()
        self.overrides.setPlaceholderText("Per-layer overrides, one per line: glob = sparsity\ne.g. *mlp.down_proj = 0.3")
        self.overrides.setMaximumHeight(54)
        self.method.currentTextChanged.connect(self._method_changed)
        self._method_changed(self.method.currentText())
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
        layout.addWidget(self.alps_box)
        layout.addLayout(self.spread_form)
        layout.addWidget(self.overrides)
        layout.addWidget(self.ignore)
        layout.addWidget(self.quantize)
        layout.addLayout(buttons)
        layout.addWidget(self.structure)

    def _build_sparsegpt(self) -> None:
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

    def _build_alps(self) -> None:
        self.alps_rho = ScientificSpinBox(1e-6, 1e6)
        self.alps_rho.setValue(ALPSOptions.rho)
        self.alps_rho.setToolTip("ALPS's initial ADMM penalty ρ₀. ALPS raises ρ as the kept positions settle "
                                 "(and lowers it when it started too high); the paper starts at 0.1.")
        self.alps_iterations = QSpinBox()
        self.alps_iterations.setRange(0, 100_000)
        self.alps_iterations.setSingleStep(50)
        self.alps_iterations.setValue(ALPSOptions.max_iterations)
        self.alps_iterations.setToolTip("ADMM iterations at most per layer; it stops earlier once the kept "
                                        "positions stop changing")
        self.alps_refit = QSpinBox()
        self.alps_refit.setRange(0, 10_000)
        self.alps_refit.setValue(ALPSOptions.refit_steps)
        self.alps_refit.setToolTip("Conjugate-gradient steps that refit the kept weights on the final support, "
                                   "to reduce the layer's output error (0: no refit)")
        self.alps_box = QWidget()
        alps = QFormLayout(self.alps_box)
        alps.setContentsMargins(0, 0, 0, 0)
        alps.addRow("Initial ρ", self.alps_rho)
        alps.addRow("Iterations", self.alps_iterations)
        alps.addRow("Refit steps", self.alps_refit)

    def _build_allocation_and_recovery(self) -> None:
        self.allocation = choice_combo(ALLOCATIONS, ALLOCATION_TIP)
        self.explicit_sparsities: tuple[float, ...] = ()     # the Edit allocation tab's bars, one per block
        self.owl_lambda = QDoubleSpinBox()
        self.owl_lambda.setDecimals(3)
        self.owl_lambda.setRange(0.0, 0.5)
        self.owl_lambda.setSingleStep(0.01)
        self.owl_lambda.setValue(AllocationOptions.owl_lambda)
        self.owl_lambda.setToolTip("OWL's λ: each block's sparsity lies within the target ± λ "
                                   f"(the paper uses {AllocationOptions.owl_lambda:g})")
        self.recovery = choice_combo(RECOVERIES, RECOVERY_TIP)
        self.recovery_epochs = QDoubleSpinBox()
        self.recovery_epochs.setDecimals(2)
        self.recovery_epochs.setRange(0.01, 1000.0)
        self.recovery_epochs.setSingleStep(0.5)
        self.recovery_epochs.setValue(RecoveryOptions.epochs)
        self.recovery_epochs.setToolTip(f"Passes over the calibration windows, {RecoveryOptions.batch_windows} "
                                        "windows per optimizer step: per block (blockwise) or in all (end-to-end)")
        self.recovery_lr = ScientificSpinBox(1e-8, 1.0)
        self.recovery_lr.setValue(RecoveryOptions.learning_rate)
        self.recovery_lr.setToolTip("Adam's learning rate for recovery; the arrows step 1, 2, 5, 10, …")
        self.spread_form = QFormLayout()
        self.spread_form.addRow("Allocation", self.allocation)
        self.spread_form.addRow("OWL λ", self.owl_lambda)
        self.spread_form.addRow("Recovery", self.recovery)
        self.spread_form.addRow("Epochs", self.recovery_epochs)
        self.spread_form.addRow("Learning rate", self.recovery_lr)
        self.allocation.currentIndexChanged.connect(self._choices_changed)
        self.recovery.currentIndexChanged.connect(self._choices_changed)
        self._choices_changed()

    def plan_options(self) -> dict:
        """Keyword arguments for PrunePlan.build, overrides and ignore list as typed (the plan parses them)."""
        for field in (self.alps_rho, self.recovery_lr):      # a number typed but not yet confirmed counts
            field.interpretText()
        method = self.method.currentData()
        pattern = self.pattern.currentText().strip() or "unstructured"
        if method == "none":                # quantize only: no pattern, no sparsity (the plan's 0)
            pattern = "unstructured"
        return {
            "method": method,
            "pattern": pattern,
            "sparsity": None if _sets_sparsity(pattern) or method == "none" else self.sparsity.value(),
            "device": self.device.currentData(),
            "overrides": tuple(self.overrides.toPlainText().splitlines()) if method != "none" else (),
            "ignore": self.ignore.text(),
            "sparsegpt": Options(self.blocksize.value(), self.dampening.value(), self.update_weights.isChecked()),
            "alps": replace(ALPSOptions(), rho=self.alps_rho.value(), max_iterations=self.alps_iterations.value(),
                            refit_steps=self.alps_refit.value()),
            "allocation": self._allocation_options(method),
            "recovery": replace(RecoveryOptions(), mode=self.recovery.currentData(),
                                epochs=self.recovery_epochs.value(), learning_rate=self.recovery_lr.value()),
            # GPTQ shares SparseGPT's dampening, as on the command line (and then reuses its factor)
            "quantization": self.quantize.scheme(self.dampening.value() if method == "sparsegpt" else None),
        }

    def _allocation_options(self, method: str) -> AllocationOptions:
        kind = "uniform" if method == "none" else self.allocation.currentData()
        explicit = tuple(self.explicit_sparsities) if kind == "explicit" else ()
        return replace(AllocationOptions(), owl_lambda=self.owl_lambda.value(), kind=kind, sparsities=explicit)

    def set_explicit(self, sparsities, choose: bool = True) -> None:
        """The per-block sparsities edited in the Edit allocation tab; `choose`: make them the allocation."""
        self.explicit_sparsities = tuple(float(s) for s in sparsities)
        if choose:
            _choose(self.allocation, "explicit")

    def set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def state(self) -> dict:
        return {"method": self.method.currentText(), "pattern": self.pattern.currentText(),
                "sparsity": self.sparsity.value(), "blocksize": self.blocksize.value(),
                "dampening": self.dampening.value(), "update_weights": self.update_weights.isChecked(),
                "alps_rho": self.alps_rho.value(), "alps_iterations": self.alps_iterations.value(),
                "alps_refit_steps": self.alps_refit.value(), "allocation": self.allocation.currentData(),
                "owl_lambda": self.owl_lambda.value(), "recovery": self.recovery.currentData(),
                "recovery_epochs": self.recovery_epochs.value(), "recovery_lr": self.recovery_lr.value(),
                **self.quantize.state()}

    def restore_state(self, state: dict) -> None:
        """The choices `state()` gave, as they come back from QSettings (an INI file gives strings)."""
        if not state:
            return
        self.method.setCurrentText(str(state.get("method", "wanda")))
        self.pattern.setCurrentText(str(state.get("pattern", "unstructured")))
        self.sparsity.setValue(float(state.get("sparsity", 0.5)))
        self.blocksize.setValue(int(state.get("blocksize", Options.blocksize)))
        self.dampening.setValue(float(state.get("dampening", Options.dampening)))
        self.update_weights.setChecked(str(state.get("update_weights", True)).lower() in ("true", "1"))
        self.alps_rho.setValue(float(state.get("alps_rho", ALPSOptions.rho)))
        self.alps_iterations.setValue(int(state.get("alps_iterations", ALPSOptions.max_iterations)))
        self.alps_refit.setValue(int(state.get("alps_refit_steps", ALPSOptions.refit_steps)))
        allocation = str(state.get("allocation", "uniform"))
        _choose(self.allocation, "uniform" if allocation == "explicit" else allocation)   # edits are not kept
        self.owl_lambda.setValue(float(state.get("owl_lambda", AllocationOptions.owl_lambda)))
        _choose(self.recovery, state.get("recovery", "none"))
        self.recovery_epochs.setValue(float(state.get("recovery_epochs", RecoveryOptions.epochs)))
        self.recovery_lr.setValue(float(state.get("recovery_lr", RecoveryOptions.learning_rate)))
        self.quantize.restore_state(state)

    def _pattern_changed(self, text: str) -> None:
        self.sparsity.setEnabled(not _sets_sparsity(text) and self.method.currentText() != "none")

    def _method_changed(self, method: str) -> None:
        self.sparsegpt_box.setVisible(method == "sparsegpt")
        self.alps_box.setVisible(method == "alps")
        pruning = method != "none"
        for field in (self.pattern, self.overrides, self.allocation):
            field.setEnabled(pruning)
        self._pattern_changed(self.pattern.currentText())
        self._choices_changed()
        self.quantize.set_pruning_method(method)

    def _choices_changed(self) -> None:
        self.spread_form.setRowVisible(self.owl_lambda, self.allocation.currentData() == "owl"
                                       and self.method.currentText() != "none")
        recovering = self.recovery.currentData() != "none"
        self.spread_form.setRowVisible(self.recovery_epochs, recovering)
        self.spread_form.setRowVisible(self.recovery_lr, recovering)


class ScientificSpinBox(QDoubleSpinBox):
    """A positive number over many decades (a learning rate, a penalty): typed as 3e-4 or 0.0003, shown
    in the shortest form, stepped along 1, 2, 5, 10, … by the arrows."""

    LADDER = (1.0, 2.0, 5.0)

    def __init__(self, low: float, high: float, parent=None):
        super().__init__(parent)
        self.setDecimals(12)              # the value keeps its digits; the text is textFromValue's
        self.setRange(low, high)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:
        return f"{value:.3g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):
        candidate = text.strip()
        try:
            value = float(candidate)
        except ValueError:
            partial = candidate == "" or candidate[-1] in "eE.-+" or candidate.lower().endswith(("e-", "e+"))
            return (QValidator.State.Intermediate if partial else QValidator.State.Invalid), text, pos
        ok = self.minimum() <= value <= self.maximum()
        return (QValidator.State.Acceptable if ok else QValidator.State.Intermediate), text, pos

    def fixup(self, text: str) -> str:
        return self.textFromValue(self.value())

    def stepBy(self, steps: int) -> None:
        value = self.value()
        for _ in range(abs(steps)):
            value = self._next(value, up=steps > 0)
        self.setValue(value)

    def _next(self, value: float, up: bool) -> float:
        rungs = [m * 10.0 ** e for e in range(math.floor(math.log10(value)) - 1, math.floor(math.log10(value)) + 2)
                 for m in self.LADDER]
        if up:
            return next((r for r in rungs if r > value * (1 + 1e-9)), value)
        return next((r for r in reversed(rungs) if r < value * (1 - 1e-9)), value)


def _choose(combo: QComboBox, value) -> None:
    index = combo.findData(str(value))
    if index >= 0:
        combo.setCurrentIndex(index)


def devices() -> list[tuple[str, str]]:
    """The CPU and every CUDA device with its free memory."""
    found = [("auto (CUDA if present)", "auto"), ("CPU", "cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            found.append((f"cuda:{i} {torch.cuda.get_device_name(i)} ({free / 2**30:.1f} of {total / 2**30:.0f} GiB free)",
                          f"cuda:{i}"))
    return found


def _sets_sparsity(text: str) -> bool:
    """Whether the typed pattern fixes the sparsity itself (N:M); text that is no pattern counts as one, so
    the plan refuses the pattern, not a sparsity."""
    try:
        return parse_pattern(text.strip() or "unstructured").sparsity is not None
    except UserError:
        return True
