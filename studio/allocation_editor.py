"""The allocation before a run, editable: a bar per decoder block to drag, a table to type in.

Dragging a bar (or typing a block's sparsity in the table) sets that block; the other blocks move
together to hold the parameter-weighted mean — the Prune panel's target — within [min, max]
(`core.pruning.allocation_edit.rebalance`). A block set by hand is locked (drawn darker) until the
locks are cleared, so setting a second block does not undo the first. Presets fill every bar: uniform,
OWL (the allocation the last OWL run chose on this model), or from a sensitivity profile. Below the
chart: the weights the allocation keeps and what the model would weigh stored sparse, updated as the
bars move. Run uses these bars when the Prune panel's allocation is "edited" (set by any edit here).
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QDoubleSpinBox, QHBoxLayout, QHeaderView, QLabel, QPushButton,
                               QSizePolicy, QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from core.errors import UserError
from core.pruning.allocation_edit import (nearest_feasible_level, rebalance, resulting_size, shift_to_mean, snap_to_levels,
                                          weighted_mean)

from .plot_legend import legend_below

FREE = (47, 111, 223)
LOCKED = (24, 50, 120)
SELECTED_PEN = (230, 120, 30)
TARGET = (200, 40, 40)
BOUND = (150, 150, 150)
HINT = ("Drag a bar up or down, or type a block's sparsity in the table: the other blocks move together to keep "
        "the average at the Prune panel's target. A block you set stays put (dark) until you clear the locks.")
LEVELS_HINT = (" With an N:{m} pattern a block keeps N' of every {m} weights, so each bar takes a multiple of 1/{m} "
               "(0 is dense).")
MiB, GiB = 2**20, 2**30
SPARSITY = 1                      # the table's editable column (first after the block: visible when narrow)


class _DragBox(pg.ViewBox):
    """A view box where a left-button drag that starts on a bar sets that bar's height to the pointer's."""

    def __init__(self, editor: "AllocationEditor"):
        super().__init__(enableMenu=False)
        self.editor = editor
        self.setMouseEnabled(x=False, y=False)
        self._dragged: int | None = None

    def mouseDragEvent(self, ev, axis=None) -> None:
        if ev.button() != Qt.MouseButton.LeftButton:
            return super().mouseDragEvent(ev, axis)
        if ev.isStart():
            self._dragged = self.editor.bar_at(self.mapSceneToView(ev.buttonDownScenePos()))
        if self._dragged is None:
            ev.ignore()
            return
        ev.accept()
        self.editor.set_block(self._dragged, self.mapSceneToView(ev.scenePos()).y())
        if ev.isFinish():
            self._dragged = None

    def mouseClickEvent(self, ev) -> None:
        index = self.editor.bar_at(self.mapSceneToView(ev.scenePos()))
        if ev.button() == Qt.MouseButton.LeftButton and index is not None:
            ev.accept()
            self.editor.select(index)
        else:
            super().mouseClickEvent(ev)


class AllocationEditor(QWidget):
    edited = Signal(tuple)            # the per-block sparsities, after every change made here

    def __init__(self, parent=None):
        super().__init__(parent)
        self.params: list[int] = []
        self.other_params = 0
        self.bytes_per_weight = 2.0
        self.sparsities: tuple[float, ...] = ()
        self.locked: set[int] = set()
        self.target = 0.5
        self.m = 0                        # N:M pattern's group size: every bar a multiple of 1/m; 0 for any value
        self.level_problem = ""           # why the bars could not be brought to those levels
        self.source = "uniform"           # what the bars came from: uniform, OWL, profile, edited
        self.selected: int | None = None
        self.owl: tuple[float, ...] | None = None
        self.profile: tuple[float, ...] | None = None
        self._filling = False
        self._build()

    def _build(self) -> None:
        self.uniform_button = QPushButton("Uniform")
        self.uniform_button.setToolTip("Every block at the target sparsity")
        self.owl_button = QPushButton("OWL")
        self.profile_button = QPushButton("From profile")
        self.unlock_button = QPushButton("Clear locks")
        self.unlock_button.setToolTip("Let every block move again when another is set")
        self.lo = _fraction_box(0.0, "The least sparsity a block may be given when the others rebalance")
        self.hi = _fraction_box(0.95, "The most sparsity a block may be given when the others rebalance")
        self.uniform_button.clicked.connect(lambda: self.apply_preset("uniform"))
        self.owl_button.clicked.connect(lambda: self.apply_preset("OWL"))
        self.profile_button.clicked.connect(lambda: self.apply_preset("profile"))
        self.unlock_button.clicked.connect(self.clear_locks)
        self.lo.valueChanged.connect(self._bounds_changed)
        self.hi.valueChanged.connect(self._bounds_changed)
        row = QHBoxLayout()
        row.addWidget(QLabel("Start from"))
        for button in (self.uniform_button, self.owl_button, self.profile_button):
            row.addWidget(button)
        row.addSpacing(16)
        row.addWidget(QLabel("min"))
        row.addWidget(self.lo)
        row.addWidget(QLabel("max"))
        row.addWidget(self.hi)
        row.addStretch(1)
        row.addWidget(self.unlock_button)

        self.box = _DragBox(self)
        self.plot = pg.PlotWidget(background="w", viewBox=self.box)
        self.plot.setTitle("Sparsity per decoder block (drag a bar)", color="#2b3a55", size="10pt")
        self.plot.setLabel("left", "sparsity")
        self.plot.setLabel("bottom", "decoder block")
        self.plot.showGrid(y=True, alpha=0.2)
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        legend_below(self.plot, columns=2)     # two columns: the tab may be narrow
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.7, brush=FREE, name="moves with the others")
        self.plot.addItem(self.bars)
        self.plot.getPlotItem().legend.addItem(pg.BarGraphItem(x=[0], height=[1], width=1, brush=LOCKED),
                                               "set by you (locked)")
        self.target_line = pg.InfiniteLine(angle=0, movable=False,
                                           pen=pg.mkPen(TARGET, width=2, style=Qt.PenStyle.DashLine))
        self.lo_line = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(BOUND, style=Qt.PenStyle.DotLine))
        self.hi_line = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(BOUND, style=Qt.PenStyle.DotLine))
        for line in (self.target_line, self.lo_line, self.hi_line):
            self.plot.addItem(line)
        self.plot.getPlotItem().legend.addItem(
            pg.PlotDataItem(pen=pg.mkPen(TARGET, width=2, style=Qt.PenStyle.DashLine)), "average (target)")
        self.plot.getPlotItem().legend.addItem(pg.PlotDataItem(pen=pg.mkPen(BOUND, style=Qt.PenStyle.DotLine)),
                                               "min / max")

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["block", "sparsity %", "locked", "weights"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.itemChanged.connect(self._cell_changed)
        self.table.itemSelectionChanged.connect(self._row_selected)

        self.summary = QLabel("Open a model to edit how its sparsity is spread over the blocks.")
        self.summary.setObjectName("hint")
        self.summary.setWordWrap(True)
        self.hint = QLabel(HINT)
        self.hint.setObjectName("hint")
        self.hint.setWordWrap(True)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.plot)
        split.addWidget(self.table)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([700, 300])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(row)
        layout.addWidget(split, 1)
        layout.addWidget(self.summary)
        layout.addWidget(self.hint)
        self._update_presets()
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)   # squeezed, not widening

    # ---- what it edits -------------------------------------------------------------------------------
    def set_model(self, params_per_block: list[int], other_params: int = 0, bytes_per_weight: float = 2.0) -> None:
        """A model was opened: its prunable weights per block; the bars start uniform at the target."""
        self.params = [int(p) for p in params_per_block]
        self.other_params, self.bytes_per_weight = int(other_params), float(bytes_per_weight)
        self.owl = self.profile = None
        self.locked.clear()
        self.selected = None
        count = len(self.params)
        step = max(1, -(-count // 12))
        self.plot.getAxis("bottom").setTicks([[(i, str(i)) for i in range(0, count, step)],
                                              [(i, "") for i in range(count)]])
        self.plot.setXRange(-0.7, max(1, count) - 0.3, padding=0)
        self._fill([self.target] * count, "uniform")

    def set_target(self, target: float) -> None:
        """The Prune panel's sparsity changed: every unlocked bar moves to the new average."""
        self.target = float(target)
        if not self.params:
            return self._redraw()
        if self.source == "uniform":
            return self._fill([self.target] * len(self.params), "uniform")
        self._fill(shift_to_mean(self.sparsities, self.params, self.target, *self.bounds, self.locked), self.source)

    def set_pattern(self, m: int, target: float | None = None) -> None:
        """The Prune panel's pattern changed: an N:m pattern (m ≥ 2) allows only multiples of 1/m per block
        and sets the target itself; any other pattern (m = 0) allows every value."""
        self.m = m if m >= 2 else 0
        self.hint.setText(HINT + (LEVELS_HINT.format(m=self.m) if self.m else ""))
        self.set_target(self.target if target is None else target)      # the bars refilled, on levels now

    def set_owl(self, sparsities) -> None:
        """The per-block sparsity OWL chose in a run on this model: the OWL preset from now on."""
        if len(sparsities) == len(self.params):
            self.owl = tuple(float(s) for s in sparsities)
            self._update_presets()

    def set_profile_allocation(self, sparsities, bounds: tuple[float, float] | None = None, apply: bool = True) -> None:
        """The sensitivity allocation of a profile (made within `bounds`, which become the editor's): the
        'From profile' preset, applied at once unless told."""
        if len(sparsities) != len(self.params):
            return
        self.profile = tuple(float(s) for s in sparsities)
        if bounds is not None:
            for box, value in zip((self.lo, self.hi), bounds):
                box.blockSignals(True)
                box.setValue(value)
                box.blockSignals(False)
        self._update_presets()
        if apply:
            self.apply_preset("profile")

    def apply_preset(self, name: str) -> None:
        values = {"uniform": [self.target] * len(self.params), "OWL": self.owl, "profile": self.profile}[name]
        if values is None:
            return
        self.locked.clear()
        # a preset made for another average (OWL at another sparsity) is moved onto the target
        values = shift_to_mean(values, self.params, self.target, *self.bounds)
        self._fill(values, name)
        self.edited.emit(self.sparsities)

    def set_block(self, index: int, value: float) -> None:
        """Block `index` set by the user to `value` (brought within what the others can make up for)."""
        if not 0 <= index < len(self.params):
            return
        lo, hi = self.bounds
        if self.m:                  # a level the others can make up for, so the mean holds after snapping
            value = nearest_feasible_level(self.sparsities, self.params, index, value, self.m, lo, hi,
                                           self.locked - {index})
        values = rebalance(self.sparsities, self.params, index, value, lo, hi, self.locked - {index})
        self.locked.add(index)
        self.selected = index
        self._fill(values, "edited")
        self.edited.emit(self.sparsities)

    def clear_locks(self) -> None:
        self.locked.clear()
        self._redraw()

    def select(self, index: int) -> None:
        self.selected = index
        self.table.selectRow(index)
        self._redraw()

    @property
    def bounds(self) -> tuple[float, float]:
        lo, hi = self.lo.value(), self.hi.value()
        return min(lo, hi), max(lo, hi)

    @property
    def mean(self) -> float:
        return weighted_mean(self.sparsities, self.params) if self.params else self.target

    def bar_at(self, point) -> int | None:
        """The block whose bar (its width, from 0 to a little above its top) holds `point`, in view coordinates."""
        i = int(round(point.x()))
        if not 0 <= i < len(self.sparsities) or abs(point.x() - i) > 0.4:
            return None
        return i

    @property
    def bar_heights(self) -> list[float]:
        return [float(h) for h in self.bars.opts["height"]]

    # ---- drawing -------------------------------------------------------------------------------------
    def _fill(self, values, source: str) -> None:
        self.level_problem = ""
        if self.m:
            try:
                values = snap_to_levels(values, self.params, self.m, self.target, *self.bounds, self.locked)
            except UserError as exc:
                self.level_problem = str(exc)
        self.sparsities = tuple(float(v) for v in values)
        self.source = source
        self._redraw()
        self._fill_table()

    def _redraw(self) -> None:
        xs = list(range(len(self.sparsities)))
        brushes = [pg.mkBrush(LOCKED if i in self.locked else FREE) for i in xs]
        pens = [pg.mkPen(SELECTED_PEN, width=2) if i == self.selected else pg.mkPen(None) for i in xs]
        self.bars.setOpts(x=xs, height=list(self.sparsities), width=0.7, brushes=brushes or None, pens=pens or None)
        lo, hi = self.bounds
        self.target_line.setValue(self.target)
        self.lo_line.setValue(lo)
        self.hi_line.setValue(hi)
        self.plot.setYRange(0, 1.0, padding=0)
        self.unlock_button.setEnabled(bool(self.locked))
        self._show_size()

    def _fill_table(self) -> None:
        self._filling = True
        try:
            self.table.setRowCount(len(self.sparsities))
            for i, s in enumerate(self.sparsities):
                cells = [QTableWidgetItem(str(i)), QTableWidgetItem(f"{100 * s:.1f}"),
                         QTableWidgetItem("yes" if i in self.locked else ""), QTableWidgetItem(_count(self.params[i]))]
                for column, cell in enumerate(cells):
                    if column != SPARSITY:
                        cell.setFlags(cell.flags() & ~Qt.ItemFlag.ItemIsEditable)
                    cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    self.table.setItem(i, column, cell)
                cells[SPARSITY].setToolTip("Type a percentage: the other blocks move to hold the average")
        finally:
            self._filling = False
        # wide enough for every column beside the chart: the splitter gives the chart what is left
        table = self.table
        table.setMinimumWidth(table.horizontalHeader().length() + table.verticalScrollBar().sizeHint().width()
                              + 2 * table.frameWidth())

    def _show_size(self) -> None:
        if not self.params:
            return
        size = resulting_size(self.params, self.sparsities, self.other_params, self.bytes_per_weight)
        names = {"uniform": "uniform", "OWL": "OWL's", "profile": "the profile's", "edited": "edited"}
        self.summary.setText(
            f"<b>{names.get(self.source, self.source)}</b> allocation: average {self.mean:.1%} of "
            f"{_count(size.prunable_params)} prunable weights (target {self.target:.1%}), blocks "
            f"{min(self.sparsities):.1%}–{max(self.sparsities):.1%}. Keeps {_count(size.kept_params)} of "
            f"{_count(size.total_params)} parameters: about <b>{_bytes(size.sparse_bytes)}</b> stored sparse "
            f"(kept values + a 1-bit mask); an ordinary HF folder stores the zeros and stays "
            f"{_bytes(size.dense_bytes)}." + (f" <b>Not N:{self.m} levels:</b> {self.level_problem}"
                                              if self.level_problem else ""))

    def _update_presets(self) -> None:
        self.owl_button.setEnabled(self.owl is not None)
        self.owl_button.setToolTip("OWL's per-block sparsity from the last OWL run on this model, moved to the target"
                                   if self.owl is not None else
                                   "Run once with the OWL allocation: its per-block sparsity becomes this preset")
        self.profile_button.setEnabled(self.profile is not None)
        self.profile_button.setToolTip("The sensitivity allocation of the profile (Sensitivity tab → Use as allocation)"
                                       if self.profile is not None else
                                       "Measure a sensitivity profile by layer or block, then press Use as allocation")

    # ---- table and bounds ----------------------------------------------------------------------------
    def _cell_changed(self, item) -> None:
        if self._filling or item.column() != SPARSITY:
            return
        try:
            value = float(item.text().strip().rstrip("%")) / 100
        except ValueError:
            self._fill_table()
            return
        self.set_block(item.row(), value)

    def _row_selected(self) -> None:
        rows = {index.row() for index in self.table.selectedIndexes()}
        if len(rows) == 1:
            self.selected = rows.pop()
            self._redraw()

    def _bounds_changed(self) -> None:
        if self.params:
            self._fill(shift_to_mean(self.sparsities, self.params, self.target, *self.bounds, self.locked),
                       self.source)


def _fraction_box(value: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.0, 0.99)
    box.setSingleStep(0.05)
    box.setDecimals(2)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"
