"""Recovery as it happens: the loss of every optimizer step of the block being recovered (the
relative output error of the block on that micro-batch; for end-to-end recovery the KL to the dense
model), earlier blocks' curves kept faint behind it, and each block's error before → after recovery.

Steps arrive several times a second; they are collected and drawn in batches by a timer, never one
redraw per step. After a run the chart shows the run's curves (`record.result.recovery`)."""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .plot_legend import legend_below

REFRESH_MS = 250
TITLE_COLOUR = "#2b3a55"
CURRENT = pg.mkPen((47, 111, 223), width=2)
EARLIER = pg.mkPen((120, 130, 145, 70), width=1)
BEFORE = (150, 156, 166)
AFTER = (47, 111, 223)
# (loss plot's title and axis, summary's title and axis), for blockwise and for end-to-end recovery
AXES = {False: ("Recovery loss per step", "relative output error (log)",
                "Block output error: before → after recovery", "relative error (log)"),
        True: ("End-to-end recovery: KL per step", "KL per token (log)",
               "KL to the dense model: before → after", "KL (log)")}
EMPTY_HINT = "Choose a recovery in Prune (blockwise or end-to-end) to train the kept weights after pruning"


class RecoveryChart(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.losses: dict[int, list[float]] = {}          # block (-1: end to end) -> loss per step so far
        self.totals: dict[int, int] = {}                  # block -> steps it will take
        self.curves: dict[int, pg.PlotDataItem] = {}      # block -> its drawn loss curve
        self.summary: dict[int, tuple[float, float]] = {}  # block -> (error before, error after)
        self.current: int | None = None
        self.blocks = 0
        self._dirty: set[int] = set()
        self._timer = QTimer(self, interval=REFRESH_MS, singleShot=True)
        self._timer.timeout.connect(self._draw_pending)
        self.loss_plot = _plot(*AXES[False][:2], "optimizer step")
        self.loss_plot.setLogMode(x=False, y=True)
        self.summary_plot = _plot(*AXES[False][2:], "decoder block")
        self.summary_plot.setLogMode(x=False, y=True)
        legend_below(self.summary_plot, columns=2)
        self.links = pg.PlotDataItem(pen=pg.mkPen((150, 156, 166), width=1.5), connect="pairs")
        self.before_marks = pg.PlotDataItem(pen=None, symbol="o", symbolSize=8, symbolBrush=BEFORE,
                                            symbolPen=None, name="before")
        self.after_marks = pg.PlotDataItem(pen=None, symbol="o", symbolSize=9, symbolBrush=AFTER,
                                           symbolPen=pg.mkPen("w"), name="after recovery")
        for item in (self.links, self.before_marks, self.after_marks):
            self.summary_plot.addItem(item)
        self.status = QLabel(EMPTY_HINT)
        self.status.setObjectName("hint")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.loss_plot, 3)
        layout.addWidget(self.summary_plot, 2)
        layout.addWidget(self.status)

    # ---- what is shown -------------------------------------------------------------------------------
    def set_blocks(self, count: int) -> None:
        """A model with `count` decoder blocks was opened: the summary's axis spans them all, so that a
        run's blocks fill it from the left."""
        self.blocks = count
        self.clear()
        self._set_axes(False)

    def clear(self, hint: str = EMPTY_HINT) -> None:
        self._timer.stop()
        for curve in self.curves.values():
            self.loss_plot.removeItem(curve)
        self.losses, self.totals, self.curves, self.summary, self.current = {}, {}, {}, {}, None
        self._dirty.clear()
        self._draw_summary()
        for plot in (self.loss_plot, self.summary_plot):     # empty: a sensible decade range, not 1-10
            plot.setYRange(-3, 0, padding=0)
            plot.enableAutoRange(axis="y")
        self.status.setText(hint)

    def begin(self, plan) -> None:
        """A run starts: an empty chart that says what is coming."""
        mode = plan.recovery.mode
        if mode == "none":
            self.clear("This run has no recovery: choose blockwise or end-to-end in Prune to train the kept weights")
            return
        when = "after each block is pruned" if mode == "blockwise" else "once every block is pruned"
        self.clear(f"{_mode_name(mode).capitalize()} recovery starts {when}…")
        self._set_axes(mode == "e2e")

    def add_step(self, event) -> None:
        """One `core.events.RecoveryStep`; drawn at the next tick of the timer."""
        self.losses.setdefault(event.block, []).append(float(event.loss))
        self.totals[event.block] = event.total
        self._dirty.add(event.block)
        if not self._timer.isActive():
            self._timer.start()

    def add_curve(self, curve) -> None:
        """A block's recovery is over (`core.recovery.blockwise.RecoveryCurve`): its full curve and its
        error before and after."""
        self.losses[curve.block] = list(curve.losses)
        self.totals[curve.block] = curve.steps
        self.summary[curve.block] = (curve.before, curve.after)
        self._dirty.add(curve.block)
        if not self._timer.isActive():
            self._timer.start()

    def show_curves(self, curves, mode: str | None = None) -> None:
        """A finished run's curves (its `result.recovery`), drawn at once."""
        if not curves:
            self.clear("The applied run has no recovery" if mode in (None, "none") else "No block was recovered")
            return
        self.clear("")
        self._set_axes(curves[0].block < 0)
        for curve in curves:
            self.losses[curve.block] = list(curve.losses)
            self.totals[curve.block] = curve.steps
            self.summary[curve.block] = (curve.before, curve.after)
            self._dirty.add(curve.block)
        self._draw_pending()

    def flush(self) -> None:
        """Draw what is pending now (the run ended)."""
        if self._dirty:
            self._timer.stop()
            self._draw_pending()

    # ---- drawing -------------------------------------------------------------------------------------
    def _set_axes(self, end_to_end: bool) -> None:
        loss_title, loss_label, summary_title, summary_label = AXES[end_to_end]
        self.loss_plot.setTitle(loss_title, color=TITLE_COLOUR, size="10pt")
        self.loss_plot.setLabel("left", loss_label)
        self.summary_plot.setTitle(summary_title, color=TITLE_COLOUR, size="10pt")
        self.summary_plot.setLabel("left", summary_label)
        if end_to_end:                  # one point: the whole model
            self.summary_plot.setLabel("bottom", "")
            self.summary_plot.getAxis("bottom").setTicks([[(-1, "whole model")]])
            self.summary_plot.setXRange(-2, 0, padding=0)
        else:
            self.summary_plot.setLabel("bottom", "decoder block")
            self.summary_plot.getAxis("bottom").setTicks(None)
            if self.blocks:
                self.summary_plot.setXRange(-0.5, self.blocks - 0.5, padding=0.02)

    def _draw_pending(self) -> None:
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return
        newest = max(dirty, key=lambda b: (b in self.losses, b))
        if self.current is None or newest > self.current:
            if self.current in self.curves:
                self.curves[self.current].setPen(EARLIER)
                self.curves[self.current].setZValue(0)
            self.current = newest
        for block in sorted(dirty):
            losses = self.losses.get(block, [])
            curve = self.curves.get(block)
            if curve is None:
                curve = self.curves[block] = self.loss_plot.plot(pen=EARLIER)
            curve.setData(list(range(1, len(losses) + 1)), losses)
            if block == self.current:
                curve.setPen(CURRENT)
                curve.setZValue(1)
        self._draw_summary()
        self._describe()

    def _draw_summary(self) -> None:
        blocks = sorted(self.summary)
        before = [self.summary[b][0] for b in blocks]
        after = [self.summary[b][1] for b in blocks]
        positive = all(v > 0 for v in before + after)         # log axis: a zero error has no place on it
        if not positive:
            before, after = [max(v, 1e-12) for v in before], [max(v, 1e-12) for v in after]
        self.before_marks.setData(blocks, before)
        self.after_marks.setData(blocks, after)
        pairs_x = [x for b in blocks for x in (b, b)]
        pairs_y = [y for b, a in zip(before, after) for y in (b, a)]
        self.links.setData(pairs_x, pairs_y)

    def _describe(self) -> None:
        block = self.current
        if block is None:
            return
        losses = self.losses.get(block, [])
        what = "end-to-end" if block < 0 else f"block {block}"
        text = f"{what}: step {len(losses)} of {self.totals.get(block, len(losses))}"
        if losses:
            text += f", {'KL' if block < 0 else 'loss'} {losses[-1]:.3g}"
        if block in self.summary:
            b, a = self.summary[block]
            text += f";  before → after {b:.3g} → {a:.3g}"
            if b > 0:
                text += f" ({(a - b) / b:+.0%})"
        done = [v for k, v in self.summary.items() if k >= 0]
        if len(done) > 1:
            mean_b, mean_a = sum(v[0] for v in done) / len(done), sum(v[1] for v in done) / len(done)
            text += f".  Mean over {len(done)} blocks: {mean_b:.3g} → {mean_a:.3g}"
        self.status.setText(text)

    @property
    def curve_count(self) -> int:
        return sum(1 for c in self.curves.values() if c.yData is not None and len(c.yData))


def _mode_name(mode: str) -> str:
    return {"e2e": "end-to-end", "blockwise": "blockwise"}.get(mode, mode)


class LogAxis(pg.AxisItem):
    """A log axis that labels 1, 2 and 5 of each decade only: the minor ticks of a range under a decade
    otherwise print a label each, on top of one another."""

    def logTickStrings(self, values, scale, spacing):
        labels = []
        for value in values:
            x = 10.0 ** float(value) * scale
            mantissa = x / 10.0 ** math.floor(math.log10(x) + 1e-9) if x > 0 else 0.0
            labels.append(f"{x:.3g}" if any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5)) else "")
        return labels


def _plot(title: str, ylabel: str, xlabel: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w", axisItems={"left": LogAxis("left")})
    plot.setTitle(title, color=TITLE_COLOUR, size="10pt")
    plot.setLabel("bottom", xlabel)
    plot.setLabel("left", ylabel)
    plot.showGrid(x=True, y=True, alpha=0.2)
    plot.getAxis("left").enableAutoSIPrefix(False)     # log ticks read 10⁻², not "×0.001"
    return plot
