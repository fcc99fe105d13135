"""Choose where to export the model, and in which format: the ordinary Hugging Face folder (as large as
the dense model), compressed-tensors (after a quantized run), a GGUF file (f16, q8_0 or q4_0) or, after
a 2:4 run, the compact 2:4 folder. A format the applied run cannot be written in is disabled, with the
engine's reason as its tooltip. Beside the choices, the size chart: each format's bytes and the memory a
serving GPU would hold. An existing folder is replaced only when the user ticks the overwrite box, after
being told the folder exists."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QGroupBox,
                               QHBoxLayout, QLabel, QLineEdit, QPushButton, QRadioButton, QVBoxLayout, QWidget)

from core.export.gguf import GGUF_TYPES

from .size_chart import SizeChart

COMPACT_LABEL = "compact 2:4 (kept values + 2-bit positions)"
LABELS = {"hf": "Hugging Face folder (hf)", "compressed-tensors": "compressed-tensors (packed int4/int8)",
          "gguf": "GGUF file for llama.cpp", "compact": COMPACT_LABEL}
ABOUT = {
    "hf": ("Writes a Hugging Face folder (config, safetensors, tokenizer) with sparsity.json and "
           "calibration.safetensors that plain transformers loads. It is the same size as the dense "
           "model: pruned weights are stored as zeros{quantized}."),
    "compressed-tensors": ("Writes the quantized weights as packed integer codes with their scales (the "
                           "compressed-tensors format): vLLM, SGLang and transformers load the folder as it is."),
    "gguf": ("Writes one model-{type}.gguf file (with sparsity.json) for llama.cpp, LM Studio and Ollama. "
             "q8_0 and q4_0 round the weights again to llama.cpp's own blocks of 32; pruned weights are "
             "stored as zeros."),
    "compact": ("Stores each 2:4 layer as its kept values plus 2-bit positions{quantized}: about 56% of the "
                "dense bytes for those layers. Load it with compression-studio, or `compression-studio unpack` "
                "turns it back into the ordinary folder."),
}
NO_RUN = "Run a method first: there is nothing to export yet."
CHECKING = "Checking which formats this run can be written in…"


def option_keys(fmt: str) -> list[str]:
    """The keys a format's choices have in the refusals (and in `format_sizes`): 'gguf q4_0', …"""
    return [f"gguf {t}" for t in GGUF_TYPES] if fmt == "gguf" else [fmt]


