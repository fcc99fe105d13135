"""The first page: open a model folder, a GGUF file, a hub id, the demo model, or a recent model,
in the dtype chosen here and with or without the model authors' code."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QLineEdit, QListWidget, QPushButton, QVBoxLayout,
                               QWidget)

from .open_options import OpenOptions


class WelcomeView(QWidget):
    open_requested = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        title = QLabel("Compression Studio")
        title.setObjectName("title")
        subtitle = QLabel("Prune a language model with magnitude, Wanda or SparseGPT, see what it does to every "
                          "layer, and export a checkpoint transformers loads.")
        subtitle.setObjectName("subtitle")
        subtitle.setWordWrap(True)
        self.demo_button = _button("Open the demo model  (SmolLM2-135M, downloads once)", lambda: self.open_requested.emit("demo"))
        self.demo_button.setObjectName("primary")
        folder_button = _button("Open a model folder…  (config.json + safetensors)", self._choose_folder)
        gguf_button = _button("Open a GGUF file…", self._choose_gguf)
        self.hub_id = QLineEdit(placeholderText="Hub id from the local cache, e.g. HuggingFaceTB/SmolLM2-135M")
        self.hub_id.returnPressed.connect(self._open_hub_id)
        hub_button = QPushButton("Open")
        hub_button.clicked.connect(self._open_hub_id)
        hub_row = QHBoxLayout()
        hub_row.addWidget(self.hub_id, 1)
        hub_row.addWidget(hub_button)
        self.options = OpenOptions()
        recent_label = QLabel("Recent models")
        recent_label.setObjectName("heading")
        self.recent = QListWidget()
        self.recent.setMaximumHeight(160)
        self.recent.itemActivated.connect(lambda item: self.open_requested.emit(item.text()))
        hint = QLabel("Or drop a model folder or .gguf file anywhere on this window.")
        hint.setObjectName("hint")
        column = QVBoxLayout()
        column.setSpacing(10)
        for widget in (title, subtitle, self.demo_button, folder_button, gguf_button):
            column.addWidget(widget)
        column.addLayout(hub_row)
        column.addWidget(self.options)
        column.addSpacing(8)
        column.addWidget(recent_label)
        column.addWidget(self.recent)
        column.addWidget(hint)
        box = QWidget()
        box.setLayout(column)
        box.setMaximumWidth(640)
        outer = QHBoxLayout(self)
        outer.addStretch(1)
        outer.addWidget(box, 3, Qt.AlignmentFlag.AlignVCenter)
        outer.addStretch(1)

    def set_recent(self, models: list[str]) -> None:
        self.recent.clear()
        self.recent.addItems(models)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a model folder")
        if folder:
            self.open_requested.emit(folder)

    def _choose_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF file", "", "GGUF models (*.gguf)")
        if path:
            self.open_requested.emit(path)

    def _open_hub_id(self) -> None:
        self.open_requested.emit(self.hub_id.text())


def _button(text, slot) -> QPushButton:
    button = QPushButton(text)
    button.setObjectName("welcome")
    button.clicked.connect(slot)
    return button
