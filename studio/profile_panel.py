"""The sensitivity profile: which units break the model when pruned alone.

Choices for `core.studies.sensitivity.ProfileRequest` (unit, method, pattern, sparsity, the evaluation text
and how many windows, or fast mode), Start and Cancel; the bars (studio/profile_chart.py) and a table fill
as the engine reports each unit (`UnitProfiled`). "Use as allocation" turns the profile into the
sensitivity allocation (less sparsity for sensitive blocks, within [min, max], at the Prune panel's
target: `core.pruning.allocation.preset`) for the Edit allocation tab. Save and Load write and read the
profile's JSON (the file `compression-studio profile` writes). The engine puts the model back to dense
after a profile, finished or cancelled."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QGridLayout, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QPushButton, QSizePolicy, QSpinBox, QTableWidgetItem,
                               QVBoxLayout, QWidget)

from core.patterns import UNSTRUCTURED
from core.pruning.allocation import AllocationOptions, preset
from core.pruning.methods import METHODS
from core.studies.sensitivity import ProfileRequest, UnitProfiled

from .profile_chart import DEPTH, SENSITIVITY, ProfileChart
from .result_table import chart_over_table, result_table

UNITS = [("each layer", "layer"), ("each block", "block"), ("each layer kind", "kind")]
COLUMNS = ["rank", "block", "kind", "weights", "Δ perplexity", "perplexity", "output error", "unit"]
UNIT = COLUMNS.index("unit")      # last, stretched: the numbers stay readable in a narrow tab
FAST_TIP = ("Rank the units by the method's relative output error on the calibration data instead of measuring "
            "perplexity: no evaluation text, much quicker, usually a similar order (a measured profile reports "
            "the agreement as Spearman's ρ)")


class ProfilePanel(QWidget):
    start_requested = Signal(object)        # ProfileRequest
    cancel_requested = Signal()
    use_requested = Signal()                # "Use as allocation" pressed (the window knows the editor)
    save_requested = Signal(str)
    load_requested = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.profile = None                 # the last finished (or loaded) Profile
        self.total = 0
        self.running = False
        self._build_controls()
        self.chart = ProfileChart()
        self.table = result_table(COLUMNS, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setTextElideMode(Qt.TextElideMode.ElideLeft)      # a long name keeps its end: …layers.3.mlp.up_proj
        self.table.horizontalHeader().setSectionResizeMode(UNIT, QHeaderView.ResizeMode.Stretch)
        self.status = QLabel("Prunes one unit at a time, the rest of the model dense, and measures what it costs. "
                             "Load calibration text first (Calibration tab).")
        self.status.setWordWrap(True)
        split = chart_over_table(self.chart, self.table, (420, 220))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(self.controls)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)
        layout.addLayout(self.use_row)
        self._fast_changed()
        self._set_buttons()
        # its rows of controls are wide: squeezed rather than widening the window (as the Benchmark tab's)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    def _build_controls(self) -> None:
        self.unit = QComboBox()
        for label, value in UNITS:
            self.unit.addItem(label, value)
        self.unit.setToolTip("What is pruned alone each time: one linear layer, a whole decoder block, or every "
                             "layer of one kind (all mlp.down_proj, say)")
        self.method = QComboBox()
        for name, method in METHODS.items():
            if name != "none":
                self.method.addItem(name, name)
        self.method.setCurrentText("wanda")
        self.pattern = QComboBox()
        self.pattern.addItems(["unstructured", "2:4", "4:8"])
        self.pattern.currentTextChanged.connect(lambda text: self.sparsity.setEnabled(text == "unstructured"))
        self.sparsity = QDoubleSpinBox()
        self.sparsity.setRange(0.05, 0.95)
        self.sparsity.setSingleStep(0.05)
        self.sparsity.setValue(0.5)
        self.fast = QCheckBox("fast (output error, no perplexity)")
        self.fast.setToolTip(FAST_TIP)
        self.fast.toggled.connect(self._fast_changed)
        self.eval_path = QLineEdit(placeholderText="Evaluation text, e.g. wiki.test.raw")
        self.browse = QPushButton("Browse…")
        self.browse.clicked.connect(self._choose_eval)
        self.windows = QSpinBox()
        self.windows.setRange(1, 10_000)
        self.windows.setValue(8)
        self.windows.setToolTip("Evaluation windows each unit's perplexity is measured on")
        self.seqlen = QSpinBox()
        self.seqlen.setRange(0, 32768)
        self.seqlen.setValue(512)
        self.seqlen.setSpecialValueText("calibration's")
        self.seqlen.setToolTip("Tokens per evaluation window")
        self.start_button = QPushButton("Start profile")
        self.start_button.setObjectName("primary")
        self.start_button.clicked.connect(lambda: self.start_requested.emit(self.request()))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("danger")
        self.cancel_button.clicked.connect(self.cancel_requested)
        grid = QGridLayout()            # short rows: the tab may be narrow beside the layer tree
        row = [("Prune", self.unit), ("with", self.method), ("pattern", self.pattern)]
        for column, (label, field) in enumerate(row):
            grid.addWidget(QLabel(label), 0, 2 * column)
            grid.addWidget(field, 0, 2 * column + 1)
        grid.addWidget(QLabel("at"), 1, 0)
        grid.addWidget(self.sparsity, 1, 1)
        grid.addWidget(self.fast, 1, 2, 1, 4)
        grid.addWidget(QLabel("Measure on"), 2, 0)
        grid.addWidget(self.eval_path, 2, 1, 1, 4)
        grid.addWidget(self.browse, 2, 5)
        grid.addWidget(QLabel("windows"), 3, 0)
        grid.addWidget(self.windows, 3, 1)
        grid.addWidget(QLabel("× tokens"), 3, 2)
        grid.addWidget(self.seqlen, 3, 3)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        grid.addLayout(buttons, 3, 4, 1, 2)
        for column in (1, 3, 5):
            grid.setColumnStretch(column, 1)
        self.controls = grid

        self.order = QComboBox()
        self.order.addItem("by depth", DEPTH)
        self.order.addItem("most sensitive first", SENSITIVITY)
        self.order.currentIndexChanged.connect(lambda _: self._order_changed())
        self.lo = _fraction(0.25, "The least sparsity the allocation gives a block (its most sensitive ones)")
        self.hi = _fraction(0.75, "The most sparsity the allocation gives a block (its most robust ones)")
        self.use_button = QPushButton("Use as allocation")
        self.use_button.setToolTip("Less sparsity for sensitive blocks, more for robust ones, inversely to their "
                                   "sensitivity within [min, max], at the Prune panel's target: opens it in the "
                                   "Edit allocation tab, where Run takes it from")
        self.use_button.clicked.connect(self.use_requested)
        self.save_button = QPushButton("Save…")
        self.save_button.clicked.connect(self._choose_save)
        self.load_button = QPushButton("Load…")
        self.load_button.clicked.connect(self._choose_load)
        show = QHBoxLayout()
        show.addWidget(QLabel("Show"))
        show.addWidget(self.order)
        show.addStretch(1)
        show.addWidget(self.save_button)
        show.addWidget(self.load_button)
        allocate = QHBoxLayout()
        allocate.addWidget(QLabel("Allocation from it: min"))
        allocate.addWidget(self.lo)
        allocate.addWidget(QLabel("max"))
        allocate.addWidget(self.hi)
        allocate.addStretch(1)
        allocate.addWidget(self.use_button)
        use = QVBoxLayout()
        use.addLayout(show)
        use.addLayout(allocate)
        self.use_row = use

    # ---- the request ---------------------------------------------------------------------------------
    def request(self) -> ProfileRequest:
        pattern = self.pattern.currentText()
        return ProfileRequest(unit=self.unit.currentData(), method=self.method.currentData(),
                              sparsity=self.sparsity.value() if pattern == "unstructured" else None,
                              pattern=pattern, fast=self.fast.isChecked(),
                              eval_path=self.eval_path.text().strip() or None, eval_windows=self.windows.value(),
                              eval_seqlen=self.seqlen.value() or None)

    def allocation_for(self, block_params: list[int], target: float) -> list[float]:
        """The sensitivity allocation of the profile shown, for blocks of these sizes at `target`
        (a UserError says why not: no profile yet, one by layer kind, another model's)."""
        options = AllocationOptions(kind="sensitivity", profile=self.profile, min_sparsity=self.lo.value(),
                                    max_sparsity=self.hi.value())
        options.validate(target, UNSTRUCTURED)
        return list(preset(options, block_params, target, UNSTRUCTURED).sparsity)

    # ---- engine news ---------------------------------------------------------------------------------
    def begin(self, request: ProfileRequest) -> None:
        self.running, self.profile, self.total = True, None, 0
        self.chart.begin(measured=not request.fast)
        self.table.setRowCount(0)
        what = "output error (fast)" if request.fast else f"Δ perplexity on {request.eval_windows} windows"
        self.status.setText(f"Profiling {request.method} {request.pattern}"
                            f"{f' at {request.sparsity:.0%}' if request.sparsity else ''} by {request.unit}: {what}. "
                            f"The dense statistics come first, from one pass over the calibration…")
        self._set_buttons()

    def on_event(self, event) -> None:
        if not isinstance(event, UnitProfiled):
            return
        self.total = event.total
        self.chart.add(event.entry)
        self._fill_table()
        self.status.setText(f"{event.done} of {event.total} units measured; last {event.entry.name}.")

    def finish(self, profile) -> None:
        """A finished profile (or one loaded from a file): every bar, the table, its summary."""
        self.running, self.profile = False, profile
        self.chart.begin(measured=not profile.fast)
        for entry in profile.entries:
            self.chart.add(entry)
        self._fill_table()
        top = ", ".join(e.name for e in profile.ranked()[:3])
        parts = [f"{len(profile.entries)} units ({profile.method} {profile.pattern} at {profile.sparsity:.0%}, "
                 f"by {profile.unit}) in {profile.seconds:.1f} s"]
        if profile.dense_ppl is not None:
            parts.append(f"dense perplexity {profile.dense_ppl:.3f} on {profile.eval_windows} × "
                         f"{profile.eval_seqlen} tokens")
        if profile.spearman is not None:
            parts.append(f"fast ranking vs measured: Spearman ρ {profile.spearman:.2f}")
        parts.append(f"most sensitive: {top}")
        self.status.setText("; ".join(parts) + ". The model is dense again.")
        self._set_buttons()

    def stopped(self, cancelled: bool) -> None:
        """Cancelled or failed: the engine put every unit's weights back."""
        self.running = False
        done = len(self.chart.entries)
        self.status.setText(("cancelled: the model is dense again" if cancelled else
                             "the profile failed (see the message above): the model is dense again") +
                            f"; {done} of {self.total or '?'} units had been measured (shown, not saved).")
        self._set_buttons()

    # ---- drawing -------------------------------------------------------------------------------------
    def _fill_table(self) -> None:
        entries = self.chart.ordered()
        rank = {id(e): i + 1 for i, e in enumerate(sorted(self.chart.entries, key=lambda u: -self.chart.value(u)))}
        self.table.setRowCount(len(entries))
        for row, e in enumerate(entries):
            values = [str(rank[id(e)]), "" if e.block is None else str(e.block), e.kind, f"{e.params:,}",
                      _number(e.delta_ppl, "+.3f"), _number(e.ppl, ".3f"), _number(e.error, ".4f"), e.name]
            for column, text in enumerate(values):
                item = QTableWidgetItem(text)
                if column not in (2, UNIT):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, column, item)

    def _order_changed(self) -> None:
        self.chart.set_order(self.order.currentData())
        self._fill_table()

    def _fast_changed(self) -> None:
        measured = not self.fast.isChecked()
        for field in (self.eval_path, self.browse, self.windows, self.seqlen):
            field.setEnabled(measured)

    def _set_buttons(self) -> None:
        self.start_button.setEnabled(not self.running)
        self.cancel_button.setEnabled(self.running)
        usable = self.profile is not None and self.profile.unit != "kind"
        self.use_button.setEnabled(usable and not self.running)
        self.use_button.setToolTip(self.use_button.toolTip() if usable or self.profile is None else
                                   "A profile by layer kind has no per-block sensitivity: profile by layer or block")
        self.save_button.setEnabled(self.profile is not None and not self.running)
        self.load_button.setEnabled(not self.running)

    def _choose_eval(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Evaluation text")
        if path:
            self.eval_path.setText(path)

    def _choose_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the profile", "profile.json", "JSON (*.json)")
        if path:
            self.save_requested.emit(path)

    def _choose_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a profile", "", "JSON (*.json)")
        if path:
            self.load_requested.emit(path)


def _fraction(value: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.0, 0.99)
    box.setSingleStep(0.05)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _number(value, spec: str) -> str:
    if value is None:
        return "—"
    return f"{value:{spec}}" if math.isfinite(value) else str(value)
