"""A sensitivity profile as bars: one per unit (layer, block or layer kind), by depth or most sensitive first,
coloured by layer kind with a legend. It fills as the engine measures the units; hovering names a bar's
numbers. Draws the `UnitEntry` values it is given; holds no tensors."""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .plot_legend import legend_below

# one colour per layer kind, in the order kinds first appear (attention's, then the MLP's)
PALETTE = [(47, 111, 223), (230, 120, 30), (46, 160, 90), (200, 40, 40), (142, 68, 173), (140, 86, 75),
           (220, 100, 180), (120, 120, 120), (188, 189, 34), (23, 190, 207)]
DEPTH, SENSITIVITY = "depth", "sensitivity"
START_HINT = "Start a profile: each unit is pruned alone, the rest kept dense, and its cost drawn here."
HOVER_HINT = "Hover a bar for its unit's numbers; taller bars are the units that pruning hurts most."


class ProfileChart(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.entries: list = []             # UnitEntry, in the order measured (model order)
        self.order = DEPTH
        self.measured = True                # Δperplexity (False: the fast mode's output error)
        self.colours: dict[str, tuple] = {}
        self.plot = pg.PlotWidget(background="w")
        self.plot.setTitle("Sensitivity: the cost of pruning each unit alone", color="#2b3a55", size="10pt")
        self.plot.showGrid(y=True, alpha=0.2)
        self.plot.setMouseEnabled(x=True, y=False)
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.legend = legend_below(self.plot, columns=3)
        self.series: dict[str, pg.BarGraphItem] = {}
        self.hover = QLabel(START_HINT)
        self.hover.setObjectName("hint")
        self.hover.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.hover)
        self.plot.scene().sigMouseMoved.connect(self._hovered)
        self._axis_labels()

    # ---- what is shown -------------------------------------------------------------------------------
    def begin(self, measured: bool) -> None:
        self.measured = measured
        self.entries = []
        self.colours = {}
        for item in self.series.values():
            self.plot.removeItem(item)
        self.series = {}
        self.legend.clear()
        self.hover.setText(START_HINT)
        self._axis_labels()
        self._redraw()

    def add(self, entry) -> None:
        self.entries.append(entry)
        if self.hover.text() == START_HINT:
            self.hover.setText(HOVER_HINT)
        self._redraw()

    def set_order(self, order: str) -> None:
        self.order = order
        self._redraw()

    def value(self, entry) -> float:
        value = entry.delta_ppl if self.measured and entry.delta_ppl is not None else entry.error
        return value if math.isfinite(value) else 0.0

    def ordered(self) -> list:
        """The entries in the order drawn: the model's, or most sensitive first."""
        if self.order == SENSITIVITY:
            return sorted(self.entries, key=lambda e: -self.value(e))
        return list(self.entries)

    @property
    def bar_count(self) -> int:
        return sum(len(item.opts["x"]) for item in self.series.values())

    def heights_in_order(self) -> list[float]:
        """Every drawn bar's height by its position along the x axis."""
        found = []
        for item in self.series.values():
            found += list(zip(item.opts["x"], item.opts["height"]))
        return [float(h) for _, h in sorted(found)]

    # ---- drawing -------------------------------------------------------------------------------------
    def _axis_labels(self) -> None:
        self.plot.setLabel("left", "Δ perplexity (pruned − dense)" if self.measured else
                           "output error (relative)")
        self.plot.setLabel("bottom", "decoder block (its units in model order)" if self.order == DEPTH
                           else "units, most sensitive first")

    def _redraw(self) -> None:
        ordered = self.ordered()
        by_kind: dict[str, list[tuple[int, float]]] = {}
        for x, entry in enumerate(ordered):
            by_kind.setdefault(entry.kind, []).append((x, self.value(entry)))
        for kind, bars in by_kind.items():
            if kind not in self.series:
                colour = PALETTE[len(self.colours) % len(PALETTE)]
                self.colours[kind] = colour
                item = pg.BarGraphItem(x=[], height=[], width=0.8, brush=colour, pen=None, name=kind)
                self.series[kind] = item
                self.plot.addItem(item)
            self.series[kind].setOpts(x=[b[0] for b in bars], height=[b[1] for b in bars], width=0.8)
        self._axis_labels()
        self._ticks(ordered)
        if ordered:
            self.plot.setXRange(-0.7, len(ordered) - 0.3, padding=0)

    def _ticks(self, ordered) -> None:
        """Blocks by depth (a label where a block starts); unit names when sorted or few."""
        axis = self.plot.getAxis("bottom")
        if self.order == DEPTH and any(e.block is not None for e in ordered) and len(ordered) > 12:
            starts, seen = [], set()
            for x, entry in enumerate(ordered):
                if entry.block not in seen:
                    seen.add(entry.block)
                    starts.append((x, str(entry.block)))
            step = max(1, -(-len(starts) // 12))
            axis.setTicks([starts[::step], [(x, "") for x, _ in starts]])
        else:
            step = max(1, -(-len(ordered) // 12))
            axis.setTicks([[(x, _short(e)) for x, e in enumerate(ordered)][::step], []])

    def describe(self, x: int) -> str:
        ordered = self.ordered()
        if not 0 <= x < len(ordered):
            return ""
        e = ordered[x]
        text = f"{e.name}  ({e.kind}{'' if e.block is None else f', block {e.block}'}, {e.params:,} weights): "
        if e.delta_ppl is not None:
            text += f"perplexity {e.ppl:.3f} (Δ {e.delta_ppl:+.3f}), "
        text += f"output error ‖(W−Ŵ)X‖²/‖WX‖² {e.error:.4f}"
        rank = sorted(self.entries, key=lambda u: -self.value(u)).index(e) + 1
        return text + f"; rank {rank} of {len(self.entries)}"

    def _hovered(self, pos) -> None:
        if not self.entries or not self.plot.sceneBoundingRect().contains(pos):
            return
        text = self.describe(int(round(self.plot.getViewBox().mapSceneToView(pos).x())))
        if text:
            self.hover.setText(text)


def _short(entry) -> str:
    if entry.block is None:
        return entry.name
    return f"{entry.block}.{entry.kind.split('.')[-1]}" if entry.kind != "block" else str(entry.block)
