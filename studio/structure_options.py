"""The Prune panel's structured shrink: fractions of MLP channels and attention heads to remove, the
criterion that ranks them, recovery after the cut, a Shrink button and, once done, what the smaller model
is (its parameters and shapes, its perplexity when the evaluation text is set) and an Export button.

The widget only collects choices and shows results: `shrink_requested` carries a
`core.studies.structure.ShrinkRequest` for the controller to run; `export_requested` a folder."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QVBoxLayout)

from core.errors import UserError
from core.pruning.structure.spec import CRITERIA, StructureSpec
from core.recovery.options import RecoveryOptions
from core.studies.structure import ShrinkRequest

RECOVERIES = [("none", "none"), ("blockwise", "blockwise"), ("end-to-end", "e2e")]
TIP = ("Remove whole MLP channels and attention heads (in whole key/value groups): a smaller dense model that "
       "every runtime runs faster, at more cost in quality than masks. The same count goes in every block.")


class StructureOptions(QGroupBox):
    shrink_requested = Signal(object)      # ShrinkRequest
    export_requested = Signal(str)         # the output folder

    def __init__(self, parent=None):
        super().__init__("Shrink (structured)", parent)
        self.setToolTip(TIP)
        self.mlp = _fraction("fraction of each block's MLP intermediate channels removed")
        self.heads = _fraction("fraction of attention heads removed, in whole key/value groups "
                               "(a multiple of 1 / the number of KV heads)")
        self.criterion = QComboBox()
        for name, formula in CRITERIA.items():
            self.criterion.addItem(name, name)
            self.criterion.setItemData(self.criterion.count() - 1, formula, role=3)   # tooltip role
        self.recovery = QComboBox()
        for label, value in RECOVERIES:
            self.recovery.addItem(label, value)
        self.recovery.setToolTip("train every kept weight after the cut towards the unshrunk block (blockwise) "
                                 "or model (end-to-end)")
        self.shrink_button = QPushButton("Shrink")
        self.shrink_button.clicked.connect(self._shrink)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.out = QLineEdit()
        self.out.setPlaceholderText("output folder for the smaller model")
        self.export_button = QPushButton("Export")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(lambda: self.export_requested.emit(self.out.text().strip()))
        self.evaluation = None       # a workbench EvaluationRequest, set by the window from the Evaluate panel
        form = QFormLayout()
        form.addRow("MLP fraction", self.mlp)
        form.addRow("Heads fraction", self.heads)
        form.addRow("Criterion", self.criterion)
        form.addRow("Recovery", self.recovery)
        export = QHBoxLayout()
        export.addWidget(self.out, 3)
        export.addWidget(self.export_button, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.shrink_button)
        layout.addWidget(self.result)
        layout.addLayout(export)

    def request(self) -> ShrinkRequest:
        spec = StructureSpec(mlp=self.mlp.value(), heads=self.heads.value(), criterion=self.criterion.currentData())
        request = ShrinkRequest(spec, RecoveryOptions(self.recovery.currentData()), self.evaluation)
        request.validate()
        return request

    def _shrink(self) -> None:
        try:
            request = self.request()
        except UserError as exc:
            self.result.setText(str(exc))
            return
        self.export_button.setEnabled(False)
        self.result.setText("shrinking…")
        self.shrink_requested.emit(request)

    def show_result(self, view: dict) -> None:
        """A finished shrink (`ShrinkRun.view()`): the new shapes and parameter count, the perplexity if measured."""
        before, after = view["parameters"]
        lines = [f"parameters {before:,} → {after:,} ({1 - after / before:.1%} removed)",
                 f"MLP {view['intermediate_size'][0]} → {view['intermediate_size'][1]} channels, heads "
                 f"{view['num_attention_heads'][0]} → {view['num_attention_heads'][1]} (key/value "
                 f"{view['num_key_value_heads'][0]} → {view['num_key_value_heads'][1]})"]
        if view["ppl"] is not None:
            lines.append(f"perplexity {view['ppl_dense']:.2f} → {view['ppl']:.2f} "
                         f"(×{view['ppl'] / view['ppl_dense']:.2f})")
        if view["recovery"]:
            errors = view["recovery"]
            lines.append(f"recovery: error {sum(c['before'] for c in errors) / len(errors):.3g} → "
                         f"{sum(c['after'] for c in errors) / len(errors):.3g}")
        self.result.setText("\n".join(lines))
        self.export_button.setEnabled(True)

    def show_failure(self, message: str) -> None:
        self.result.setText(message)

    def set_running(self, running: bool) -> None:
        self.shrink_button.setEnabled(not running)


def _fraction(tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.0, 0.95)
    box.setDecimals(4)
    box.setSingleStep(0.05)
    box.setToolTip(tip)
    return box
