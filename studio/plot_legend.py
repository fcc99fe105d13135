"""A legend laid out beside a plot's data area (below the x axis, or right of it), in a cell of its own
in the plot's grid, so it never sits on the data."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QSizePolicy

# PlotItem's grid: rows title 0, top axis 1, view 2, bottom axis 3; columns left axis 0, view 1, right axis 2
BELOW, RIGHT = (4, 1), (2, 3)
GAP = 6                 # pixels between the data area's axis and the legend


class _LegendInLayout(pg.LegendItem):
    def updateSize(self) -> None:
        # pyqtgraph pins a legend's geometry at (0, 0); here the plot's layout places and sizes it
        self.updateGeometry()


def legend_below(plot: pg.PlotWidget, columns: int = 4) -> pg.LegendItem:
    """Give the plot a legend under its x axis; named items added to the plot join it as usual."""
    return _outside(plot, BELOW, columns, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)


def legend_right(plot: pg.PlotWidget) -> pg.LegendItem:
    """A one-column legend right of the data area: for wide, short plots."""
    return _outside(plot, RIGHT, 1, Qt.AlignmentFlag.AlignTop)


def _outside(plot, cell, columns, alignment) -> pg.LegendItem:
    item = plot.getPlotItem()
    legend = _LegendInLayout(colCount=columns)
    legend.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)   # its own height, not the row's
    item.layout.addItem(legend, *cell)
    item.layout.setAlignment(legend, alignment)
    row, column = cell
    if column > 1:
        item.layout.setColumnSpacing(column - 1, GAP)
    else:
        item.layout.setRowSpacing(row - 1, GAP)
    item.legend = legend
    return legend
