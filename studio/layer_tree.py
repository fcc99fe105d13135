"""Blocks → layers with shape and parameters and, after a run, target/achieved sparsity and output
error, and after a quantized run the share of that error the quantization added; a filter box hides
the layers whose name does not contain the text typed."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLineEdit, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from core.pruning.plan import PrunePlan

COLUMNS = ["Layer", "Shape", "Params", "Sparsity", "Error", "Quant error"]
PARAMS, SPARSITY, ERROR, QUANT_ERROR = 2, 3, 4, 5
NUMBERS = (PARAMS, SPARSITY, ERROR, QUANT_ERROR)
MIN_NAME_WIDTH = 120
ERROR_HELP = ("Relative output error ‖(W−Ŵ)X‖² / ‖WX‖²: how much of the layer's output the pruning changed, "
              "measured on the first {tokens:,} calibration tokens (lower is better).")
QUANT_ERROR_HELP = ("Quantization's own relative output error ‖(W′−Ŵ)X‖² / ‖W′X‖², W′ the layer as pruned "
                    "(and recovered) just before it was rounded to its {grid}: measured on the first {tokens:,} "
                    "calibration tokens. The Error column counts pruning and quantization together.")
JOINT_HELP = ("Pruned and quantized in one pass inside SparseGPT's sweep ({grid}): the two cannot be told "
              "apart, and the Error column counts them together.")
NOT_QUANTIZED_HELP = "Not quantized: see the log for why (a group size that does not divide its inputs, …)."
NAME_ROLE = Qt.ItemDataRole.UserRole


class LayerTree(QWidget):
    layer_selected = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.filter = QLineEdit(placeholderText="Filter layers (e.g. mlp, q_proj, 12.)")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self.apply_filter)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setAlternatingRowColors(True)
        self.tree.setUniformRowHeights(True)
        self.tree.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.tree.headerItem().setToolTip(ERROR, ERROR_HELP.format(tokens=PrunePlan.error_tokens))
        self.tree.headerItem().setToolTip(QUANT_ERROR, QUANT_ERROR_HELP.format(grid="integer grid",
                                                                               tokens=PrunePlan.error_tokens))
        for col in NUMBERS:
            self.tree.headerItem().setTextAlignment(col, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.tree.currentItemChanged.connect(self._current_changed)
        self.items: dict[str, QTreeWidgetItem] = {}
        self.quantized = False           # the results shown come from a quantized run: its column is shown
        self.tree.setColumnHidden(QUANT_ERROR, True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.filter)
        layout.addWidget(self.tree, 1)

    def set_inventory(self, inventory) -> None:
        self.tree.clear()
        self.items = {}
        for block in inventory:
            params = sum(l.out_features * l.in_features for l in block.linears)
            parent = QTreeWidgetItem([f"block {block.index}", "", _count(params)])
            for info in block.linears:
                item = QTreeWidgetItem([info.name, f"{info.out_features} × {info.in_features}",
                                        _count(info.out_features * info.in_features)])
                item.setData(0, NAME_ROLE, info.full_name)
                item.setToolTip(0, info.full_name)
                for col in NUMBERS:
                    item.setTextAlignment(col, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                parent.addChild(item)
                self.items[info.full_name] = item
            parent.setTextAlignment(2, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.tree.addTopLevelItem(parent)
        if self.tree.topLevelItemCount():
            self.tree.topLevelItem(0).setExpanded(True)
        self.apply_filter(self.filter.text())
        self.fit_columns()

    def fit_columns(self) -> None:
        """Size every column to its contents, and keep the tree at least as wide as they need: the window's
        splitter then takes the room from the plots, which scale, rather than from names and numbers."""
        header = self.tree.header()
        wanted = [max(self._content_width(col), header.sectionSizeHint(col)) + 8 for col in range(len(COLUMNS))]
        wanted[0] = max(wanted[0], MIN_NAME_WIDTH)
        if not self.quantized:
            wanted[QUANT_ERROR] = 0
        frame = self.tree.frameWidth() * 2 + self.tree.verticalScrollBar().sizeHint().width()
        self.tree.setMinimumWidth(sum(wanted) - wanted[PARAMS] + frame)
        narrow = self.tree.viewport().width() < sum(wanted)
        self.tree.setColumnHidden(PARAMS, narrow)            # the block rows and tooltips still give the count
        if narrow:
            wanted[PARAMS] = 0
        room = self.tree.viewport().width() - sum(wanted[1:])
        if room > wanted[0]:
            wanted[0] = room                     # the name column takes what is left over
        for col, width in enumerate(wanted):
            self.tree.setColumnWidth(col, width)

    def _content_width(self, col: int) -> int:
        """The widest text of a column; for the indented name column, the view's own measure. Unlike
        `sizeHintForColumn`, it does not drop to 0 for a hidden column."""
        if col == 0:
            return self.tree.sizeHintForColumn(0)
        metrics = self.tree.fontMetrics()
        rows = [self.tree.topLevelItem(i) for i in range(self.tree.topLevelItemCount())] + list(self.items.values())
        padding = self.tree.indentation() // 2       # the cell's margins, as the view pads its own hint
        return max((metrics.horizontalAdvance(row.text(col)) for row in rows), default=0) + padding

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.fit_columns()

    def clear_results(self, quantizing: bool = False) -> None:
        """Empty the result columns, for a new run (`quantizing`: it quantizes, so its column shows)."""
        for item in self.items.values():
            for col in (SPARSITY, ERROR, QUANT_ERROR):
                item.setText(col, "")
                item.setToolTip(col, "")
        self._show_quantization(quantizing)

    def _show_quantization(self, quantized: bool) -> None:
        if quantized != self.quantized:
            self.quantized = quantized
            self.tree.setColumnHidden(QUANT_ERROR, not quantized)
            self.fit_columns()

    def set_result(self, result) -> None:
        item = self.items.get(result.name)
        if item is None:
            return
        item.setText(SPARSITY, f"{result.target_sparsity:.0%} → {result.sparsity:.1%}")
        item.setToolTip(SPARSITY, f"target {result.target_sparsity:.1%}, achieved {result.sparsity:.2%}")
        item.setText(ERROR, "" if result.error is None else f"{result.error:.1e}")
        item.setToolTip(ERROR, ERROR_HELP.format(tokens=result.error_tokens))
        scheme = result.notes.get("quantization")
        if scheme is None and result.quant_error is None:
            if self.quantized:               # this run quantizes, but not this layer
                item.setText(QUANT_ERROR, "—")
                item.setToolTip(QUANT_ERROR, NOT_QUANTIZED_HELP)
            return
        self._show_quantization(True)
        grid = _grid_text(scheme, result.shape[1])
        if result.quant_error is not None:
            item.setText(QUANT_ERROR, f"{result.quant_error:.1e}")
            item.setToolTip(QUANT_ERROR, QUANT_ERROR_HELP.format(grid=grid, tokens=result.error_tokens))
        else:
            item.setText(QUANT_ERROR, "joint")
            item.setToolTip(QUANT_ERROR, JOINT_HELP.format(grid=grid))

    def select(self, full_name: str) -> None:
        item = self.items.get(full_name)
        if item is not None:
            item.parent().setExpanded(True)
            self.tree.setCurrentItem(item)

    def apply_filter(self, text: str) -> None:
        text = text.strip().lower()
        for i in range(self.tree.topLevelItemCount()):
            parent = self.tree.topLevelItem(i)
            visible = 0
            for j in range(parent.childCount()):
                child = parent.child(j)
                hidden = bool(text) and text not in child.data(0, NAME_ROLE).lower()
                child.setHidden(hidden)
                visible += not hidden
            parent.setHidden(visible == 0)
            if text and visible:
                parent.setExpanded(True)

    def _current_changed(self, current, _previous) -> None:
        name = current.data(0, NAME_ROLE) if current is not None else None
        if name:
            self.layer_selected.emit(name)


def _grid_text(scheme: dict | None, in_features: int) -> str:
    """'int4 grid (symmetric, groups of 64)' from a layer's quantization notes."""
    if not scheme:
        return "integer grid"
    group = scheme.get("group_size")
    groups = f"groups of {group}" if group and group != in_features else "one scale per row"
    return f"int{scheme['bits']} grid ({'symmetric' if scheme.get('symmetric', True) else 'asymmetric'}, {groups})"


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
