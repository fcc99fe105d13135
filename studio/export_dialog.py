"""Choose where to export the pruned model, and in which format: the ordinary folder (as large as the
dense model) or, after a 2:4 run, the compact 2:4 one. An existing folder is replaced only when the
user ticks the overwrite box, after being told the folder exists."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (QCheckBox, QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QVBoxLayout)


COMPACT_LABEL = ("compact 2:4 format (about 56% of the dense bytes for pruned layers; "
                 "load with compression-studio or unpack first)")


class ExportDialog(QDialog):
    def __init__(self, parent=None, suggestion: str = "", two_four: bool = False):
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
        self.about = QLabel("Writes a Hugging Face folder (config, safetensors, tokenizer) with sparsity.json and "
                       "calibration.safetensors that plain transformers loads. It is the same size as the dense "
                       "model: pruned weights are stored as zeros.")
        self.about.setWordWrap(True)
        self.about.setObjectName("hint")
        self.compact = QCheckBox(COMPACT_LABEL)
        self.compact.setEnabled(two_four)
        self.compact.setToolTip("Stores each 2:4 layer as its kept values plus 2-bit positions; "
                                "`compression-studio unpack` turns it back into the ordinary folder."
                                if two_four else "Only after a 2:4 run: the last run's pattern is not 2:4.")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Output folder"))
        layout.addLayout(row)
        layout.addWidget(self.about)
        layout.addWidget(self.compact)
        layout.addWidget(self.overwrite)
        layout.addWidget(self.note)
        layout.addWidget(self.buttons)
        self.resize(640, 250)
        self._check()

    def choice(self) -> tuple[str, bool, bool]:
        """(folder, replace it if it exists, compact 2:4 format)."""
        return self.path.text().strip(), self.overwrite.isChecked(), self.compact.isEnabled() and self.compact.isChecked()

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
