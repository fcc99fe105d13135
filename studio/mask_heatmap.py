"""The kept/pruned mask of a layer as an image: each cell the fraction of weights kept.

Coordinates are weights (x = input column, y = output row), so the reduced image is stretched over
the whole layer. Zooming in far enough asks for a full-resolution tile (single weights, where N:M
groups show); hovering reports row, column, weight and score.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, QTimer, Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from core.analysis.views import TILE_CELLS

pg.setConfigOptions(imageAxisOrder="row-major")


class MaskHeatmap(QWidget):
    tile_wanted = Signal(str, object, object)   # layer name, (row0, row1), (col0, col1)

    def __init__(self, parent=None, title="Mask: fraction of weights kept", colormap="viridis", label="kept"):
        super().__init__(parent)
        self.name, self.shape, self.cell, self.tile = None, None, (1, 1), None
        self.heatmap = None
        self.plot = pg.PlotWidget(background="w")
        self.plot.setTitle(title, color="#2b3a55", size="10pt")
        self.plot.setLabel("bottom", "input column")
        self.plot.setLabel("left", "output row")
        self.plot.getViewBox().invertY(True)
        self.plot.getViewBox().setAspectLocked(False)
        self.plot.getViewBox().setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
        self.image = pg.ImageItem()
        self.tile_image = pg.ImageItem()
        self.tile_image.setZValue(10)
        self.plot.addItem(self.image)
        self.plot.addItem(self.tile_image)
        self.colorbar = pg.ColorBarItem(values=(0, 1), colorMap=pg.colormap.get(colormap), label=label, width=14,
                                        interactive=False)
        self.colorbar.setImageItem([self.image, self.tile_image], insert_in=self.plot.getPlotItem())
        self.hover = QLabel("Hover over the mask to read a weight")
        self.hover.setObjectName("hint")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.hover)
        self._debounce = QTimer(self, singleShot=True, interval=150)
        self._debounce.timeout.connect(self._maybe_ask_tile)
        self.plot.getViewBox().sigRangeChanged.connect(lambda *_: self._debounce.start())
        self.plot.scene().sigMouseMoved.connect(self._hovered)

    def show_heatmap(self, name: str, shape, heatmap: np.ndarray, cell, levels=None) -> None:
        same_layer = name == self.name
        self.name, self.shape, self.cell, self.heatmap = name, tuple(shape), tuple(cell), heatmap
        self.tile = None
        self.tile_image.clear()
        self.image.setImage(heatmap, autoLevels=False)
        self.image.setRect(QRectF(0, 0, shape[1], shape[0]))
        self.colorbar.setLevels(levels or _levels(heatmap))
        if not same_layer:
            self.plot.getViewBox().setRange(xRange=(0, shape[1]), yRange=(0, shape[0]), padding=0)
        self._debounce.start()

    def show_tile(self, name: str, tile) -> None:
        if name != self.name:
            return
        self.tile = tile
        rows, cols = tile.kept.shape
        self.tile_image.setImage(tile.kept, autoLevels=False)
        self.tile_image.setRect(QRectF(tile.col0, tile.row0, cols, rows))

    def clear(self) -> None:
        self.name, self.heatmap, self.tile = None, None, None
        self.image.clear()
        self.tile_image.clear()

    def zoom_to(self, rows, cols) -> None:
        self.plot.getViewBox().setRange(xRange=cols, yRange=rows, padding=0)

    def _visible(self):
        (x0, x1), (y0, y1) = self.plot.getViewBox().viewRange()
        return (int(max(0, y0)), int(np.ceil(y1))), (int(max(0, x0)), int(np.ceil(x1)))

    def _maybe_ask_tile(self) -> None:
        if self.name is None:
            return
        rows, cols = self._visible()
        if rows[1] - rows[0] <= TILE_CELLS and cols[1] - cols[0] <= TILE_CELLS:
            self.tile_wanted.emit(self.name, rows, cols)
        elif self.tile is not None:
            self.tile = None
            self.tile_image.clear()

    def _hovered(self, pos) -> None:
        if self.name is None or not self.plot.sceneBoundingRect().contains(pos):
            return
        point = self.plot.getViewBox().mapSceneToView(pos)
        row, col = int(np.floor(point.y())), int(np.floor(point.x()))
        if not (0 <= row < self.shape[0] and 0 <= col < self.shape[1]):
            self.hover.setText("")
            return
        self.hover.setText(self.describe(row, col))

    def describe(self, row: int, col: int) -> str:
        tile = self.tile
        if tile is not None and tile.row0 <= row < tile.row0 + tile.kept.shape[0] and tile.col0 <= col < tile.col0 + tile.kept.shape[1]:
            r, c = row - tile.row0, col - tile.col0
            text = f"row {row}, col {col}:  weight {tile.before[r, c]:+.5f}"
            if tile.after[r, c] != tile.before[r, c]:
                text += f" → {tile.after[r, c]:+.5f}"
            if tile.scores is not None:
                text += f",  score {tile.scores[r, c]:.4g}"
            return text + ("  (kept)" if tile.kept[r, c] else "  (pruned)")
        cr, cc = row // self.cell[0], col // self.cell[1]
        value = float(self.heatmap[min(cr, self.heatmap.shape[0] - 1), min(cc, self.heatmap.shape[1] - 1)])
        return (f"rows {cr * self.cell[0]}–{min((cr + 1) * self.cell[0], self.shape[0]) - 1}, "
                f"cols {cc * self.cell[1]}–{min((cc + 1) * self.cell[1], self.shape[1]) - 1}:  "
                f"{value:.1%} kept   (zoom in to see single weights)")


def _levels(heatmap: np.ndarray) -> tuple[float, float]:
    lo, hi = float(heatmap.min()), float(heatmap.max())
    return (lo, hi) if hi - lo > 1e-6 else (min(lo, 0.0), max(hi, 1.0))
