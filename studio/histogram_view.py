"""Histograms of a layer's weights (before/after overlay) and of the score its method ranks by,
with the pruning threshold drawn on the score. Draws what it is given; computes nothing heavy."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

BEFORE = (47, 111, 223)
AFTER = (230, 120, 30)
THRESHOLD = (200, 40, 40)


class HistogramView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.view = None
        self.log_y = QCheckBox("log y")
        self.log_y.setChecked(True)
        self.log_y.toggled.connect(self._redraw)
        self.title = QLabel("Select a layer to see its weights and scores")
        self.title.setObjectName("heading")
        self.weights_plot = _plot("Weights", "weight value")
        self.scores_plot = _plot("Score", "score")
        self.weights_plot.addLegend(offset=(-10, 10))
        header = QHBoxLayout()
        header.addWidget(self.title, 1)
        header.addWidget(self.log_y)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(header)
        layout.addWidget(self.weights_plot, 1)
        layout.addWidget(self.scores_plot, 1)

    def show_view(self, view) -> None:
        self.view = view
        rows, cols = view.shape
        state = "after the run" if view.pruned else "dense"
        self.title.setText(f"{view.name}   {rows} × {cols}   ({state})")
        self._redraw()

    def clear(self) -> None:
        self.view = None
        self.weights_plot.clear()
        self.scores_plot.clear()

    @property
    def shown_curves(self) -> int:
        return sum(isinstance(item, pg.PlotDataItem) for item in self.weights_plot.listDataItems())

    def _redraw(self) -> None:
        if self.view is None:
            return
        summary = self.view.summary
        log = self.log_y.isChecked()
        label = "log10 count" if log else "count"
        self.weights_plot.clear()
        self.weights_plot.setLabel("left", label)
        _steps(self.weights_plot, summary.weights_before, BEFORE, "before" if self.view.pruned else "weights", log)
        if self.view.pruned:
            _steps(self.weights_plot, summary.weights_after, AFTER, "after (non-zero)", log)
        self.scores_plot.clear()
        self.scores_plot.setLabel("left", label)
        self.scores_plot.setLabel("bottom", self.view.score_label)
        if summary.scores is not None:
            _steps(self.scores_plot, summary.scores, BEFORE, None, log)
        if summary.score_threshold is not None:
            line = pg.InfiniteLine(summary.score_threshold, angle=90,
                                   pen=pg.mkPen(THRESHOLD, width=2, style=pg.QtCore.Qt.PenStyle.DashLine),
                                   label="threshold", labelOpts={"position": 0.9, "color": THRESHOLD})
            self.scores_plot.addItem(line)


def _plot(title: str, xlabel: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, color="#2b3a55", size="10pt")
    plot.setLabel("bottom", xlabel)
    plot.showGrid(x=True, y=True, alpha=0.2)
    plot.setMouseEnabled(x=True, y=False)
    return plot


def _steps(plot, hist, colour, name, log: bool) -> None:
    counts = hist.counts.astype(np.float64)
    if log:
        counts = np.log10(np.maximum(counts, 1.0))
    plot.plot(hist.edges, counts, stepMode="center", fillLevel=0, name=name,
              brush=pg.mkBrush(*colour, 70), pen=pg.mkPen(colour, width=1.5))
