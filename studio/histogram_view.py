"""Histograms of a layer's weights (before/after overlay) and of the score its method ranks by,
with the pruning threshold drawn on the score; after a quantized run, beside the weights, the integer
codes its kept weights were stored as, one bar per level of the grid. Draws what it is given; computes
nothing heavy."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QTimer
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from studio.plot_legend import legend_below

BEFORE = (47, 111, 223)
AFTER = (230, 120, 30)
THRESHOLD = (200, 40, 40)
WIDE_LEGEND = 320       # pixels a plot needs for its legend in one row
LABELLED_LEVELS = 16    # up to this many levels (int4), a tick per level; labels where they fit
CODES_TIP = ("The integer code of every kept weight: weight = scale × (code − zero point), one scale per group "
             "of inputs. Pruned zeros are no level. A grid whose outer levels stay empty wastes its range; "
             "one piled at a few levels keeps little of the weights' detail.")


class HistogramView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.view = None
        self.log_y = QCheckBox("log y")
        self.log_y.setChecked(True)
        self.log_y.toggled.connect(self._redraw)
        self.title = QLabel("Select a layer to see its weights and scores")
        self.title.setObjectName("heading")
        self.title.setWordWrap(True)         # a long layer name wraps instead of widening the window
        self.weights_plot = _plot("Weights", "weight value")
        self.scores_plot = _plot("Score", "score")
        self.legend = legend_below(self.weights_plot, columns=2)
        self.before = _curve(self.weights_plot, BEFORE, "weights")
        self.after = _curve(self.weights_plot, AFTER, "after (non-zero)")
        self.score_legend = legend_below(self.scores_plot, columns=2)   # also keeps both plots the same height
        self.scores = _curve(self.scores_plot, BEFORE, "score")
        self.codes_plot = _plot("Quantized codes", "integer level")
        self.codes_plot.setToolTip(CODES_TIP)
        self.code_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=pg.mkBrush(*AFTER, 170),
                                         pen=pg.mkPen(AFTER, width=1))
        self.codes_plot.addItem(self.code_bars)
        self.codes_plot.setVisible(False)
        self._codes_title = ""
        threshold_pen = pg.mkPen(THRESHOLD, width=2, style=pg.QtCore.Qt.PenStyle.DashLine)
        self.threshold = pg.InfiniteLine(0, angle=90, pen=threshold_pen)   # named in the legend, not on the curve
        self.score_legend.addItem(pg.PlotDataItem(pen=threshold_pen), "pruned below the threshold")
        self.scores_plot.addItem(self.threshold)
        self.clear()
        header = QHBoxLayout()
        header.addWidget(self.title, 1)
        header.addWidget(self.log_y)
        plots = QHBoxLayout()
        plots.addWidget(self.weights_plot, 3)
        plots.addWidget(self.codes_plot, 2)          # 16 bars (or 256 thin ones) need less room than a curve
        plots.addWidget(self.scores_plot, 3)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(header)
        layout.addLayout(plots, 1)

        self.weights_plot.installEventFilter(self)      # the codes plot coming or going resizes it

    def eventFilter(self, watched, event) -> bool:
        if watched is self.weights_plot and event.type() == QEvent.Type.Resize:
            self._fit_legends()
        return False

    def _fit_legends(self) -> None:
        """Both legends in one column when a plot is too narrow for a row: never cut, and the two plots
        keep the same height."""
        columns = 2 if self.weights_plot.width() >= WIDE_LEGEND else 1
        for legend in (self.legend, self.score_legend):
            if legend.columnCount != columns:
                legend.setColumnCount(columns)

    def show_view(self, view) -> None:
        self.view = view
        rows, cols = view.shape
        state = "after the run" if view.pruned else "dense"
        if view.row_stride > 1:
            state += f", sampled: every {view.row_stride}th row"
        self.title.setText(f"{view.name}   {rows} × {cols}   ({state})")
        self._redraw()

    def clear(self) -> None:
        self.view = None
        for item in (self.before, self.after, self.scores):
            item.setData([], [])
        self.threshold.hide()
        self.code_bars.setOpts(x=[], height=[])
        self.codes_plot.setVisible(False)
        self.scores_plot.setVisible(True)

    @property
    def shown_curves(self) -> int:
        return sum(item.isVisible() and item.xData is not None and len(item.xData) > 0
                   for item in (self.before, self.after))

    def _show_in_legend(self, item, visible: bool) -> None:
        present = any(sample.item is item for sample, _ in self.legend.items)
        if visible and not present:
            self.legend.addItem(item, "after (non-zero)")
        elif not visible and present:
            self.legend.removeItem(item)

    def _redraw(self) -> None:
        """Update the curves in place: rebuilding plot items on every selection cost tens of ms."""
        if self.view is None:
            return
        summary = self.view.summary
        log = self.log_y.isChecked()
        label = "log10 count" if log else "count"
        for plot, side, text in ((self.weights_plot, "left", label), (self.scores_plot, "left", label),
                                 (self.scores_plot, "bottom", self.view.score_label)):
            if plot.getAxis(side).labelText != text:     # a new label re-lays the plot out: only when it changes
                plot.setLabel(side, text)
        _set_steps(self.before, summary.weights_before, log)
        self.legend.getLabel(self.before).setText("before" if self.view.pruned else "weights")
        self.after.setVisible(self.view.pruned)
        self._show_in_legend(self.after, self.view.pruned)
        if self.view.pruned:
            _set_steps(self.after, summary.weights_after, log)
        self._redraw_codes(summary.codes, log)
        # The score plot on the next turn of the event loop: both plots repainted in one turn (a legend entry
        # appearing re-lays the first one out) kept the window from answering for 50-60 ms during a run.
        QTimer.singleShot(0, self, self._redraw_scores)

    def _redraw_codes(self, codes, log: bool) -> None:
        """One bar per level of the grid; a quantize-only run has no score, so the codes take its place."""
        self.codes_plot.setVisible(codes is not None)
        self.scores_plot.setVisible(codes is None or self.view.summary.scores is not None)
        if codes is None:
            return
        levels = np.round((codes.edges[:-1] + codes.edges[1:]) / 2).astype(int)
        counts = codes.counts.astype(np.float64)
        self.code_bars.setOpts(x=levels, height=np.log10(np.maximum(counts, 1.0)) if log else counts)
        title = f"int{int(np.log2(len(levels)))} codes"       # short: the plot is the narrowest of the three
        if title != self._codes_title:
            self._codes_title = title
            self.codes_plot.setTitle(title, color="#2b3a55", size="10pt")
            self.codes_plot.setLabel("bottom", f"level ({len(levels)} levels)")
        if self.codes_plot.getAxis("left").labelText != self.weights_plot.getAxis("left").labelText:
            self.codes_plot.setLabel("left", self.weights_plot.getAxis("left").labelText)
        axis = self.codes_plot.getAxis("bottom")
        if len(levels) <= LABELLED_LEVELS:        # every 4th level labelled, the others where there is room
            major = [(int(v), str(int(v))) for v in levels if v % 4 == 0]
            axis.setTicks([major, [(int(v), str(int(v))) for v in levels if v % 4]])
        else:
            axis.setTicks(None)
        self.codes_plot.setXRange(levels[0] - 1.2, levels[-1] + 1.2, padding=0)   # room for the end labels

    def _redraw_scores(self) -> None:
        if self.view is None:
            return
        summary, log = self.view.summary, self.log_y.isChecked()
        if summary.scores is not None:
            _set_steps(self.scores, summary.scores, log)
        else:
            self.scores.setData([], [])
        if summary.score_threshold is not None:
            self.threshold.setValue(summary.score_threshold)
            self.threshold.show()
        else:
            self.threshold.hide()


def _plot(title: str, xlabel: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, color="#2b3a55", size="10pt")
    plot.setLabel("bottom", xlabel)
    plot.showGrid(x=True, y=True, alpha=0.2)
    plot.setMouseEnabled(x=True, y=False)
    return plot


def _curve(plot, colour, name=None) -> pg.PlotDataItem:
    return plot.plot([0, 1], [0], stepMode="center", fillLevel=0, name=name,
                     brush=pg.mkBrush(*colour, 70), pen=pg.mkPen(colour, width=1.5))


def _set_steps(curve, hist, log: bool) -> None:
    counts = hist.counts.astype(np.float64)
    if log:
        counts = np.log10(np.maximum(counts, 1.0))
    curve.setData(hist.edges, counts)
