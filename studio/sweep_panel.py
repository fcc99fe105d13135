"""The sparsity sweep: methods × sparsities × patterns, each point a full run from the dense model.

Choices for `core.studies.sweep.SweepRequest` (methods ticked, sparsities and patterns typed, the evaluation
text and how many windows), Start and Cancel, progress with the time left; the chart (studio/sweep_chart.py)
and the table fill as the engine reports each point (`PointFinished`). A cancelled sweep keeps the points it
finished. "Export chart…" draws PNG or SVG with core's renderer (the CLI's --plot); "Save results…" writes
JSON or CSV. The sweep runs on the open model through the controller, and leaves it dense."""

from __future__ import annotations

import re
import time

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QCheckBox, QFileDialog, QGridLayout, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QProgressBar, QPushButton, QSpinBox, QTableWidgetItem, QVBoxLayout, QWidget)

from core import workbench as wb
from core.errors import UserError
from core.studies.sweep import format_duration
from core.studies.sweep_plot import plot_sweep
from core.studies.sweep_points import SWEEP_METHODS, MethodOptions, SweepRequest, SweepResult, save_table

from .sweep_chart import SweepChart
from .result_table import chart_over_table, result_table

COLUMNS = ["method", "pattern", "target", "achieved", "perplexity", "× dense", "seconds"]
DEFAULT_METHODS = ("wanda", "sparsegpt")


