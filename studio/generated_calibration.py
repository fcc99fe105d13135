"""The calibration panel's "Text the model writes itself" choice: for a first run with no files at hand.

Checked, the run calibrates on windows the dense model samples from its start token (seeded by the panel's
seed; the panel's windows × length), labelled as self-generated in the panel, the progress log and the export's
`sparsity.json`. Adding a file unchecks it; checking it again uses the model's own text over the files.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QLabel, QVBoxLayout, QWidget

from core.data.generated import LABEL, GenerationOptions

TEXT = "Text the model writes itself"
HINT = ("No files needed: the model samples its own calibration text from its start token (seeded; the windows "
        "and length below). On a CPU, fewer and shorter windows (say 32 × 512) are much quicker to write.")


class GeneratedCalibration(QWidget):
    toggled = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.check = QCheckBox(TEXT)
        self.check.setChecked(True)
        self.check.setToolTip(f"Calibrate on {LABEL} (self-calibration, Williams et al. 2024): sampled from the "
                              f"model's start token, temperature {GenerationOptions.temperature_start} → "
                              f"{GenerationOptions.temperature_end} over the first "
                              f"{GenerationOptions.schedule_tokens} tokens, top-p {GenerationOptions.top_p}.")
        self.check.toggled.connect(self.toggled)
        self.hint = QLabel(HINT)
        self.hint.setWordWrap(True)
        self.hint.setObjectName("hint")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.check)
        layout.addWidget(self.hint)
        self.check.toggled.connect(self.hint.setVisible)

    @property
    def chosen(self) -> bool:
        return self.check.isChecked()

    def options(self) -> GenerationOptions | None:
        return GenerationOptions() if self.chosen else None

    def set_chosen(self, chosen: bool) -> None:
        self.check.setChecked(chosen)