class ExportDialog(QDialog):
    def __init__(self, parent=None, suggestion: str = "", refusals: dict | None = None, default: str = "hf",
                 gguf_default: str = "f16", quantized: bool = False):
        """`refusals`: option key ('hf', 'gguf q8_0', …) -> why it cannot be written, None where it can;
        a key not given is refused (no run); None: the ordinary folder only. They can come later
        (`set_refusals`). `default`, `gguf_default`: the format and GGUF type chosen first where allowed."""
        super().__init__(parent)
        self.setWindowTitle("Export the model")
        self.refusals = {"hf": None} if refusals is None else dict(refusals)
        self.quantized = quantized
        self.default, self.gguf_default = default, gguf_default
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
        self.about = QLabel("")
        self.about.setWordWrap(True)
        self.about.setObjectName("hint")
        self._build_formats()
        self.sizes = SizeChart()
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        left = QVBoxLayout()
        left.addWidget(QLabel("Output folder"))
        left.addLayout(row)
        left.addWidget(self.format_box)
        left.addWidget(self.about)
        left.addWidget(self.overwrite)
        left.addWidget(self.note)
        left.addStretch(1)
        columns = QHBoxLayout()
        side = QWidget()
        side.setLayout(left)
        side.setMaximumWidth(440)
        columns.addWidget(side, 2)
        columns.addWidget(self.sizes, 3)
        layout = QVBoxLayout(self)
        layout.addLayout(columns, 1)
        layout.addWidget(self.buttons)
        self.resize(1120, 660)
        self.set_refusals(self.refusals)

    # ---- formats -------------------------------------------------------------------------------------
    def _build_formats(self) -> None:
        self.format_box = QGroupBox("Format")
        self.formats = QButtonGroup(self)
        self.radios: dict[str, QRadioButton] = {}
        column = QVBoxLayout(self.format_box)
        self.gguf_type = QComboBox()
        for qtype in GGUF_TYPES:
            self.gguf_type.addItem(qtype, qtype)
        self.gguf_type.currentIndexChanged.connect(self._format_changed)
        for fmt in ("hf", "compressed-tensors", "gguf", "compact"):
            radio = QRadioButton(LABELS[fmt])
            self.formats.addButton(radio)
            self.radios[fmt] = radio
            radio.toggled.connect(self._format_changed)
            if fmt == "gguf":
                line = QHBoxLayout()
                line.addWidget(radio)
                line.addWidget(self.gguf_type)
                line.addStretch(1)
                column.addLayout(line)
            else:
                column.addWidget(radio)
        self.compact = self.radios["compact"]

    def set_checking(self) -> None:
        """Every format unavailable until the engine's checks come back (`set_refusals`)."""
        self.set_refusals({}, CHECKING)

    def set_refusals(self, refusals: dict, missing: str = NO_RUN) -> None:
        """Enable the formats (and GGUF types) the run can be written in; the others say why in a tooltip.
        The default format is chosen where allowed (else the first allowed one)."""
        self.refusals = dict(refusals)
        why = lambda key: self.refusals.get(key, missing)      # noqa: E731
        for i, qtype in enumerate(GGUF_TYPES):
            item = self.gguf_type.model().item(i)
            item.setEnabled(why(f"gguf {qtype}") is None)
            item.setToolTip(why(f"gguf {qtype}") or "")
        usable = [t for t in GGUF_TYPES if why(f"gguf {t}") is None]
        gguf = self.gguf_default if self.gguf_default in usable else (usable or [self.gguf_default])[0]
        self.gguf_type.setCurrentIndex(GGUF_TYPES.index(gguf))
        for fmt, radio in self.radios.items():
            reasons = [why(key) for key in option_keys(fmt)]
            radio.setEnabled(any(r is None for r in reasons))
            radio.setToolTip("" if radio.isEnabled() else reasons[0])
        allowed = [fmt for fmt in self.radios if self.allowed(fmt)]
        self.formats.setExclusive(False)            # a checked radio that is now refused: none checked
        for radio in self.radios.values():
            radio.setChecked(False)
        self.formats.setExclusive(True)
        if allowed:
            self.choose_format(self.default if self.default in allowed else allowed[0])
        else:
            self.about.setText(missing)
            self.sizes.select(None)
        self._check()

    def allowed(self, fmt: str) -> bool:
        return fmt in self.radios and self.radios[fmt].isEnabled()

    def choose_format(self, fmt: str) -> None:
        self.radios[fmt].setChecked(True)
        self._format_changed()

    @property
    def format(self) -> str | None:
        return next((fmt for fmt, radio in self.radios.items() if radio.isChecked()), None)

    @property
    def option_key(self) -> str:
        """The chosen format as `format_sizes` names it: 'hf', 'gguf q4_0', …"""
        return f"gguf {self.gguf_type.currentData()}" if self.format == "gguf" else self.format

    def _format_changed(self, *_) -> None:
        if not any(radio.isChecked() for radio in self.radios.values()):
            self._check()
            return
        fmt = self.format
        self.gguf_type.setEnabled(fmt == "gguf")
        quantized = " (quantized weights stored dequantized)" if self.quantized and fmt == "hf" else \
            " and their integer codes" if self.quantized and fmt == "compact" else ""
        self.about.setText(ABOUT[fmt].format(quantized=quantized, type=self.gguf_type.currentData()))
        self.sizes.select(self.option_key)
        self._check()

    def show_sizes(self, sizes) -> None:
        self.sizes.set_sizes(sizes)
        self.sizes.select(self.option_key if self.format else None)

    # ---- the folder ------------------------------------------------------------------------------------
    def choice(self) -> tuple[str, bool, str, str | None]:
        """(folder, replace it if it exists, format, GGUF type or None)."""
        fmt = self.format
        return (self.path.text().strip(), self.overwrite.isChecked(), fmt,
                self.gguf_type.currentData() if fmt == "gguf" else None)

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
        chosen = self.format is not None and self.radios[self.format].isEnabled()
        if chosen and self.format == "gguf":
            chosen = self.refusals.get(self.option_key, NO_RUN) is None
        ok = bool(text) and (not exists or self.overwrite.isChecked()) and chosen
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(ok)

    def _choose(self) -> None:
        folder = QFileDialog.getSaveFileName(self, "Export to folder", self.path.text())[0]
        if folder:
            self.path.setText(folder)

    # ---- from the window --------------------------------------------------------------------------------
    @classmethod
    def for_run(cls, parent, controller, suggestion: str) -> "ExportDialog":
        """The dialog for the controller's applied run. The engine's format checks (a second on a small
        model: GGUF's read the tokenizer) and the sizes (longer: the compact check reads every weight)
        arrive from the views worker; until then the formats wait and the chart says so."""
        fmt, gguf_type = controller.export_defaults()
        record = controller.bench.applied
        dialog = cls(parent, suggestion, None, fmt, gguf_type, quantized=record is not None and record.plan.quantizing)
        dialog.set_checking()
        loaded = controller.loaded
        if loaded is not None:
            dialog.sizes.set_model(loaded.model.config, loaded.context_length)
        if record is not None:
            dialog.sizes.set_perplexity(record.ppl.ppl if record.ppl is not None else None, record.number)
        controller.export_refusals_ready.connect(dialog.set_refusals)
        controller.export_sizes_ready.connect(dialog.show_sizes)
        controller.request_export_options()
        return dialog
