"""A combo box of (label, value) entries with a tooltip: the choice lists of the Prune panel's sections."""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox


def choice_combo(entries, tooltip: str) -> QComboBox:
    combo = QComboBox()
    for label, value in entries:
        combo.addItem(label, value)
    combo.setToolTip(tooltip)
    return combo
