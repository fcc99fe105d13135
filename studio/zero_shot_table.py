"""Zero-shot tasks in the Evaluate panel: which tasks, from where, how many documents, and a table of
each task's accuracy, dense and pruned, with the share of dense the pruned model keeps."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QPushButton, QSpinBox, QTableWidgetItem, QVBoxLayout, QWidget)

from .result_table import result_table

COLUMNS = ("Task", "n", "Metric", "Dense", "Pruned", "Retained")


class ZeroShotTable(QGroupBox):
    run_requested = Signal(object)        # dict: the arguments of core.evaluation.zero_shot.TaskRequest.build

    def __init__(self, parent=None):
        super().__init__("Zero-shot tasks (lm-evaluation-harness)", parent)
        self.tasks = QLineEdit(placeholderText="Tasks, e.g. arc_easy,piqa")
        self.folder = QLineEdit(placeholderText="Local task folder (optional): YAML configs + JSONL data")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._choose)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        folder_row = QWidget()
        folder_row.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        self.limit = QSpinBox()
        self.limit.setRange(0, 10_000_000)
        self.limit.setValue(0)
        self.limit.setSpecialValueText("all")
        self.limit.setToolTip("at most this many documents per task (the first ones)")
        form = QFormLayout()
        form.addRow("Tasks", self.tasks)
        form.addRow("From", folder_row)
        form.addRow("Documents", self.limit)
        self.button = QPushButton("Run tasks: dense and pruned")
        self.button.clicked.connect(lambda: self.run_requested.emit(self.choice()))
        self.table = result_table(COLUMNS, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(120)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.button)
        layout.addWidget(self.table)
        layout.addWidget(self.note)

    def choice(self) -> dict:
        return {"tasks": self.tasks.text(), "limit": self.limit.value() or None,
                "tasks_dir": self.folder.text().strip() or None}

    def show_results(self, zero_shot) -> None:
        """`zero_shot` a core.evaluation.zero_shot.ZeroShot: one row per task and metric."""
        retained = zero_shot.retained()
        rows = []
        for task, dense in zero_shot.dense.scores.items():
            pruned = zero_shot.pruned.scores[task] if zero_shot.pruned is not None else None
            for metric, value in dense.metrics.items():
                kept = retained.get(task, {}).get(metric)
                rows.append((task, str(dense.n), metric, _cell(value, dense.stderr.get(metric)),
                             _cell(pruned.metrics[metric], pruned.stderr.get(metric)) if pruned else "–",
                             f"{kept:.1%}" if kept is not None else "–"))
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = QTableWidgetItem(text)
                if c in (1, 3, 4, 5):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        seconds = zero_shot.dense.seconds + (zero_shot.pruned.seconds if zero_shot.pruned else 0)
        what = "dense and the applied run" if zero_shot.pruned else "dense only (no run applied yet)"
        self.note.setText(f"{what}; acc_norm divides each answer's log-likelihood by its length; ±: standard "
                          f"error ({seconds:.1f} s)")

    def _choose(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of task configs")
        if folder:
            self.folder.setText(folder)


def _cell(value: float, stderr: float | None) -> str:
    return f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")
