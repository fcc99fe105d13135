"""Calibration choices: files (dialog or drag and drop), the text field of tabular files, windows,
sequence length and seed; shows tokens found and windows drawn, or why the text does not suffice."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                               QPushButton, QSpinBox, QVBoxLayout)

from core.data.generated import GeneratedCalibration as GeneratedCalibrationSet
from core.data.texts import SUPPORTED

from core.workbench import CalibrationRequest

from .generated_calibration import GeneratedCalibration


FILE_WINDOWS = (128, 2048)          # the papers' protocol
GENERATED_WINDOWS = (32, 512)


class CalibrationPanel(QGroupBox):
    load_requested = Signal(object)   # CalibrationRequest

    def __init__(self, parent=None):
        super().__init__("Calibration", parent)
        self.setAcceptDrops(True)
        self.generated = GeneratedCalibration()
        self.generated.toggled.connect(self._generated_toggled)
        self.files = QListWidget()
        self.files.setMaximumHeight(80)
        self.files.setToolTip("Calibration text files; drop files here")
        add = QPushButton("Add files…")
        add.clicked.connect(self._choose)
        remove = QPushButton("Remove")
        remove.clicked.connect(self._remove_selected)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        self.text_field = QLineEdit("text")
        self.text_field.setToolTip("The field (JSON lines) or column (CSV, Parquet) holding the text")
        self.nsamples = _spin(1, 4096, FILE_WINDOWS[0])
        self.seqlen = _spin(2, 32768, FILE_WINDOWS[1])
        self.seed = _spin(0, 2**31 - 1, 0)
        form = QFormLayout()
        form.addRow("Text field", self.text_field)
        form.addRow("Windows", self.nsamples)
        form.addRow("Sequence length", self.seqlen)
        form.addRow("Seed", self.seed)
        self.load_button = QPushButton("Tokenize and draw windows")
        self.load_button.clicked.connect(lambda: self.load_requested.emit(self.choice()))
        self.status = QLabel("No calibration yet: the model writes its own text when you run, or add a text file.")
        self.status.setWordWrap(True)
        self.status.setObjectName("hint")
        layout = QVBoxLayout(self)
        layout.addWidget(self.generated)
        layout.addWidget(self.files)
        layout.addLayout(buttons)
        layout.addLayout(form)
        layout.addWidget(self.load_button)
        layout.addWidget(self.status)
        self._generated_toggled(self.generated.chosen)

    def add_files(self, paths) -> None:
        present = set(self.paths())
        for path in paths:
            path = str(Path(path))
            if path not in present:
                self.files.addItem(path)
                present.add(path)
        if self.files.count():
            self.generated.set_chosen(False)      # files given: they are the calibration
        self.status.setObjectName("hint")
        self.status.setText(f"{self.files.count()} file(s); tokenized when you run or press the button.")

    def paths(self) -> list[str]:
        return [self.files.item(i).text() for i in range(self.files.count())]

    def choice(self) -> CalibrationRequest:
        generate = self.generated.options()
        return CalibrationRequest(() if generate else tuple(self.paths()), self.nsamples.value(), self.seqlen.value(),
                                  self.seed.value(), self.text_field.text().strip() or "text", generate)

    def set_context_length(self, context: int) -> None:
        self.seqlen.setValue(min(self.seqlen.value(), context))
        self.seqlen.setMaximum(context)

    def show_ready(self, calib) -> None:
        if isinstance(calib, GeneratedCalibrationSet):
            return self._set_status(f"{calib.nsamples} windows × {calib.seqlen} tokens of text the model wrote itself "
                                    f"(self-generated, seed {calib.seed}, {calib.seconds:.0f} s).", "hint")
        self._set_status(f"{calib.tokens_found:,} tokens found; {calib.nsamples} windows × {calib.seqlen} tokens drawn "
                         f"(seed {calib.seed}).", "hint")

    def show_problem(self, message: str) -> None:
        self._set_status(message, "warning")

    def _set_status(self, text: str, kind: str) -> None:
        self.status.setText(text)
        self.status.setObjectName(kind)
        self.status.style().unpolish(self.status)
        self.status.style().polish(self.status)

    def _generated_toggled(self, chosen: bool) -> None:
        for widget in (self.files, self.text_field):
            widget.setEnabled(not chosen)
        self.load_button.setText("Write calibration text" if chosen else "Tokenize and draw windows")
        # The reference 128 × 2048 is an hour of sampling on a CPU: the model's own text starts at 32 × 512
        # (minutes) unless the user has set other numbers; files go back to the reference.
        sizes = {True: GENERATED_WINDOWS, False: FILE_WINDOWS}
        if (self.nsamples.value(), self.seqlen.value()) == sizes[not chosen]:
            self.nsamples.setValue(sizes[chosen][0])
            self.seqlen.setValue(min(sizes[chosen][1], self.seqlen.maximum()))

    def _choose(self) -> None:
        patterns = " ".join(f"*{s}" for s in SUPPORTED)
        paths, _ = QFileDialog.getOpenFileNames(self, "Add calibration files", "", f"Text ({patterns});;All files (*)")
        self.add_files(paths)

    def _remove_selected(self) -> None:
        for item in self.files.selectedItems():
            self.files.takeItem(self.files.row(item))

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self.add_files(url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile())
        event.acceptProposedAction()


def _spin(lo: int, hi: int, value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(lo, hi)
    spin.setValue(value)
    spin.setAlignment(Qt.AlignmentFlag.AlignRight)
    return spin
