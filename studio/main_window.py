"""The main window: a welcome page until a model is open, then the workspace —
controls on the left (model, calibration, prune, evaluate), the layer tree, the views in tabs
(layer, model overview, allocation over the blocks, recovery, runs, benchmark), and the progress and
log at the bottom. It wires widgets to the controller; it holds no pruning logic."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QDialog, QDockWidget, QMainWindow, QSizePolicy, QSplitter, QStackedWidget,
                               QTabWidget, QVBoxLayout, QWidget)

from core.data.texts import PLAIN, TABULAR
from core.errors import UserError
from core.patterns import parse_pattern
from core.studies.profile_file import load_profile, model_identity, save_profile

from .allocation_chart import AllocationChart
from .allocation_editor import AllocationEditor
from .bench_panel import BenchPanel
from .calibration_panel import CalibrationPanel
from .control_column import ControlColumn
from .controller import Controller
from .evaluate_panel import EvaluatePanel
from .export_dialog import ExportDialog
from .histogram_view import HistogramView
from .history_table import HistoryTable
from .layer_tree import LayerTree
from .mask_heatmap import MaskHeatmap
from .message_bar import MessageBar
from .model_panel import ModelPanel
from .overview_chart import OverviewChart
from .profile_panel import ProfilePanel
from .sweep_panel import SweepPanel
from .progress_panel import ProgressPanel
from .recovery_chart import RecoveryChart
from .run_panel import RunPanel
from .structure_link import connect_structure
from .view_tabs import ViewTabs
from .welcome_view import WelcomeView

MAX_RECENT = 8
REFRESH_MS = 150     # a run's layer results are drawn in batches at this pace, not one repaint per layer


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None, parent=None):
        super().__init__(parent)
        self.settings = settings if settings is not None else QSettings()
        self.setWindowTitle("Compression Studio")
        self.setAcceptDrops(True)
        self.controller = Controller(self)
        self.selected_layer: str | None = None
        self._profile_replaced_run = False              # a profile started with a run applied (it undoes it)
        self._pending_results: list = []                 # (LayerResult, LayerView) not drawn yet
        self._refresh = QTimer(self, interval=REFRESH_MS, singleShot=True)
        self._refresh.timeout.connect(self._draw_pending_results)
        self._build()
        self._connect()
        self._restore_settings()

    # ---- layout --------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.welcome = WelcomeView()
        self.message_bar = MessageBar()
        self.model_panel = ModelPanel()
        self.calibration_panel = CalibrationPanel()
        self.run_panel = RunPanel()
        self.evaluate_panel = EvaluatePanel()
        self.layer_tree = LayerTree()
        self.histograms = HistogramView()
        self.heatmap = MaskHeatmap()
        self.overview = OverviewChart()
        self.allocation = AllocationChart()
        self.allocation_editor = AllocationEditor()
        self.profile_panel = ProfilePanel()
        self.recovery = RecoveryChart()
        self.history = HistoryTable()
        self.progress_panel = ProgressPanel()
        self.bench = BenchPanel()
        self.sweep_panel = SweepPanel(self.controller, self.calibration_panel.choice, self.evaluate_panel.path.text)

        self.control_tabs = QTabWidget()
        self.control_tabs.addTab(ControlColumn(self.model_panel), "Model")
        self.control_tabs.addTab(ControlColumn(self.calibration_panel), "Calibration")
        self.control_tabs.addTab(ControlColumn(self.run_panel, self.evaluate_panel), "Prune")

        layer_page = QSplitter(Qt.Orientation.Vertical)
        layer_page.addWidget(self.histograms)
        layer_page.addWidget(self.heatmap)
        layer_page.setSizes([330, 420])
        self.tabs = ViewTabs()
        self.tabs.addTab(layer_page, "Layer")
        self.tabs.addTab(self.overview, "Overview")
        self.tabs.addTab(self.allocation, "Allocation")
        self.tabs.addTab(self.profile_panel, "Sensitivity")
        self.tabs.addTab(self.sweep_panel, "Sweep")
        self.tabs.addTab(self.allocation_editor, "Edit allocation")
        self.tabs.addTab(self.recovery, "Recovery")
        self.tabs.addTab(self.history, "Runs")
        self.tabs.addTab(self.bench, "Benchmark")
        # Its row of controls is the widest thing in the window: squeezed (not widening the window) when narrow.
        self.bench.setSizePolicy(QSizePolicy.Policy.Ignored, self.bench.sizePolicy().verticalPolicy())

        views = QSplitter(Qt.Orientation.Horizontal)
        views.addWidget(self.layer_tree)
        views.addWidget(self.tabs)
        views.setSizes([505, 1000])
        views.setStretchFactor(1, 1)

        workspace = QSplitter(Qt.Orientation.Horizontal)
        workspace.addWidget(self.control_tabs)
        workspace.addWidget(views)
        workspace.setSizes([360, 1400])
        workspace.setStretchFactor(1, 1)

        self.pages = QStackedWidget()
        self.pages.addWidget(self.welcome)
        self.pages.addWidget(workspace)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.message_bar)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)

        self.progress_dock = QDockWidget("Progress and log", self)
        self.progress_dock.setObjectName("progress")
        self.progress_dock.setWidget(self.progress_panel)
        self.progress_dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.progress_dock)
        self.resizeDocks([self.progress_dock], [150], Qt.Orientation.Vertical)
        self._build_menu()

    def _build_menu(self) -> None:
        menu = self.menuBar().addMenu("&File")
        self.open_demo_action = QAction("Open the &demo model", self, triggered=lambda: self.open_model("demo"))
        self.export_action = QAction("&Export the model…", self, shortcut=QKeySequence("Ctrl+E"),
                                     triggered=self.show_export_dialog, enabled=False)
        self.welcome_action = QAction("&Welcome page", self, triggered=lambda: self.pages.setCurrentIndex(0))
        # Back from the welcome page to the model still open (say, after a model that would not open)
        self.workspace_action = QAction("Back to the &open model", self, enabled=False,
                                        triggered=lambda: self.pages.setCurrentIndex(1))
        quit_action = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit, triggered=self.close)
        for action in (self.open_demo_action, self.welcome_action, self.workspace_action, self.export_action,
                       quit_action):
            menu.addAction(action)

    def _connect(self) -> None:
        c = self.controller
        self.welcome.open_requested.connect(self.open_model)
        self.layer_tree.layer_selected.connect(self.select_layer)
        self.calibration_panel.load_requested.connect(self.load_calibration)
        self.run_panel.run_requested.connect(self.start_run)
        self.run_panel.cancel_requested.connect(c.cancel_run)
        self.allocation_editor.edited.connect(self.run_panel.set_explicit)
        self.allocation_editor.set_target(self.run_panel.sparsity.value())
        self.run_panel.sparsity.valueChanged.connect(self._target_changed)
        self.run_panel.pattern.currentTextChanged.connect(self._pattern_changed)
        self.profile_panel.start_requested.connect(self.start_profile)
        self.profile_panel.cancel_requested.connect(c.cancel_profile)
        self.profile_panel.use_requested.connect(self._use_profile)
        self.profile_panel.save_requested.connect(self._save_profile)
        self.profile_panel.load_requested.connect(self._load_profile)
        c.progress.connect(self.profile_panel.on_event)
        c.profile_finished.connect(self._profile_finished)
        c.profile_stopped.connect(self._profile_stopped)
        self.evaluate_panel.evaluate_requested.connect(self.evaluate)
        self.evaluate_panel.tasks.run_requested.connect(lambda choice: (self.progress_panel.begin(
            "zero-shot tasks"), c.evaluate_tasks(choice)))
        c.tasks_done.connect(self._tasks_scored)
        self.model_panel.restore_requested.connect(c.restore_dense)
        self.heatmap.tile_wanted.connect(c.request_tile)
        self.history.compare_requested.connect(lambda a, b: c.compare(a, b, self.selected_layer))
        c.model_loading.connect(self._model_loading)
        c.model_opened.connect(self._model_opened)
        c.calibration_ready.connect(self._calibration_ready)
        c.calibration_failed.connect(self.calibration_panel.show_problem)
        c.run_started.connect(self._run_started)
        c.progress.connect(self.progress_panel.on_event)
        c.layer_pruned.connect(self._layer_pruned)
        c.allocation_chosen.connect(self._allocation_chosen)
        c.recovery_step.connect(self.recovery.add_step)
        c.block_recovered.connect(self.recovery.add_curve)
        c.run_finished.connect(self._run_finished)
        c.run_cancelled.connect(self._run_cancelled)
        c.run_failed.connect(self._run_failed)
        c.layer_view_ready.connect(self._show_layer_view)
        c.tile_ready.connect(self.heatmap.show_tile)
        c.evaluation_done.connect(self._evaluation_done)
        c.comparison_ready.connect(self._comparison_ready)
        c.export_done.connect(self._export_done)
        c.weights_restored.connect(self._weights_restored)
        c.error.connect(self.show_error)
        connect_structure(self)
        c.busy_changed.connect(self.progress_panel.stop_button.setEnabled)
        c.job_cancelled.connect(lambda name: self.progress_panel.end(f"cancelled: {name}; nothing was changed"))
        self.progress_panel.stop_requested.connect(c.cancel_current)
        self.bench.start_requested.connect(self.start_benchmark)
        self.bench.stop_requested.connect(c.stop_benchmark)
        self.bench.save_requested.connect(c.save_benchmark)
        c.bench_result.connect(self.bench.add_result)
        c.bench_memory.connect(self.bench.charts.add_memory)
        c.bench_finished.connect(self._bench_finished)

    # ---- actions -------------------------------------------------------------------------------------
    @Slot(str)
    def open_model(self, spec: str) -> None:
        self.message_bar.hide()
        options = self.welcome.options.state()
        self.settings.setValue("models/open", options)
        self.controller.open_model(spec, options["dtype"], options["trust_remote_code"])

    @Slot()
    def start_run(self) -> None:
        self.message_bar.hide()
        self.settings.setValue("run/last", self.run_panel.state())
        self.controller.start_run(self.run_panel.plan_options(), self.calibration_panel.choice())

    @Slot(object)
    def start_profile(self, request) -> None:
        self.message_bar.hide()
        if not request.fast and not request.eval_path and self.evaluate_panel.path.text().strip():
            request = replace(request, eval_path=self.evaluate_panel.path.text().strip())   # the Evaluate panel's
        self._profile_replaced_run = self.controller.bench.applied is not None
        if self.controller.start_profile(request, self.calibration_panel.choice()):
            self.profile_panel.begin(request)
            self.run_panel.run_button.setEnabled(False)
            self.progress_panel.begin(f"sensitivity profile: {request.method} by {request.unit}")

    @Slot(object)
    def _profile_finished(self, profile) -> None:
        self.profile_panel.finish(profile)
        self._profile_ended(f"done: profile of {len(profile.entries)} units; the model is dense again")

    @Slot(bool)
    def _profile_stopped(self, cancelled: bool) -> None:
        self.profile_panel.stopped(cancelled)
        self._profile_ended("cancelled: the model is dense again" if cancelled else "profile failed")

    def _profile_ended(self, text: str) -> None:
        self.run_panel.run_button.setEnabled(True)
        if self.progress_panel.started is not None:
            self.progress_panel.end(text)
        if self._profile_replaced_run and self.controller.bench.applied is None:
            self._weights_restored()           # a profile starts from the dense weights: the run shown is gone

    @Slot()
    def _use_profile(self) -> None:
        editor = self.allocation_editor
        try:
            values = self.profile_panel.allocation_for(editor.params, self.run_panel.sparsity.value())
        except UserError as exc:
            return self.show_error(str(exc))
        editor.set_profile_allocation(values, (self.profile_panel.lo.value(), self.profile_panel.hi.value()))
        self.tabs.setCurrentWidget(editor)

    @Slot(str)
    def _save_profile(self, path: str) -> None:
        try:
            save_profile(self.profile_panel.profile, path)
        except (UserError, OSError) as exc:
            return self.show_error(str(exc))
        self.progress_panel.write(f"profile saved to {path}")

    @Slot(str)
    def _load_profile(self, path: str) -> None:
        loaded = self.controller.loaded
        try:
            profile = load_profile(path, model_identity(loaded) if loaded is not None else None)
        except UserError as exc:
            return self.show_error(str(exc))
        self.profile_panel.finish(profile)

    @Slot(object)
    def load_calibration(self, choice) -> None:
        self.message_bar.hide()
        self.progress_panel.begin("writing calibration text" if choice.generate else "tokenizing calibration")
        self.controller.load_calibration(choice)

    @Slot(object)
    def evaluate(self, choice) -> None:
        self.message_bar.hide()
        if not choice.path:              # the engine would read "" as the current folder
            return self.show_error("Choose the text to measure perplexity on: type its path or press Browse….")
        self.progress_panel.begin(f"perplexity on {Path(choice.path).name}")
        self.controller.evaluate(choice)

    @Slot(object)
    def start_benchmark(self, options) -> None:
        self.message_bar.hide()
        if self.controller.start_benchmark(options):
            self.bench.begin()
            self.progress_panel.begin("kernel benchmark")

    @Slot(object)
    def _bench_finished(self, report) -> None:
        self.bench.finish(report)
        self.progress_panel.end("done: benchmark" if report is not None else "benchmark stopped")

    @Slot(str)
    def select_layer(self, name: str) -> None:
        self.selected_layer = name
        self.controller.request_layer_view(name, self.run_panel.sparsity.value())

    def show_export_dialog(self) -> None:
        loaded = self.controller.loaded
        suggestion = str(Path.cwd() / f"{loaded.name.replace('/', '_')}-pruned") if loaded else ""
        dialog = ExportDialog.for_run(self, self.controller, suggestion)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            out, overwrite, fmt, gguf_type = dialog.choice()
            self.progress_panel.begin(f"export ({fmt}{' ' + gguf_type if gguf_type else ''}) to {out}")
            self.controller.export(out, overwrite, fmt, gguf_type)
        dialog.deleteLater()

    @Slot(str)
    def show_error(self, message: str) -> None:
        self.message_bar.show_message(message)
        self.progress_panel.write("✖ " + message)
        if self.progress_panel.started is not None and not self.controller.engine.busy:
            self.progress_panel.end("failed")

    # ---- engine news ---------------------------------------------------------------------------------
    @Slot(str)
    def _model_loading(self, spec: str) -> None:
        self.progress_panel.begin(f"opening {spec}")

    @Slot(object)
    def _model_opened(self, loaded) -> None:
        self.progress_panel.end(f"done: opened {loaded.name}")
        self.setWindowTitle(f"Compression Studio — {loaded.name}")
        self.model_panel.show_model(loaded)
        self.calibration_panel.set_context_length(loaded.context_length)
        self.layer_tree.set_inventory(loaded.layout.inventory)
        names = [l.full_name for b in loaded.layout.inventory for l in b.linears]
        blocks = [b.index for b in loaded.layout.inventory for _ in b.linears]
        self.overview.set_layers(names, blocks)
        self.allocation.set_blocks(len(loaded.layout.inventory))
        self._edit_allocation_of(loaded)
        self.recovery.set_blocks(len(loaded.layout.inventory))
        self.history.clear()
        self.histograms.clear()
        self.heatmap.clear()
        self.pages.setCurrentIndex(1)
        self.workspace_action.setEnabled(True)
        self.control_tabs.setCurrentIndex(2 if self.calibration_panel.paths() or self.calibration_panel.generated.chosen
                                          else 1)
        self._remember_model(loaded.source)
        if names:
            self.layer_tree.select(names[0])

    @Slot(object)
    def _calibration_ready(self, calib) -> None:
        self.calibration_panel.show_ready(calib)
        text = f"{calib.nsamples} calibration windows × {calib.seqlen} tokens" + (
            " written by the model itself (self-generated)" if calib.describe().get("source") else "")
        if self.controller.running:          # the first step of a run: the run's progress goes on
            self.progress_panel.write(text)
        else:
            self.progress_panel.end(f"done: {text}")

    @Slot(object)
    def _run_started(self, plan) -> None:
        self.control_tabs.setCurrentIndex(2)
        self.run_panel.set_running(True)
        self.export_action.setEnabled(False)
        self.layer_tree.clear_results(plan.quantizing)
        self.overview.clear()
        self.allocation.begin(plan)
        self.recovery.begin(plan)
        self.model_panel.set_state(None)
        self.progress_panel.begin(run_title(plan))

    @Slot(object, object)
    def _layer_pruned(self, result, view) -> None:
        self._pending_results.append((result, view))
        if not self._refresh.isActive():
            self._refresh.start()

    def _draw_pending_results(self) -> None:
        """Layers pruned since the last refresh, drawn at once: a block's layers arrive together, and a
        repaint of the tree, the charts and the selected layer's views per layer kept the window busy."""
        pending, self._pending_results = self._pending_results, []
        for result, _ in pending:
            self.layer_tree.set_result(result)
        self.overview.add_results([result for result, _ in pending])
        selected = [view for result, view in pending if result.name == self.selected_layer]
        if selected:             # on a turn of its own, like each of its views (see _show_layer_view)
            QTimer.singleShot(0, self, lambda: self._show_layer_view(selected[-1]))

    @Slot(object)
    def _allocation_chosen(self, allocation) -> None:
        self.allocation.show_allocation(allocation, self.allocation.target)   # the target begin() kept
        if allocation.kind == "owl" and allocation.patterns is None:
            self.allocation_editor.set_owl(allocation.sparsity)                 # the editor's OWL preset

    def _edit_allocation_of(self, loaded) -> None:
        """The Edit allocation tab starts uniform on a newly opened model (edits of another model are gone)."""
        params = [sum(l.out_features * l.in_features for l in b.linears) for b in loaded.layout.inventory]
        first = next(loaded.model.parameters())
        total = sum(p.numel() for p in loaded.model.parameters())
        self.allocation_editor.set_model(params, max(0, total - sum(params)), first.element_size())
        self.run_panel.set_explicit(self.allocation_editor.sparsities, choose=False)
        if self.run_panel.allocation.currentData() == "explicit":
            self.run_panel.allocation.setCurrentIndex(self.run_panel.allocation.findData("uniform"))

    @Slot(object)
    def _tasks_scored(self, done) -> None:
        self.evaluate_panel.tasks.show_results(done)
        if done.record is not None:              # the run's row in Runs gets its accuracy
            self.history.set_run(done.record)
        self.progress_panel.end("done: zero-shot tasks scored")

    @Slot(float)
    def _target_changed(self, target: float) -> None:
        if self.allocation_editor.m:             # an N:M pattern sets the target, not the sparsity box
            return
        self.allocation_editor.set_target(target)
        if self.allocation_editor.params:        # the bars moved to the new average: Run uses them as they are
            self.run_panel.set_explicit(self.allocation_editor.sparsities, choose=False)

    @Slot(str)
    def _pattern_changed(self, text: str) -> None:
        """N:M: the editor's bars snap to multiples of 1/M around the pattern's sparsity; otherwise any value
        around the sparsity box's. Text that is no pattern (yet) changes nothing: Run says what is wrong."""
        try:
            pattern = parse_pattern(text.strip() or "unstructured")
        except (UserError, ValueError):
            return
        if pattern.structured:
            self.allocation_editor.set_pattern(pattern.m, pattern.sparsity)
        else:
            self.allocation_editor.set_pattern(0, self.run_panel.sparsity.value())
        if self.allocation_editor.params:
            self.run_panel.set_explicit(self.allocation_editor.sparsities, choose=False)

    @Slot(object)
    def _run_finished(self, record) -> None:
        self.run_panel.set_running(False)       # first: a view failing to draw the run leaves the buttons usable
        self.export_action.setEnabled(True)
        self._refresh.stop()
        self._draw_pending_results()
        self.allocation.show_run(record)
        self.recovery.show_curves(record.result.recovery, record.plan.recovery.mode)
        done = [f"{record.sparsity:.1%} of the pruned weights are zero"] if record.method != "none" else []
        done += [f"{len(record.result.quantized)} layers quantized"] if record.plan.quantizing else []
        self.progress_panel.end(f"done: run {record.number}, {', '.join(done)}")
        for message in record.result.skipped:
            self.progress_panel.write(f"skipped {message.name}: {message.reason}")
        self.history.set_run(record)
        self.layer_tree.fit_columns()
        self.model_panel.set_state(record)
        if self.selected_layer:
            self.select_layer(self.selected_layer)

    @Slot()
    def _run_cancelled(self) -> None:
        self._run_ended()
        record = self.controller.bench.applied
        self.progress_panel.end("cancelled: the weights are back to the dense model" if record is None else
                                f"cancelled before pruning: the weights are still run {record.number}'s")

    @Slot()
    def _run_failed(self) -> None:
        self._run_ended()               # the message comes through show_error

    def _run_ended(self) -> None:
        """A run stopped (cancelled or failed): the views show what the weights hold now. A run that stopped
        while pruning put the dense weights back; one that stopped before (a bad calibration) changed nothing,
        and the run applied before it is still there: shown, and exportable, again."""
        self._refresh.stop()
        self._pending_results.clear()
        self.run_panel.set_running(False)
        record = self.controller.bench.applied
        if record is None:
            self._weights_restored()
            return
        self.layer_tree.clear_results(record.plan.quantizing)
        for result in record.result.layers:
            self.layer_tree.set_result(result)
        self.overview.clear()
        self.overview.add_results(record.result.layers)
        self.allocation.show_run(record)
        self.recovery.show_curves(record.result.recovery, record.plan.recovery.mode)
        self.model_panel.set_state(record)
        self.export_action.setEnabled(True)
        if self.selected_layer:
            self.select_layer(self.selected_layer)

    @Slot()
    def _weights_restored(self) -> None:
        self.layer_tree.clear_results()
        self.overview.clear()
        self.allocation.clear()
        self.recovery.clear()
        self.model_panel.set_state(None)
        self.export_action.setEnabled(False)
        if self.selected_layer:
            self.select_layer(self.selected_layer)

    @Slot(object)
    def _show_layer_view(self, view) -> None:
        """The histograms now, the heatmap on the next turn of the event loop: painted in one turn, the
        layer page's six plots kept the window from answering for 60-100 ms while a run competed for the
        CPU (benchmarks/gui_stall.py); one view per turn keeps each turn short."""
        if view.name != self.selected_layer:
            return
        self.histograms.show_view(view)
        QTimer.singleShot(0, self, lambda: self._show_heatmap(view))

    def _show_heatmap(self, view) -> None:
        if view.name == self.selected_layer:
            self.heatmap.show_heatmap(view.name, view.shape, view.summary.heatmap, view.summary.heatmap_cell)

    @Slot(object)
    def _evaluation_done(self, outcome) -> None:
        record, dense, pruned = outcome
        self.progress_panel.end("done: perplexity measured")
        self.evaluate_panel.show_result(dense, pruned)
        self.progress_panel.write(f"perplexity dense {dense.ppl:.2f}" + (f", pruned {pruned.ppl:.2f}" if pruned else ""))
        if record is not None:
            self.history.set_run(record)

    @Slot(object)
    def _comparison_ready(self, comparison) -> None:
        shape = None
        if comparison.layer and self.controller.loaded is not None:
            shape = next((l.out_features, l.in_features) for b in self.controller.loaded.layout.inventory
                         for l in b.linears if l.full_name == comparison.layer)
        self.history.show_comparison(comparison, shape)

    @Slot(str, str)
    def _export_done(self, path: str, description: str) -> None:
        self.progress_panel.end(f"done: exported to {path}")
        self.progress_panel.write(description)

    # ---- drag and drop -------------------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self.drop_paths([url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()])
        event.acceptProposedAction()

    def drop_paths(self, paths: list[str]) -> None:
        """A folder or .gguf opens as the model; text files join the calibration."""
        texts = [p for p in paths if Path(p).suffix.lower() in PLAIN | TABULAR and Path(p).is_file()]
        models = [p for p in paths if p not in texts]
        if texts:
            self.calibration_panel.add_files(texts)
        if models:
            self.open_model(models[0])

    # ---- settings ------------------------------------------------------------------------------------
    def _remember_model(self, source: str) -> None:
        recent = [source] + [m for m in self.recent_models() if m != source]
        self.settings.setValue("models/recent", recent[:MAX_RECENT])
        self.welcome.set_recent(recent[:MAX_RECENT])

    def recent_models(self) -> list[str]:
        value = self.settings.value("models/recent", [])
        return [value] if isinstance(value, str) else list(value or [])

    def _restore_settings(self) -> None:
        self.welcome.set_recent(self.recent_models())
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1600, 980)
        self.run_panel.restore_state(self.settings.value("run/last", {}) or {})
        self.welcome.options.restore_state(self.settings.value("models/open", {}) or {})

    def closeEvent(self, event) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("run/last", self.run_panel.state())
        self.settings.setValue("models/open", self.welcome.options.state())
        self.settings.sync()
        self.controller.shutdown()
        super().closeEvent(event)


def run_title(plan) -> str:
    """The progress bar's title for a run: what it does, with its allocation and recovery when chosen."""
    title = f"{plan.method} {plan.pattern} at {plan.sparsity:.0%}" if plan.method != "none" else "quantize"
    if plan.quantizing:
        scheme = plan.quantization
        title += f"{' +' if plan.method != 'none' else ''} {scheme.name} {'GPTQ' if scheme.method == 'gptq' else 'RTN'}"
    if plan.allocation.kind != "uniform":
        title += f", {'edited' if plan.allocation.kind == 'explicit' else plan.allocation.kind.upper()} allocation"
    if plan.recovery.enabled:
        title += f", {'end-to-end' if plan.recovery.mode == 'e2e' else plan.recovery.mode} recovery"
    return title
