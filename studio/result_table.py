"""The read-only tables of results (runs, sweep points, profile units, kernel timings, zero-shot scores)
and the chart-over-table split the result views share: one look, built in one place."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QSplitter, QTableWidget, QWidget


def result_table(columns, resize: QHeaderView.ResizeMode | None = None) -> QTableWidget:
    """Rows selected whole, never edited, no row numbers, alternate rows shaded; `resize` for every column
    (default: the last column stretches)."""
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.setAlternatingRowColors(True)
    if resize is None:
        table.horizontalHeader().setStretchLastSection(True)
    else:
        table.horizontalHeader().setSectionResizeMode(resize)
    return table


def chart_over_table(chart: QWidget, table: QWidget, heights: tuple[int, int]) -> QSplitter:
    split = QSplitter(Qt.Orientation.Vertical)
    split.addWidget(chart)
    split.addWidget(table)
    split.setSizes(list(heights))
    return split
