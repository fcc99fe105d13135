"""The run history (one row per run: method, pattern, allocation over the blocks, recovery, sparsity,
perplexities, zero-shot accuracy once scored, time) and the comparison of two runs: the difference heatmap of their masks on the
selected layer and the agreement of their masks on every layer."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QLabel, QPushButton, QSplitter, QTableWidgetItem,
                               QVBoxLayout, QWidget)

from .mask_heatmap import MaskHeatmap
from .result_table import result_table

RUN_COLUMNS = ["Run", "Method", "Pattern", "Allocation", "Recovery", "Target", "Achieved", "PPL dense", "PPL pruned",
               "Zero-shot acc", "Time"]
TEXT_COLUMNS = {"Method", "Pattern", "Allocation", "Recovery"}     # left-aligned; the numbers are right-aligned


def column(name: str) -> int:
    return RUN_COLUMNS.index(name)


class HistoryTable(QWidget):
    compare_requested = Signal(int, int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.table = result_table(RUN_COLUMNS)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.compare_button = QPushButton("Compare the two selected runs")
        self.compare_button.setEnabled(False)
        self.compare_button.clicked.connect(self._compare)
        self.summary = QLabel("Select two runs to compare their masks")
        self.summary.setObjectName("hint")
        self.summary.setWordWrap(True)      # a long layer name wraps instead of widening the window
        self.difference = MaskHeatmap(title="Where the two runs' masks differ (fraction of weights per cell)",
                                      colormap="inferno", label="differ")
        self.difference.colorbar.setLevels((0, 1))
        self.agreement = result_table(["Layer", "Agreement"])
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.table, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.compare_button)
        buttons.addWidget(self.summary, 1)
        top_layout.addLayout(buttons)
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.difference)
        bottom.addWidget(self.agreement)
        bottom.setSizes([600, 300])
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(bottom)
        split.setSizes([200, 400])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(split)

    def clear(self) -> None:
        self.table.setRowCount(0)
        self.agreement.setRowCount(0)
        self.difference.clear()

    def set_run(self, record) -> None:
        """Add a run, or refresh its row (after an evaluation)."""
        row = self._row_of(record.number)
        if row is None:
            row = self.table.rowCount()
            self.table.insertRow(row)
        values = {"Run": str(record.number), "Method": method_text(record.plan), "Pattern": record.pattern,
                  "Allocation": allocation_text(record.plan), "Recovery": recovery_text(record.plan),
                  "Target": f"{record.target_sparsity:.0%}", "Achieved": f"{record.sparsity:.1%}",
                  "PPL dense": _ppl(record.ppl_dense), "PPL pruned": _ppl(record.ppl),
                  "Zero-shot acc": zero_shot_text(record.zero_shot), "Time": f"{record.seconds:.1f} s"}
        tips = {"Allocation": allocation_tip(record.plan), "Recovery": recovery_tip(record.plan, record.result),
                "Zero-shot acc": zero_shot_tip(record.zero_shot)}
        for col, name in enumerate(RUN_COLUMNS):
            item = QTableWidgetItem(values[name])
            item.setData(Qt.ItemDataRole.UserRole, record.number)
            if col and name not in TEXT_COLUMNS:
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if tips.get(name):
                item.setToolTip(tips[name])
            self.table.setItem(row, col, item)
        self.table.resizeColumnsToContents()

    def selected_runs(self) -> list[int]:
        rows = sorted({index.row() for index in self.table.selectedIndexes()})
        return [int(self.table.item(r, 0).text()) for r in rows]

    def show_comparison(self, comparison, shape=None) -> None:
        self.agreement.setRowCount(0)
        for name, value in comparison.agreement.items():
            row = self.agreement.rowCount()
            self.agreement.insertRow(row)
            self.agreement.setItem(row, 0, QTableWidgetItem(name))
            item = QTableWidgetItem(f"{value:.2%}")
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.agreement.setItem(row, 1, item)
        self.agreement.resizeColumnsToContents()
        overall = sum(comparison.agreement.values()) / max(1, len(comparison.agreement))
        text = f"Runs {comparison.run_a} and {comparison.run_b}: masks agree on {overall:.1%} of weights (mean over layers)"
        if comparison.difference is not None and shape is not None:
            self.difference.show_heatmap(comparison.layer, shape, comparison.difference, comparison.cell, levels=(0, 1))
            text += f"; heatmap: {comparison.layer}"
        else:
            self.difference.clear()
            text += "; select a layer both runs pruned to see where they differ"
        self.summary.setText(text)

    def _row_of(self, number: int):
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0) and int(self.table.item(row, 0).text()) == number:
                return row
        return None

    def _selection_changed(self) -> None:
        self.compare_button.setEnabled(len(self.selected_runs()) == 2)

    def _compare(self) -> None:
        runs = self.selected_runs()
        if len(runs) == 2:
            self.compare_requested.emit(*runs)


def method_text(plan) -> str:
    """'wanda', 'wanda + int4', or 'int8 only' for a run that quantizes without pruning."""
    if not plan.quantizing:
        return plan.method
    name = plan.quantization.name + (" RTN" if plan.quantization.method == "rtn" else "")
    return f"{name} only" if plan.method == "none" else f"{plan.method} + {name}"


def allocation_text(plan) -> str:
    """'uniform', or the allocation's kind and its λ, e.g. 'OWL λ 0.08'."""
    options = plan.allocation
    if options.kind == "uniform":
        return "uniform"
    return f"{options.kind.upper()} λ {options.owl_lambda:g}" if options.kind == "owl" else options.kind


