"""A sweep's perplexity against sparsity, filled point by point: log y, the dense model as a horizontal line,
one curve per method (and pattern), a legend. Files are drawn by core's renderer (`core.studies.sweep_plot`)."""

from __future__ import annotations

import math

import pyqtgraph as pg

from studio.plot_legend import legend_below

COLOURS = [(47, 111, 223), (230, 120, 30), (40, 160, 90), (170, 60, 180), (200, 40, 40), (90, 90, 90)]


class SweepChart(pg.PlotWidget):
    def __init__(self, parent=None):
        super().__init__(parent, background="w")
        self.setTitle("Perplexity against sparsity")
        self.setLabel("bottom", "sparsity (%)")
        self.setLabel("left", "perplexity (log scale)")
        self.setLogMode(x=False, y=True)
        self.showGrid(x=True, y=True, alpha=0.25)
        self.legend = legend_below(self, columns=3)
        self.values: dict[str, list[tuple[float, float]]] = {}     # curve -> [(sparsity %, perplexity)]
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.dense: pg.InfiniteLine | None = None
        self.dense_ppl: float | None = None

    def clear_points(self) -> None:
        for curve in self.curves.values():
            self.removeItem(curve)
        if self.dense is not None:
            self.removeItem(self.dense)
            self.legend.removeItem("dense")
        self.values, self.curves, self.dense, self.dense_ppl = {}, {}, None, None

    def set_dense(self, ppl: float) -> None:
        if self.dense is not None:
            self.removeItem(self.dense)
            self.legend.removeItem("dense")
        self.dense_ppl = ppl
        pen = pg.mkPen((90, 90, 90), width=1.5, style=pg.QtCore.Qt.PenStyle.DashLine)
        # an InfiniteLine is placed in the view's coordinates, which are log10 of the values on a log axis
        self.dense = pg.InfiniteLine(pos=math.log10(ppl), angle=0, pen=pen,
                                     label=f"dense {ppl:.2f}", labelOpts={"position": 0.05, "color": (90, 90, 90)})
        self.addItem(self.dense)
        self.legend.addItem(pg.PlotDataItem(pen=pen), "dense")

    def add_point(self, name: str, sparsity: float, ppl: float) -> None:
        """One finished point of curve `name` (sparsity as a fraction)."""
        values = self.values.setdefault(name, [])
        values.append((100 * sparsity, ppl))
        values.sort()
        if name not in self.curves:
            colour = COLOURS[len(self.curves) % len(COLOURS)]
            self.curves[name] = self.plot([], [], name=name, pen=pg.mkPen(colour, width=2), symbol="o",
                                          symbolSize=7, symbolBrush=colour, symbolPen=None)
        xs, ys = zip(*values)
        self.curves[name].setData(list(xs), list(ys))
