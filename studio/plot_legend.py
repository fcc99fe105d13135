"""A legend laid out below a plot's x axis, in a row of its own, so it never sits on the data."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt

LEGEND_ROW = 4          # PlotItem's grid: title 0, top axis 1, view 2, bottom axis 3


class _LegendInLayout(pg.LegendItem):
    def updateSize(self) -> None:
        # pyqtgraph pins a legend's geometry at (0, 0); here the plot's layout places and sizes it
        self.updateGeometry()


def legend_below(plot: pg.PlotWidget, columns: int = 4) -> pg.LegendItem:
    """Give the plot a legend under its x axis; named items added to the plot join it as usual."""
    item = plot.getPlotItem()
    legend = _LegendInLayout(colCount=columns)
    item.layout.addItem(legend, LEGEND_ROW, 1)
    item.layout.setAlignment(legend, Qt.AlignmentFlag.AlignHCenter)
    item.legend = legend
    return legend
