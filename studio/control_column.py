"""The left column's pages (Model, Calibration, Prune): panels stacked in a scroll area that scrolls up
and down only, and is never narrower than its widest field, so no field is cut off at the right edge; the
splitter beside it stops there instead."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QSize, Qt
from PySide6.QtWidgets import QScrollArea, QVBoxLayout, QWidget


class ControlColumn(QScrollArea):
    def __init__(self, *panels: QWidget):
        super().__init__()
        page = QWidget()
        column = QVBoxLayout(page)
        column.setContentsMargins(4, 4, 4, 4)
        for panel in panels:
            column.addWidget(panel)
        column.addStretch(1)
        self.setWidget(page)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        needed = (self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
                  + 2 * self.frameWidth())
        return QSize(max(hint.width(), needed), hint.height())

    def eventFilter(self, watched, event) -> bool:
        # a panel that grows (a section shown once a model is open) widens the column with it
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)
