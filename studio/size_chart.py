"""What the model weighs in each export format, and what a GPU serving it would hold.

Top: a horizontal bar per format (`core.export.sizes.format_sizes`), its size, its share of the ordinary
folder and, for the formats that store the applied run's weights as they are, the run's perplexity.
Bottom: for the batch size and context length set in the spin boxes, each format's weights plus the KV
cache (`kv_cache_bytes`), stacked: the cache is the same for every format, and at long contexts or large
batches it outweighs the weights. Draws numbers it is given; holds no tensors.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import torch
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from core.export.sizes import kv_cache_bytes

from .plot_legend import legend_below

WEIGHTS = (47, 111, 223)
SELECTED = (24, 70, 160)
KV = (142, 68, 173)
TEXT = "#2b3a55"
BAR = 0.62                  # a bar's thickness, in rows
MiB, GiB = 2**20, 2**30
# Formats holding the applied run's weights exactly (GGUF rounds them again to its own types)
EXACT = {"hf", "compressed-tensors", "compact"}
NAMES = {"hf": "HF folder", "compressed-tensors": "compressed-tensors", "compact": "compact 2:4"}
KV_DTYPE = torch.float16
DEFAULT_CONTEXT = 4096
MAX_CONTEXT = 1 << 20


def format_name(key: str) -> str:
    """'HF folder', 'GGUF q4_0', …: how a format reads in the chart and the dialog."""
    if key.startswith("gguf"):
        return "GGUF " + key.split(" ", 1)[1] if " " in key else "GGUF"
    return NAMES.get(key, key)


def size_text(nbytes: float) -> str:
    if nbytes >= GiB:
        return f"{nbytes / GiB:,.2f} GiB"
    mib = nbytes / MiB
    return f"{mib:,.3g} MiB" if mib < 100 else f"{mib:,.0f} MiB"


class SizeChart(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.sizes: list = []              # FormatSize, as format_sizes gave them
        self.ppl: float | None = None
        self.run: int | None = None
        self.selected: str | None = None
        self.config = None
        self.files_plot = _plot("File size by format")
        self.file_bars = pg.BarGraphItem(x0=[], y=[], height=BAR, width=[], brush=WEIGHTS, pen=None)
        self.files_plot.addItem(self.file_bars)
        self.file_labels: list[pg.TextItem] = []

        self.batch = QSpinBox()
        self.batch.setRange(1, 4096)
        self.batch.setValue(1)
        self.batch.setToolTip("Sequences served at once")
        self.context = QSpinBox()
        self.context.setRange(1, MAX_CONTEXT)
        self.context.setSingleStep(1024)
        self.context.setValue(DEFAULT_CONTEXT)
        self.context.setGroupSeparatorShown(True)
        self.context.setSuffix(" tokens")
        self.context.setToolTip("Tokens each sequence holds in the cache: prompt plus generated text")
        for box in (self.batch, self.context):
            box.setKeyboardTracking(False)
            box.valueChanged.connect(self._draw)
        self.memory_plot = _plot("GPU memory to serve it: weights + KV cache")
        legend_below(self.memory_plot, columns=2)
        self.weight_bars = pg.BarGraphItem(x0=[], y=[], height=BAR, width=[], brush=WEIGHTS, pen=None, name="weights")
        self.kv_bars = pg.BarGraphItem(x0=[], y=[], height=BAR, width=[], brush=KV, pen=None, name="KV cache (fp16)")
        self.memory_plot.addItem(self.weight_bars)
        self.memory_plot.addItem(self.kv_bars)
        self.memory_labels: list[pg.TextItem] = []
        self.kv_note = QLabel("")
        self.kv_note.setObjectName("hint")
        self.kv_note.setWordWrap(True)
        self.ppl_note = QLabel("")
        self.ppl_note.setObjectName("hint")
        self.ppl_note.setWordWrap(True)

        spins = QHBoxLayout()
        form = QFormLayout()
        form.addRow("Batch size", self.batch)
        form2 = QFormLayout()
        form2.addRow("Context length", self.context)
        spins.addLayout(form)
        spins.addLayout(form2)
        spins.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.files_plot, 4)
        layout.addWidget(self.ppl_note)
        layout.addLayout(spins)
        layout.addWidget(self.memory_plot, 5)
        layout.addWidget(self.kv_note)
        for plot in (self.files_plot, self.memory_plot):
            plot.getViewBox().sigResized.connect(self._fit_ranges)

    # ---- inputs ----------------------------------------------------------------------------------------
    def set_model(self, config, context_length: int | None = None) -> None:
        """The model's config (for the KV cache) and the context it was trained for (the spin box starts there)."""
        self.config = config
        if context_length:
            self.context.blockSignals(True)
            self.context.setValue(min(int(context_length), DEFAULT_CONTEXT * 2, MAX_CONTEXT))
            self.context.blockSignals(False)
        self._draw()

    def set_perplexity(self, ppl: float | None, run: int | None = None) -> None:
        self.ppl, self.run = ppl, run
        self._draw()

    def set_sizes(self, sizes) -> None:
        self.sizes = list(sizes)
        self._draw()

    def select(self, key: str | None) -> None:
        """Stress the bars of the format about to be written."""
        self.selected = key
        self._colour(self.file_bars)
        self._colour(self.weight_bars)

    # ---- what it shows ---------------------------------------------------------------------------------
    @property
    def kv_bytes(self) -> int:
        if self.config is None:
            return 0
        return kv_cache_bytes(self.config, self.batch.value(), self.context.value(), KV_DTYPE)

    @property
    def unit(self) -> int:
        """Bytes per unit of both charts' axes: MiB, or GiB once the largest total reaches 10 GiB."""
        largest = max((s.bytes for s in self.sizes), default=0) + self.kv_bytes
        return GiB if largest >= 10 * GiB else MiB

    def bar_widths(self, bars: pg.BarGraphItem) -> np.ndarray:
        """The drawn lengths of `bars`, in bytes."""
        width = bars.opts.get("width")
        return np.asarray([] if width is None else width, dtype=np.float64) * self.unit

    # ---- drawing -----------------------------------------------------------------------------------------
    def _draw(self) -> None:
        """Both charts, in one unit (the KV cache can change it)."""
        self._draw_files()
        self._draw_memory()
        self._fit_ranges()

    def _rows(self) -> list[tuple[int, str]]:
        """(row, tick label), the first format at the top."""
        return [(len(self.sizes) - 1 - i, format_name(s.format)) for i, s in enumerate(self.sizes)]

    def _draw_files(self) -> None:
        unit, rows = self.unit, self._rows()
        ys = [y for y, _ in rows]
        self.file_bars.setOpts(x0=[0] * len(ys), y=ys, width=[s.bytes / unit for s in self.sizes])
        self._colour(self.file_bars)
        dense = next((s.bytes for s in self.sizes if s.format == "hf"), None)
        texts = []
        for s in self.sizes:
            text = size_text(s.bytes)
            if dense and s.format != "hf":
                text += f"  ({s.bytes / dense:.0%})"
            if self.ppl is not None and s.format in EXACT:
                text += f"  ·  ppl {self.ppl:.2f}"
            texts.append(text)
        self.file_labels = _labels(self.files_plot, self.file_labels, texts, ys, [s.bytes / unit for s in self.sizes])
        _ticks(self.files_plot, rows)
        self.files_plot.getAxis("bottom").setLabel("MiB" if unit == MiB else "GiB")
        if not self.sizes:
            self.ppl_note.setText("Measuring what each format would weigh…")
        elif self.ppl is None:
            self.ppl_note.setText("Evaluate the run (Prune tab) to see its perplexity beside each format.")
        else:
            self.ppl_note.setText(f"ppl: run {self.run}'s perplexity, for the formats that store its weights as "
                                  "they are (GGUF rounds them again to its own types).")

    def _draw_memory(self) -> None:
        unit, rows, kv = self.unit, self._rows(), self.kv_bytes
        ys = [y for y, _ in rows]
        weights = [s.bytes / unit for s in self.sizes]
        self.weight_bars.setOpts(x0=[0] * len(ys), y=ys, width=weights)
        self._colour(self.weight_bars)
        self.kv_bars.setOpts(x0=weights, y=ys, width=[kv / unit] * len(ys))
        texts = [f"{size_text(s.bytes + kv)}  (cache {kv / (s.bytes + kv):.0%})" if s.bytes + kv else ""
                 for s in self.sizes]
        ends = [w + kv / unit for w in weights]
        self.memory_labels = _labels(self.memory_plot, self.memory_labels, texts, ys, ends)
        _ticks(self.memory_plot, rows)
        self.memory_plot.getAxis("bottom").setLabel("MiB" if unit == MiB else "GiB")
        self.kv_note.setText(self._kv_text(kv))

    def _kv_text(self, kv: int) -> str:
        config = self.config
        if config is None:
            return ""
        heads = getattr(config, "num_attention_heads", 1)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        batch, context = self.batch.value(), self.context.value()
        return (f"KV cache {size_text(kv)} = keys and values × {config.num_hidden_layers} layers "
                f"× {kv_heads} KV heads × {head_dim} dims × {context:,} tokens × {batch} sequence{'s' if batch > 1 else ''} × 2 bytes "
                "(fp16). Activations and the runtime's own buffers come on top.")

    def _colour(self, bars: pg.BarGraphItem) -> None:
        brushes = [pg.mkBrush(*(SELECTED if s.format == self.selected else WEIGHTS), 255 if
                              s.format == self.selected or self.selected is None else 150) for s in self.sizes]
        bars.setOpts(brushes=brushes)

    def _fit_ranges(self) -> None:
        """Room right of the longest bar for its label, whatever the plot's width."""
        for plot, labels, bars in ((self.files_plot, self.file_labels, [self.file_bars]),
                                   (self.memory_plot, self.memory_labels, [self.weight_bars, self.kv_bars])):
            ends = np.zeros(len(self.sizes))
            for item in bars:
                x0 = np.asarray(item.opts["x0"], dtype=np.float64)
                width = np.asarray(item.opts["width"], dtype=np.float64)
                if len(width) == len(ends) == len(x0):
                    ends = np.maximum(ends, x0 + width)
            view = plot.getViewBox()
            pixels = max(view.width(), 1.0)
            metrics = QFontMetrics(plot.font())
            span = max(ends.max(initial=0.0), 1e-9)
            for end, label in zip(ends, labels):
                share = min((metrics.horizontalAdvance(label.toPlainText()) + 16) / pixels, 0.8)
                span = max(span, end / (1 - share))
            view.setXRange(0, span, padding=0)
            view.setYRange(-0.6, max(len(self.sizes), 1) - 0.4, padding=0)


def _plot(title: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, color=TEXT, size="10pt")
    plot.showGrid(x=True, y=False, alpha=0.2)
    plot.setMouseEnabled(x=False, y=False)
    plot.hideButtons()
    plot.setMenuEnabled(False)
    plot.getAxis("left").setStyle(tickLength=0)
    return plot


def _ticks(plot, rows) -> None:
    plot.getAxis("left").setTicks([[(y, name) for y, name in rows]])


def _labels(plot, old: list, texts, ys, ends) -> list:
    for item in old:
        plot.removeItem(item)
    labels = []
    for text, y, end in zip(texts, ys, ends):
        label = pg.TextItem(" " + text, color=TEXT, anchor=(0, 0.5))
        label.setPos(end, y)
        plot.addItem(label)
        labels.append(label)
    return labels

