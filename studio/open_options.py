"""How a model is opened: the dtype its weights are loaded in, and whether its authors' code may run."""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QWidget

from core.compute import MODEL_DTYPES

TRUST_WARNING = "Runs Python code shipped with the model by its authors on this machine: only for models you trust."


class OpenOptions(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.dtype = QComboBox()
        self.dtype.addItems(list(MODEL_DTYPES))            # float32 first: the default
        self.dtype.setToolTip("The dtype the weights are loaded in; float16 and bfloat16 halve the memory.")
        self.trust_remote_code = QCheckBox("trust remote code")
        self.trust_remote_code.setToolTip(TRUST_WARNING)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Load weights as"))
        row.addWidget(self.dtype)
        row.addSpacing(16)
        row.addWidget(self.trust_remote_code)
        row.addStretch(1)

    def state(self) -> dict:
        return {"dtype": self.dtype.currentText(), "trust_remote_code": self.trust_remote_code.isChecked()}

    def restore_state(self, state: dict) -> None:
        if not state:
            return
        dtype = str(state.get("dtype", "float32"))
        self.dtype.setCurrentText(dtype if dtype in MODEL_DTYPES else "float32")
        self.trust_remote_code.setChecked(str(state.get("trust_remote_code", False)).lower() in ("true", "1"))
