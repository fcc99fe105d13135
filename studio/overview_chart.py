"""Per-layer achieved sparsity and output error across the whole model, as bar charts that fill in
while a run progresses. Bars are in model order; hovering names the layer."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget


class OverviewChart(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.names: list[str] = []
        self.sparsity: dict[str, float] = {}
        self.error: dict[str, float] = {}
        self.sparsity_plot = _plot("Achieved sparsity per layer", "sparsity")
        self.error_plot = _plot("Relative output error per layer  ‖(W−Ŵ)X‖² / ‖WX‖²", "log10 error")
        self.error_plot.setXLink(self.sparsity_plot)
        self.sparsity_plot.setYRange(0, 1)
        self.hover = QLabel("Run a method to fill these charts; they update as layers finish")
        self.hover.setObjectName("hint")
        self.hover.setWordWrap(True)
        self.sparsity_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=(47, 111, 223))
        self.error_bars = pg.BarGraphItem(x=[], y0=[], height=[], width=0.8, brush=(230, 120, 30))
        self.sparsity_plot.addItem(self.sparsity_bars)
        self.error_plot.addItem(self.error_bars)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.sparsity_plot, 1)
        layout.addWidget(self.error_plot, 1)
        layout.addWidget(self.hover)
        for plot in (self.sparsity_plot, self.error_plot):
            plot.scene().sigMouseMoved.connect(lambda pos, p=plot: self._hovered(p, pos))

    def set_layers(self, names: list[str], blocks: list[int]) -> None:
        self.names = list(names)
        self.clear()
        ticks = []
        seen = set()
        for i, block in enumerate(blocks):
            if block not in seen:
                seen.add(block)
                ticks.append((i, str(block)))
        step = max(1, len(ticks) // 16)
        for plot in (self.sparsity_plot, self.error_plot):
            plot.getAxis("bottom").setTicks([ticks[::step], ticks])
            plot.setLabel("bottom", "decoder block (bars: its linear layers in order)")
            plot.setXRange(-1, max(1, len(self.names)), padding=0)

    def clear(self) -> None:
        self.sparsity, self.error = {}, {}
        self._redraw()

    def add_results(self, results) -> None:
        for result in results:
            self.sparsity[result.name] = result.sparsity
            if result.error is not None:
                self.error[result.name] = result.error
        self._redraw()

    @property
    def bar_count(self) -> int:
        return len(self.sparsity)

    def _redraw(self) -> None:
        index = {name: i for i, name in enumerate(self.names)}
        xs = [index[n] for n in self.sparsity if n in index]
        self.sparsity_bars.setOpts(x=xs, height=[self.sparsity[n] for n in self.sparsity if n in index], width=0.8)
        ex = [index[n] for n in self.error if n in index]
        logs = np.log10(np.maximum([self.error[n] for n in self.error if n in index], 1e-12)) if ex else np.array([])
        floor = float(logs.min()) - 0.5 if len(logs) else 0.0
        self.error_bars.setOpts(x=ex, y0=[floor] * len(ex), height=list(logs - floor), width=0.8)

    def _hovered(self, plot, pos) -> None:
        if not self.names or not plot.sceneBoundingRect().contains(pos):
            return
        i = int(round(plot.getViewBox().mapSceneToView(pos).x()))
        if 0 <= i < len(self.names):
            name = self.names[i]
            text = name
            if name in self.sparsity:
                text += f":  sparsity {self.sparsity[name]:.1%}"
            if name in self.error:
                text += f",  output error {self.error[name]:.3g}"
            self.hover.setText(text)


def _plot(title: str, ylabel: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, color="#2b3a55", size="10pt")
    plot.setLabel("left", ylabel)
    plot.showGrid(y=True, alpha=0.2)
    plot.setMouseEnabled(x=True, y=False)
    return plot
