"""The right-hand views' tab bar. Each view sits in a scroll area, so a view with many controls scrolls
in a narrow window instead of widening it; callers still name the views themselves."""

from __future__ import annotations

from PySide6.QtWidgets import QFrame, QScrollArea, QTabWidget, QWidget


class ViewTabs(QTabWidget):
    def addTab(self, view: QWidget, label: str) -> int:
        scroll = QScrollArea()
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidgetResizable(True)
        scroll.setWidget(view)
        return super().addTab(scroll, label)

    def setCurrentWidget(self, view: QWidget) -> None:
        super().setCurrentIndex(self.indexOf(view))

    def currentWidget(self) -> QWidget | None:
        scroll = super().currentWidget()
        return scroll.widget() if scroll is not None else None

    def indexOf(self, view: QWidget) -> int:
        for index in range(self.count()):
            if super().widget(index).widget() is view:
                return index
        return super().indexOf(view)