class SweepPanel(QWidget):
    message = Signal(str)                   # a line for the window's message bar (errors of the panel's own)

    def __init__(self, controller, calibration, evaluation_path=lambda: "", parent=None):
        """`calibration()`: the Calibration panel's request; `evaluation_path()`: the Evaluate panel's text,
        used when this panel's own field is empty."""
        super().__init__(parent)
        self.controller, self.calibration, self.evaluation_path = controller, calibration, evaluation_path
        self.request: SweepRequest | None = None
        self.points, self.dense, self.result = [], None, None
        self.total, self.started, self.running = 0, None, False
        self._build()
        controller.sweep_dense.connect(self.on_dense)
        controller.sweep_point.connect(self.on_point)
        controller.sweep_finished.connect(self.on_finished)
        self._set_buttons()

    # ---- layout ----------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.methods = {name: QCheckBox(name) for name in SWEEP_METHODS}
        for name, box in self.methods.items():
            box.setChecked(name in DEFAULT_METHODS)
        self.sparsities = QLineEdit("0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8")
        self.sparsities.setToolTip("Fractions of weights to remove, separated by spaces or commas")
        self.patterns = QLineEdit("unstructured")
        self.patterns.setToolTip("unstructured, N:M such as 2:4 (run at its own sparsity), rows, columns or "
                                 "blocks:HxW, separated by spaces")
        self.eval_path = QLineEdit(placeholderText="Evaluation text (empty: the Evaluate panel's)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_eval)
        self.windows = QSpinBox(minimum=1, maximum=100000, value=8)
        self.windows.setToolTip("Evaluation windows per point (of the calibration's sequence length)")
        self.start_button = QPushButton("Start sweep")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.controller.cancel_sweep)
        self.export_button = QPushButton("Export chart…")
        self.export_button.clicked.connect(lambda: self._ask("Export chart", "PNG (*.png);;SVG (*.svg)",
                                                             self.export_chart))
        self.save_button = QPushButton("Save results…")
        self.save_button.clicked.connect(lambda: self._ask("Save results", "JSON (*.json);;CSV (*.csv)",
                                                           self.save_results))
        grid = QGridLayout()
        row = QHBoxLayout()
        for box in self.methods.values():
            row.addWidget(box)
        row.addStretch(1)
        grid.addWidget(QLabel("Methods"), 0, 0)
        grid.addLayout(row, 0, 1, 1, 3)
        grid.addWidget(QLabel("Sparsities"), 1, 0)
        grid.addWidget(self.sparsities, 1, 1)
        grid.addWidget(QLabel("Patterns"), 1, 2)
        grid.addWidget(self.patterns, 1, 3)
        grid.addWidget(QLabel("Evaluate on"), 2, 0)
        eval_row = QHBoxLayout()
        eval_row.addWidget(self.eval_path, 1)
        eval_row.addWidget(browse)
        eval_row.addWidget(QLabel("windows"))
        eval_row.addWidget(self.windows)
        grid.addLayout(eval_row, 2, 1, 1, 3)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.cancel_button):
            buttons.addWidget(button)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        buttons.addWidget(self.progress, 1)
        for button in (self.export_button, self.save_button):
            buttons.addWidget(button)
        self.status = QLabel("Each point prunes the dense model at one setting and measures its perplexity. "
                             "Load calibration text first (Calibration tab).")
        self.status.setWordWrap(True)
        self.chart = SweepChart()
        self.table = result_table(COLUMNS, QHeaderView.ResizeMode.Stretch)
        split = chart_over_table(self.chart, self.table, (420, 200))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(grid)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)

    # ---- choices ---------------------------------------------------------------------------------------
    def build_request(self) -> SweepRequest:
        loaded = self.controller.loaded
        if loaded is None:
            raise UserError("Open a model first: the sweep prunes the open model.")
        try:
            sparsities = tuple(float(s) for s in re.split(r"[\s,;]+", self.sparsities.text().strip()) if s)
        except ValueError:
            raise UserError(f"sparsities {self.sparsities.text()!r}: type fractions such as 0.3 0.5 0.7.") from None
        path = self.eval_path.text().strip() or self.evaluation_path().strip()
        if not path:
            raise UserError("Choose the evaluation text the sweep measures perplexity on (here or in the "
                            "Evaluate panel).")
        calibration = self.calibration()
        methods = tuple(name for name, box in self.methods.items() if box.isChecked())
        request = SweepRequest(wb.OpenRequest(loaded.source), calibration,
                               wb.EvaluationRequest(path, calibration.seqlen, self.windows.value()),
                               methods=methods, sparsities=sparsities,
                               patterns=tuple(self.patterns.text().split()) or ("unstructured",),
                               options=MethodOptions())
        request.points()
        return request

    # ---- the job ---------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            request = self.build_request()
        except UserError as exc:
            return self._say(str(exc), error=True)
        if not self.controller.start_sweep(request):
            return
        self.request, self.total = request, len(request.points())
        self.points, self.dense, self.result = [], None, None
        self.started, self.running = time.perf_counter(), True
        self.chart.clear_points()
        self.table.setRowCount(0)
        self.progress.setRange(0, self.total)
        self.progress.setValue(0)
        self.progress.setFormat(f"0 of {self.total} points")
        self._say(f"measuring the dense model, then {self.total} points…")
        self._set_buttons()

    def on_dense(self, ppl: float) -> None:
        self.dense = ppl
        self.chart.set_dense(ppl)

    def on_point(self, point) -> None:
        self.points.append(point)
        self.chart.add_point(point.point.curve, point.sparsity, point.ppl)
        row = self.table.rowCount()
        self.table.insertRow(row)
        ratio = f"{point.ppl / self.dense:.3f}" if self.dense else ""
        cells = [point.method, point.pattern, f"{point.target_sparsity:.1%}", f"{point.sparsity:.2%}",
                 f"{point.ppl:.3f}", ratio, f"{point.seconds:.1f}"]
        for column, text in enumerate(cells):
            self.table.setItem(row, column, QTableWidgetItem(text))
        self.progress.setValue(point.done)
        left = f", about {format_duration(point.eta_seconds)} left" if point.eta_seconds is not None else ""
        self.progress.setFormat(f"{point.done} of {point.total} points{left}")
        self._say(f"{point.point.label}: perplexity {point.ppl:.3f}{left}")
        self._set_buttons()

    def on_finished(self, result) -> None:
        self.running = False
        if result is not None:
            self.result = result
            self._say(f"done: {len(result.points)} points in {format_duration(result.seconds)}; the model is dense "
                      "again")
        else:
            self._say(f"stopped after {len(self.points)} of {self.total} points; those are kept and the model is "
                      "dense again")
        self._set_buttons()

    def current(self) -> SweepResult | None:
        """The sweep shown: the finished one, or the points a cancelled or running one has so far."""
        if self.result is not None:
            return self.result
        if self.request is None or (not self.points and self.dense is None):
            return None
        model = {"name": self.controller.loaded.name if self.controller.loaded else "", "source":
                 self.request.model.spec}
        dense = {"ppl": self.dense, "nll": None, "seconds": None} if self.dense is not None else None
        return SweepResult(request=self.request.describe(), model=model, dense=dense, points=list(self.points),
                           status="running" if self.running else "cancelled")

    def export_chart(self, path: str) -> None:
        self._write(lambda result: plot_sweep(result, path), "chart")

    def save_results(self, path: str) -> None:
        self._write(lambda result: save_table(result, path), "results")

    def _write(self, fn, what: str) -> None:
        result = self.current()
        if result is None:
            return self._say(f"No sweep points yet: no {what} to write.", error=True)
        try:
            written = fn(result)
        except UserError as exc:
            return self._say(str(exc), error=True)
        except OSError as exc:
            return self._say(f"could not write {exc.filename or 'the file'}: {exc.strerror or exc}", error=True)
        self._say(f"{what} written to {written}")

    # ---- helpers ---------------------------------------------------------------------------------------
    def _set_buttons(self) -> None:
        self.start_button.setEnabled(not self.running)
        self.cancel_button.setEnabled(self.running)
        has = bool(self.points) or self.dense is not None
        self.export_button.setEnabled(has)
        self.save_button.setEnabled(has)

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setObjectName("warning" if error else "")
        if error:
            self.message.emit(text)

    def _browse_eval(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Evaluation text")
        if path:
            self.eval_path.setText(path)

    def _ask(self, title: str, filters: str, then) -> None:
        path, chosen = QFileDialog.getSaveFileName(self, title, "", filters)
        if path:
            suffix = re.search(r"\*(\.\w+)", chosen)
            if suffix and "." not in path.rsplit("/", 1)[-1]:
                path += suffix.group(1)
            then(path)
