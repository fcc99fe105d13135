"""Choose where to export the pruned model. An existing folder is replaced only when the user ticks
the overwrite box, after being told the folder exists."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (QCheckBox, QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QVBoxLayout)


class ExportDialog(QDialog):
    def __init__(self, parent=None, suggestion: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Export the pruned model")
        self.path = QLineEdit(suggestion)
        self.path.textChanged.connect(self._check)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._choose)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        self.overwrite = QCheckBox("Replace the existing folder")
        self.overwrite.toggled.connect(self._check)
        self.note = QLabel("")
        self.note.setObjectName("warning")
        self.note.setWordWrap(True)
        about = QLabel("Writes a Hugging Face folder (config, safetensors, tokenizer) with sparsity.json and "
                       "calibration.safetensors. Zeros are stored densely: the folder is as large as the model.")
        about.setWordWrap(True)
        about.setObjectName("hint")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Output folder"))
        layout.addLayout(row)
        layout.addWidget(about)
        layout.addWidget(self.overwrite)
        layout.addWidget(self.note)
        layout.addWidget(self.buttons)
        self.resize(560, 220)
        self._check()

    def choice(self) -> tuple[str, bool]:
        return self.path.text().strip(), self.overwrite.isChecked()

    def _check(self) -> None:
        text = self.path.text().strip()
        exists = bool(text) and Path(text).expanduser().exists()
        self.overwrite.setVisible(exists)
        if exists and not self.overwrite.isChecked():
            self.note.setText(f"{text} already exists. Choose another folder, or tick the box to replace it.")
        elif exists:
            self.note.setText("The existing folder will be replaced once the new export is complete.")
        else:
            self.note.setText("" if text else "Choose an output folder.")
        ok = bool(text) and (not exists or self.overwrite.isChecked())
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(ok)

    def _choose(self) -> None:
        folder = QFileDialog.getSaveFileName(self, "Export to folder", self.path.text())[0]
        if folder:
            self.path.setText(folder)
