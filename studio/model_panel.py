"""What is loaded: name, family, blocks, prunable layers and parameters, dtype, where it came from."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel, QPushButton, QVBoxLayout

from .layer_tree import _count


class ModelPanel(QGroupBox):
    restore_requested = Signal()

    def __init__(self, parent=None):
        super().__init__("Model", parent)
        self.fields = {key: QLabel("—") for key in ("name", "family", "blocks", "layers", "params", "dtype", "state")}
        form = QFormLayout()
        for key, label in (("name", "Model"), ("family", "Family"), ("blocks", "Blocks"), ("layers", "Prunable layers"),
                           ("params", "Prunable params"), ("dtype", "Dtype"), ("state", "Weights")):
            self.fields[key].setWordWrap(True)
            form.addRow(label, self.fields[key])
        self.restore_button = QPushButton("Restore dense weights")
        self.restore_button.setEnabled(False)
        self.restore_button.clicked.connect(self.restore_requested)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.restore_button)

    def show_model(self, loaded) -> None:
        layout = loaded.layout
        params = sum(l.out_features * l.in_features for b in layout.inventory for l in b.linears)
        dtype = next(loaded.model.parameters()).dtype
        self.fields["name"].setText(loaded.name)
        self.fields["name"].setToolTip(str(loaded.path or loaded.source))
        self.fields["family"].setText(f"{layout.family}  ({layout.model_class})")
        self.fields["blocks"].setText(str(len(layout.inventory)))
        self.fields["layers"].setText(str(sum(len(b.linears) for b in layout.inventory)))
        self.fields["params"].setText(_count(params))
        self.fields["dtype"].setText(str(dtype).replace("torch.", ""))
        self.set_state(None)

    def set_state(self, record) -> None:
        self.fields["state"].setText("dense" if record is None else
                                     f"run {record.number}: {record.method} {record.pattern}, {record.sparsity:.1%} zeros")
        self.restore_button.setEnabled(record is not None)