def allocation_tip(plan) -> str:
    blocks = plan.blocks
    if blocks is None:
        return "every block pruned to the target sparsity"
    text = (f"{blocks.kind}: block sparsity {min(blocks.sparsity):.1%} to {max(blocks.sparsity):.1%}, "
            f"mean {blocks.mean:.1%}")
    if blocks.patterns is not None:
        text += "\npatterns: " + ", ".join(str(p) if p is not None else "dense" for p in blocks.patterns)
    return text


def recovery_text(plan) -> str:
    """'none', 'blockwise' or 'end-to-end'."""
    mode = plan.recovery.mode
    return {"none": "none", "e2e": "end-to-end"}.get(mode, mode)


def recovery_tip(plan, result) -> str:
    options = plan.recovery
    if not options.enabled:
        return "no recovery: the pruned weights as the method left them"
    steps = f"{options.steps} steps" if options.steps else f"{options.epochs:g} epochs"
    text = f"{recovery_text(plan)}: {steps}, learning rate {options.learning_rate:g}, {options.batch_windows} windows a step"
    curves = list(getattr(result, "recovery", None) or [])
    if curves:
        before = sum(c.before for c in curves) / len(curves)
        after = sum(c.after for c in curves) / len(curves)
        what = "KL to the dense model" if curves[0].block < 0 else f"mean relative output error of {len(curves)} blocks"
        text += f"\n{what}: {before:.3g} → {after:.3g}"
        if before > 0:
            text += f" ({(after - before) / before:+.0%})"
    return text


def zero_shot_text(zero_shot) -> str:
    """The pruned model's accuracy averaged over the tasks scored, and the share of dense it keeps, e.g.
    '52.3% (96% of dense)'; a dash before any task is scored on the run."""
    if zero_shot is None or zero_shot.pruned is None:
        return "—"
    tasks = list(zero_shot.dense.scores)
    pruned = [zero_shot.pruned.scores[t].acc for t in tasks]
    dense = [zero_shot.dense.scores[t].acc for t in tasks]
    if not tasks or None in pruned or None in dense:
        return "—"
    mean, dense_mean = sum(pruned) / len(tasks), sum(dense) / len(tasks)
    return f"{mean:.1%}" + (f" ({mean / dense_mean:.0%} of dense)" if dense_mean else "")


def zero_shot_tip(zero_shot) -> str:
    if zero_shot is None or zero_shot.pruned is None:
        return "score zero-shot tasks with this run applied (Prune tab, Zero-shot tasks) to fill this column"
    lines = [f"acc over {len(zero_shot.dense.scores)} task(s), {zero_shot.dense.limit or 'all'} documents each:"]
    for task, dense in zero_shot.dense.scores.items():
        pruned = zero_shot.pruned.scores[task]
        if dense.acc is not None and pruned.acc is not None:
            lines.append(f"{task}: {pruned.acc:.1%} (dense {dense.acc:.1%}, n {dense.n})")
    return "\n".join(lines)


def _ppl(value) -> str:
    """A perplexity record (`core.evaluation.perplexity.Perplexity`), or a dash when not measured."""
    return "—" if value is None else f"{value.ppl:.2f}"
