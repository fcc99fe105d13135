"""The benchmark's charts, filled as measurements land: latency against token count for one layer
shape (a line per backend), speedup over dense per shape at the largest token count, and memory
over time (torch's CUDA allocator, NVML, and this process's RSS)."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from studio.plot_legend import legend_below, legend_right

BASELINES = ("dense", "dense-int8", "dense-fp8")     # what speedups are measured against: no bar of their own
COLOURS = [(47, 111, 223), (230, 120, 30), (40, 160, 90), (170, 60, 180), (200, 40, 40), (90, 90, 90)]


class BenchCharts(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.results, self.memory = [], []
        self.shape = QComboBox()
        self.shape.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.shape.setMinimumWidth(130)
        self.shape.currentIndexChanged.connect(self._draw_latency)
        self.latency = _plot("Latency by token count", "tokens (log10)", "median ms (log10)")
        self.latency.setLogMode(x=True, y=True)
        legend_below(self.latency, columns=2)
        self.speedup = _plot("Speedup over dense at the largest token count", "layer shape", "× dense")
        legend_below(self.speedup, columns=2)
        self.vram = _plot("Memory during the benchmark", "seconds", "MiB")
        legend_right(self.vram)
        self.note = QLabel("")
        self.note.setObjectName("warning")
        self.note.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(QLabel("Shape"))
        top.addWidget(self.shape)
        top.addWidget(self.note, 1)
        charts = QHBoxLayout()
        charts.addWidget(self.latency, 1)
        charts.addWidget(self.speedup, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addLayout(charts, 3)
        layout.addWidget(self.vram, 2)

    def clear(self) -> None:
        self.results, self.memory = [], []
        self.shape.clear()
        for plot in (self.latency, self.speedup, self.vram):
            plot.clear()

    def set_note(self, text: str) -> None:
        self.note.setText(text)

    def add_result(self, result) -> None:
        self.results.append(result)
        label = f"{result.shape[0]} × {result.shape[1]}"
        if self.shape.findText(label) < 0:
            self.shape.addItem(label, tuple(result.shape))
        if tuple(result.shape) == self.shape.currentData():
            self._draw_latency()
        self._draw_speedup()

    def add_memory(self, sample) -> None:
        self.memory.append(sample)
        if len(self.memory) % 10 == 1:
            self._draw_memory()

    def finish(self) -> None:
        self._draw_memory()

    @property
    def points(self) -> int:
        return sum(len(item.xData) for item in self.latency.listDataItems() if item.xData is not None)

    def _draw_latency(self) -> None:
        self.latency.clear()
        shape = self.shape.currentData()
        series: dict = {}
        for r in self.results:
            if tuple(r.shape) == shape and r.status == "ok" and r.median_ms:
                series.setdefault(f"{r.backend} {r.dtype}", []).append((r.tokens, r.median_ms))
        for i, (name, points) in enumerate(sorted(series.items())):
            points.sort()
            colour = COLOURS[i % len(COLOURS)]
            self.latency.plot([p[0] for p in points], [p[1] for p in points], name=name, pen=pg.mkPen(colour, width=2),
                              symbol="o", symbolSize=6, symbolBrush=colour)

    def _draw_speedup(self) -> None:
        self.speedup.clear()
        ok = [r for r in self.results if r.status == "ok" and r.speedup is not None and r.backend not in BASELINES]
        if not ok:
            return
        shapes = list(dict.fromkeys(tuple(r.shape) for r in ok))
        backends = sorted({f"{r.backend} {r.dtype}" for r in ok})
        width = 0.8 / max(1, len(backends))
        for b, backend in enumerate(backends):
            xs, heights = [], []
            for s, shape in enumerate(shapes):
                rows = [r for r in ok if tuple(r.shape) == shape and f"{r.backend} {r.dtype}" == backend]
                if rows:
                    best = max(rows, key=lambda r: r.tokens)
                    xs.append(s - 0.4 + width * (b + 0.5))
                    heights.append(best.speedup)
            bars = pg.BarGraphItem(x=xs, height=heights, width=width, brush=COLOURS[b % len(COLOURS)], name=backend)
            self.speedup.addItem(bars)
        self.speedup.addItem(pg.InfiniteLine(1.0, angle=0, pen=pg.mkPen((120, 120, 120), style=pg.QtCore.Qt.PenStyle.DashLine)))
        self.speedup.getAxis("bottom").setTicks([[(i, f"{s[0]}×{s[1]}") for i, s in enumerate(shapes)]])

    def _draw_memory(self) -> None:
        self.vram.clear()
        if not self.memory:
            return
        t = [m.t_s for m in self.memory]
        for i, (field, name) in enumerate((("allocated_bytes", "VRAM allocated"), ("reserved_bytes", "VRAM reserved"),
                                           ("nvml_used_bytes", "GPU used (NVML)"), ("rss_bytes", "process RSS"))):
            values = [getattr(m, field) for m in self.memory]
            if any(v is not None for v in values):
                pairs = [(x, v / 2**20) for x, v in zip(t, values) if v is not None]
                self.vram.plot([p[0] for p in pairs], [p[1] for p in pairs], name=name,
                               pen=pg.mkPen(COLOURS[i], width=2))


def _plot(title, xlabel, ylabel) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, color="#2b3a55", size="10pt")
    plot.setLabel("bottom", xlabel)
    plot.setLabel("left", ylabel)
    plot.showGrid(x=True, y=True, alpha=0.2)
    return plot
