"""The Benchmark tab: choices (dtype, token counts, device, int8, end to end), start and stop, the
live charts, a results table, and saving the report as CSV or JSON. The measuring is core.kernels'."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QTableWidgetItem, QVBoxLayout, QWidget)

from .bench_charts import BenchCharts
from .run_panel import devices
from .result_table import chart_over_table, result_table

COLUMNS = ["Shape", "Tokens", "Dtype", "Backend", "Status", "Median ms", "Speedup", "Rel. error", "Checked", "Limit",
           "Note"]


class BenchPanel(QWidget):
    start_requested = Signal(object)   # dict of choices (see `choices`)
    stop_requested = Signal()
    save_requested = Signal(str)       # path (.csv or .json)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.dtype = QComboBox()
        self.dtype.addItems(["fp16", "bf16"])
        self.tokens = QLineEdit("1,16,128,512,2048")
        self.tokens.setToolTip("Token counts (rows of the input) to time, comma-separated")
        self.device = QComboBox()
        self.device.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.device.setMinimumContentsLength(12)          # long GPU names elide instead of widening the window
        for label, value in devices():
            self.device.addItem(label, value)
            self.device.setItemData(self.device.count() - 1, label, Qt.ItemDataRole.ToolTipRole)
        self.int8 = QCheckBox("int8")
        self.int8.setChecked(True)
        self.end_to_end = QCheckBox("end to end")
        self.end_to_end.setChecked(True)
        self.fp8 = QCheckBox("fp8")
        self.fp8.setChecked(True)
        self.fp8.setToolTip("CUDA: dense fp8 (row-wise scales) and fp8 + 2:4, beside bf16/fp16")
        self.price = QDoubleSpinBox()
        self.price.setRange(0.0, 1000.0)
        self.price.setDecimals(2)
        self.price.setPrefix("$")
        self.price.setSuffix(" /GPU-h")
        self.price.setToolTip("What an hour of this GPU costs: end-to-end results show $ per million tokens (0: none)")
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Time dense against the 2:4 kernels for every layer shape of this model")
        self.start_button.setObjectName("primary")
        self.start_button.clicked.connect(self._start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("danger")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_requested)
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("Save every measurement as CSV or JSON")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._save)
        controls = QHBoxLayout()
        for label, widget in (("Dtype", self.dtype), ("Tokens", self.tokens), ("Device", self.device)):
            controls.addWidget(QLabel(label))
            controls.addWidget(widget, 2 if widget is self.tokens else 0)
        buttons = QHBoxLayout()
        for widget in (self.int8, self.fp8, self.end_to_end, self.price):
            buttons.addWidget(widget)
        buttons.addStretch(1)
        for widget in (self.start_button, self.stop_button, self.save_button):
            buttons.addWidget(widget)
        self.charts = BenchCharts()
        self.table = result_table(COLUMNS)
        self.summary = QLabel("Times dense against 2:4 sparse kernels for this model's layer shapes.")
        self.summary.setObjectName("hint")
        self.summary.setWordWrap(True)
        split = chart_over_table(self.charts, self.table, (520, 220))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(controls)
        layout.addLayout(buttons)
        layout.addWidget(self.summary)
        layout.addWidget(split, 1)

    def choices(self) -> dict:
        """What the user chose, as typed; the engine parses and validates it (`BenchOptions.from_choices`)."""
        return {"tokens": self.tokens.text(), "dtype": self.dtype.currentText(), "int8": self.int8.isChecked(),
                "device": self.device.currentData(), "end_to_end": self.end_to_end.isChecked(),
                "fp8": self.fp8.isChecked(), "gpu_price": self.price.value()}

    def begin(self) -> None:
        self.charts.clear()
        self.table.setRowCount(0)
        self.set_running(True)

    def set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)

    def add_result(self, r) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        values = [f"{r.shape[0]} × {r.shape[1]}", str(r.tokens), r.dtype, r.backend, r.status,
                  "" if r.median_ms is None else f"{r.median_ms:.3f}", "" if r.speedup is None else f"{r.speedup:.2f}×",
                  "" if r.rel_error is None else f"{r.rel_error:.1e}", _checked(getattr(r, "checked", None)),
                  _limit(r), r.plan + "; " + (r.reason or r.expectation) if getattr(r, "plan", "") else r.reason or r.expectation]
        for col, value in enumerate(values):
            item = QTableWidgetItem(value)
            if col in (1, 5, 6, 7):
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(row, col, item)
        self.charts.add_result(r)

    def finish(self, report) -> None:
        self.set_running(False)
        self.save_button.setEnabled(report is not None)
        self.charts.finish()
        if report is not None:
            lines = [f"{report.device_name}: {len(report.kernels)} measurements in {report.seconds:.0f} s."]
            if report.note:
                lines.append(report.note)
            for e2e in report.end_to_end:
                if e2e.status == "ok":
                    cost = "" if e2e.cost_per_million is None else f", ${e2e.cost_per_million:.3f} per million tokens"
                    lines.append(f"End to end {e2e.variant}: {e2e.tokens_per_s:.1f} tokens/s, TTFT {e2e.ttft_ms:.0f} ms"
                                 f"{cost}.")
            self.summary.setText("  ".join(lines))
            self.charts.set_note(report.note)

    def _start(self) -> None:
        self.start_requested.emit(self.choices())

    def _save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save benchmark results", str(Path.cwd() / "bench.csv"),
                                              "CSV (*.csv);;JSON (*.json)")
        if path:
            self.save_requested.emit(path)


def _checked(value) -> str:
    return "" if value is None else ("yes" if value else "NO")


def _limit(r) -> str:
    """Which limits the call: the host (Python, dispatch, launches) or the kernel, with both times."""
    if getattr(r, "host_ms", None) is None:
        return ""
    kernel = r.kernel_ms if r.kernel_ms is not None else r.median_ms
    return f"{r.limited_by} (host {r.host_ms:.3f}, GPU {kernel:.3f} ms)"
