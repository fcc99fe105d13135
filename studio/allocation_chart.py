"""How a run spreads its sparsity over the decoder blocks: a bar per block with the target as a line,
and (for OWL) each block's outlier ratio, the measure the allocation follows. It fills when the engine
has chosen the allocation, before the first block is pruned; after the run it shows the run's
allocation and the sparsity each block reached. Hovering names the block's numbers."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .plot_legend import legend_below

BAR = (47, 111, 223)
DENSE = (160, 166, 176)
ACHIEVED = (20, 24, 32)
MARK = 0.008             # the achieved strip's thickness, in sparsity
OUTLIERS = (230, 120, 30)
WHY = {"owl": "; more outliers, fewer weights pruned", "sensitivity": "; more sensitive, fewer weights pruned",
       "explicit": ", as set in the Edit allocation tab"}
EMPTY_HINT = "Choose the OWL allocation in Prune to spread the sparsity over the blocks by their outliers"


class AllocationChart(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.allocation = None
        self.target: float | None = None
        self.achieved: list[float | None] = []
        self.blocks = 0
        self.sparsity_plot = _plot("Sparsity per decoder block", "sparsity")
        self.outlier_plot = _plot("Outlier ratio per block", "outliers %")
        self.outlier_plot.setToolTip("The share of a block's Wanda scores |W|·‖X‖ above M times their mean, "
                                     "measured on the dense model: OWL prunes blocks with more outliers less")
        self.outlier_plot.setXLink(self.sparsity_plot)
        legend_below(self.sparsity_plot, columns=3)
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.7, brush=BAR, name="allocated")
        # the sparsity a block reached: a thin dark strip across its bar, as wide as the bar at any zoom
        self.achieved_marks = pg.BarGraphItem(x=[], y0=[], height=[], width=0.7, brush=ACHIEVED, pen=None,
                                              name="achieved")
        self.target_line = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen((200, 40, 40), width=2,
                                                                                 style=Qt.PenStyle.DashLine))
        self.target_line.setVisible(False)
        self.sparsity_plot.addItem(self.bars)
        self.sparsity_plot.addItem(self.achieved_marks)
        self.sparsity_plot.addItem(self.target_line)
        # the target line's legend entry (an InfiniteLine has none of its own)
        self.sparsity_plot.getPlotItem().legend.addItem(
            pg.PlotDataItem(pen=pg.mkPen((200, 40, 40), width=2, style=Qt.PenStyle.DashLine)), "target")
        self.outlier_bars = pg.BarGraphItem(x=[], height=[], width=0.7, brush=OUTLIERS)
        self.outlier_plot.addItem(self.outlier_bars)
        self.hover = QLabel(EMPTY_HINT)
        self.hover.setObjectName("hint")
        self.hover.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.sparsity_plot, 3)
        layout.addWidget(self.outlier_plot, 2)
        layout.addWidget(self.hover)
        for plot in (self.sparsity_plot, self.outlier_plot):
            plot.scene().sigMouseMoved.connect(lambda pos, p=plot: self._hovered(p, pos))
        self.outlier_plot.setVisible(False)

    # ---- what is shown -------------------------------------------------------------------------------
    def set_blocks(self, count: int) -> None:
        """A model with `count` decoder blocks was opened: its axes, nothing drawn yet."""
        self.blocks = count
        step = max(1, -(-count // 12))             # about a dozen labels, whatever the width
        labelled = [(i, str(i)) for i in range(0, count, step)]
        for plot in (self.sparsity_plot, self.outlier_plot):
            plot.getAxis("bottom").setTicks([labelled, [(i, "") for i in range(count)]])
            plot.setLabel("bottom", "decoder block")
            plot.setXRange(-0.7, max(1, count) - 0.3, padding=0)
        self.clear()

    def clear(self, hint: str = EMPTY_HINT) -> None:
        self.allocation, self.target, self.achieved = None, None, []
        self._redraw()
        self.hover.setText(hint)

    def begin(self, plan) -> None:
        """A run starts: OWL's bars come once the outliers are surveyed; a uniform run's at once."""
        if plan.allocation.kind == "uniform":
            self.show_uniform(plan.sparsity)
        elif plan.allocation.kind != "owl":          # explicit or from a profile: chosen without a pass
            self.clear(f"{plan.allocation.kind} allocation: choosing each block's sparsity…")
            self.target = plan.sparsity
        else:
            self.clear(f"{plan.allocation.kind.upper()}: surveying the dense model's outliers, block by block…")
            self.target = plan.sparsity

    def show_allocation(self, allocation, target: float | None = None) -> None:
        """An `core.pruning.allocation.Allocation`: its per-block sparsity, its patterns, its outlier ratios."""
        self.allocation = allocation
        self.target = allocation.mean if target is None else target
        self.achieved = []
        self.blocks = max(self.blocks, len(allocation.sparsity))
        self._redraw()
        low, high = min(allocation.sparsity), max(allocation.sparsity)
        lam = allocation.options.get("owl_lambda")
        self.hover.setText(f"{allocation.kind.upper() if allocation.kind == 'owl' else allocation.kind}"
                           f"{f' (λ {lam:g})' if lam is not None else ''}: blocks from {low:.1%} to {high:.1%}, "
                           f"mean {allocation.mean:.1%}{WHY.get(allocation.kind, '')}. Hover a bar for its block.")

    def show_uniform(self, target: float) -> None:
        from core.pruning.allocation import Allocation

        self.show_allocation(Allocation("uniform", [target] * self.blocks), target)
        self.hover.setText(f"Uniform allocation: every block at {target:.0%}"
                           " (choose OWL in Prune to spread it by outliers)")

    def show_run(self, record) -> None:
        """A finished run: the allocation it used and the sparsity each block reached."""
        plan = record.plan
        if plan.blocks is not None:
            self.show_allocation(plan.blocks, plan.sparsity)
        else:
            self.show_uniform(plan.sparsity)
        zeros, sizes = [0.0] * self.blocks, [0] * self.blocks
        for layer in record.result.layers:
            if 0 <= layer.block < self.blocks:
                n = layer.shape[0] * layer.shape[1]
                zeros[layer.block] += layer.sparsity * n
                sizes[layer.block] += n
        self.achieved = [z / n if n else None for z, n in zip(zeros, sizes)]
        self._redraw()

    @property
    def bar_heights(self) -> list[float]:
        return [float(h) for h in self.bars.opts["height"]]

    # ---- drawing -------------------------------------------------------------------------------------
    def _redraw(self) -> None:
        allocation = self.allocation
        sparsity = list(allocation.sparsity) if allocation is not None else []
        xs = list(range(len(sparsity)))
        brushes = [pg.mkBrush(DENSE if self._dense(i) else BAR) for i in xs]
        self.bars.setOpts(x=xs, height=sparsity, width=0.7, brushes=brushes or None)
        marks = [(i, a) for i, a in enumerate(self.achieved) if a is not None]
        self.achieved_marks.setOpts(x=[m[0] for m in marks], y0=[m[1] - MARK / 2 for m in marks],
                                    height=[MARK] * len(marks), width=0.7)
        self.target_line.setVisible(self.target is not None)
        if self.target is not None:
            self.target_line.setValue(self.target)
        top = max(sparsity + [self.target or 0.0] + [m[1] for m in marks] + [0.5])
        self.sparsity_plot.setYRange(0, min(1.0, top + 0.1), padding=0)
        ratios = list(allocation.outlier_ratios or []) if allocation is not None else []
        self.outlier_plot.setVisible(bool(ratios))
        self.outlier_bars.setOpts(x=list(range(len(ratios))), height=[100 * r for r in ratios], width=0.7)

    def _dense(self, block: int) -> bool:
        patterns = self.allocation.patterns if self.allocation is not None else None
        return patterns is not None and patterns[block] is None

    def describe(self, block: int) -> str:
        allocation = self.allocation
        if allocation is None or not 0 <= block < len(allocation.sparsity):
            return ""
        text = f"block {block}:  {allocation.sparsity[block]:.1%} allocated"
        if allocation.patterns is not None:
            pattern = allocation.patterns[block]
            text += f" ({pattern if pattern is not None else 'kept dense'})"
        if self.target is not None:
            text += f", target {self.target:.1%}"
        if block < len(self.achieved) and self.achieved[block] is not None:
            text += f",  achieved {self.achieved[block]:.1%}"
        if allocation.outlier_ratios:
            text += f",  outlier ratio {allocation.outlier_ratios[block]:.2%}"
        return text

    def _hovered(self, plot, pos) -> None:
        if self.allocation is None or not plot.sceneBoundingRect().contains(pos):
            return
        i = int(round(plot.getViewBox().mapSceneToView(pos).x()))
        text = self.describe(i)
        if text:
            self.hover.setText(text)


def _plot(title: str, ylabel: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, color="#2b3a55", size="10pt")
    plot.setLabel("left", ylabel)
    plot.showGrid(y=True, alpha=0.2)
    plot.setMouseEnabled(x=True, y=False)
    plot.getAxis("left").enableAutoSIPrefix(False)     # 0.5, not 500 "×0.001"
    return plot

