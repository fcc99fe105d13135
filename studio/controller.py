"""Submits the engine's workbench jobs to worker threads and announces their results as signals.

The state of the session lives in `core.workbench.Workbench`; every job is a workbench function. Engine
jobs (open, calibrate, run, evaluate, export, benchmark) queue on one worker; the small views a
selection asks for run on a second, so a long run never delays them. Signals are emitted in the GUI thread.
"""

from __future__ import annotations

import gc
from PySide6.QtCore import QObject, Signal

from core import workbench as wb
from core.errors import UserError
from core.evaluation.zero_shot import TaskRequest, evaluate_tasks
from core.events import AllocationChosen, BlockRecovered, LayerPruned, RecoveryStep
from core.export.gguf import GGUF_TYPES
from core.export.sizes import format_sizes
from core.patterns import is_two_four
from core.kernels.benchmark import BenchOptions
from core.kernels.memory import with_vram
from core.kernels.results import KernelMeasured, MemorySampled
from core.pruning.plan import PrunePlan
from core.studies.sensitivity import run_profile
from core.studies import structure
from core.studies.sweep import run_sweep
from core.studies.sweep_points import DensePerplexity, PointFinished

from .worker import Worker

ENGINE_NICE = 10     # the engine's threads yield the CPU to the window's (see Worker)


class Controller(QObject):
    model_loading = Signal(str)
    model_opened = Signal(object)             # LoadedModel
    calibration_ready = Signal(object)        # CalibrationSet
    calibration_failed = Signal(str)
    run_started = Signal(object)              # PrunePlan
    progress = Signal(object)                 # core.events.Event
    layer_pruned = Signal(object, object)     # LayerResult, LayerView
    allocation_chosen = Signal(object)        # core.pruning.allocation.Allocation, before the first block
    recovery_step = Signal(object)            # core.events.RecoveryStep (several a second: views batch them)
    block_recovered = Signal(object)          # core.recovery.blockwise.RecoveryCurve (block -1: end to end)
    run_finished = Signal(object)             # RunRecord
    run_cancelled = Signal()
    run_failed = Signal()
    layer_view_ready = Signal(object)         # LayerView
    tile_ready = Signal(str, object)          # layer name, Tile
    evaluation_done = Signal(object)          # (RunRecord or None, dense Perplexity, pruned Perplexity or None)
    comparison_ready = Signal(object)         # Comparison
    tasks_done = Signal(object)               # core.evaluation.zero_shot.ZeroShot
    export_done = Signal(str, str)            # folder, a sentence on what was written and its size
    export_refusals_ready = Signal(object)    # {format option: why not, or None} for the applied run
    export_sizes_ready = Signal(object)       # [core.export.sizes.FormatSize] for the applied run
    error = Signal(str)
    busy_changed = Signal(bool)
    weights_restored = Signal()
    bench_result = Signal(object)             # KernelResult
    bench_memory = Signal(object)             # MemorySample
    bench_finished = Signal(object)           # BenchReport, or None when stopped
    job_cancelled = Signal(str)               # the name of an engine job stopped before it finished
    profile_finished = Signal(object)         # core.studies.profile_file.Profile (UnitProfiled come as progress)
    sweep_dense = Signal(float)               # the dense perplexity a sweep measures before its first point
    sweep_point = Signal(object)              # core.studies.sweep_points.PointFinished, as each point ends
    sweep_finished = Signal(object)           # SweepResult, or None when cancelled or failed (the points stay)
    profile_stopped = Signal(bool)            # True: cancelled, False: failed; either way the model is dense
    shrink_finished = Signal(object)          # ShrinkRun.view(): the smaller model's shapes, no tensors
    shrink_failed = Signal(str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.bench = wb.Workbench(remember=True)
        self.engine = Worker("engine", self, nice=ENGINE_NICE)
        self.views = Worker("views", self)
        self.engine.busy_changed.connect(self.busy_changed)
        self._run = self._bench = self._profile = None
        self._sweep = None
        self._views = {}

    @property
    def loaded(self):
        return self.bench.loaded

    @property
    def running(self) -> bool:
        """A run or a profile is going (both change the weights while they work)."""
        return self._run is not None or self._profile is not None or self._sweep is not None

    @property
    def can_export_compact(self) -> bool:
        return wb.can_export(self.bench, "compact")

    def export_refusals(self) -> dict[str, str | None]:
        """Why the applied run cannot be written in each format ('hf', 'compressed-tensors', 'gguf f16',
        'gguf q8_0', 'gguf q4_0', 'compact'); None where it can. The engine's own checks, run now."""
        record = self.bench.applied
        found = {}
        for fmt in ("hf", "compressed-tensors", "gguf", "compact"):
            for qtype in (GGUF_TYPES if fmt == "gguf" else (None,)):
                key = fmt if qtype is None else f"{fmt} {qtype}"
                if record is None:
                    found[key] = "Nothing to export yet: run a pruning method first."
                    continue
                request = wb.ExportRequest("", format=fmt, gguf_type=qtype)
                try:
                    request.check_format(record.plan, self.bench.streamed, self.bench.loaded)
                except UserError as exc:
                    found[key] = str(exc)
                else:
                    found[key] = None if record.exported is None else \
                        f"this run was written to {record.exported} while it ran: copy that folder instead."
        return found

    def export_defaults(self) -> tuple[str, str]:
        """The format and GGUF type an export takes unless the user chooses: the engine's 'auto'."""
        record = self.bench.applied
        if record is None:
            return "hf", "f16"
        request = wb.ExportRequest("")
        return request.resolved(record.plan.quantizing), request.gguf_type_for(record.plan)

    def _submit(self, name, fn, on_done=None, **callbacks):
        callbacks.setdefault("on_error", self._fail)
        callbacks.setdefault("on_event", self.progress.emit)
        callbacks.setdefault("on_cancelled", lambda: self.job_cancelled.emit(name))
        return self.engine.submit(name, fn, on_done=on_done, **callbacks)

    def cancel_current(self) -> None:
        """Stop every engine job, running or queued; each leaves the session as it was."""
        self.engine.cancel_all()

    def _fail(self, message: str, user_error: bool = True) -> None:
        self.error.emit(message)

    # ---- engine jobs ---------------------------------------------------------------------------------
    def open_model(self, spec: str, dtype: str = "float32", trust_remote_code: bool = False) -> None:
        self.model_loading.emit(spec)
        request = wb.OpenRequest(spec, dtype, trust_remote_code)
        self._submit("open model", lambda job: wb.open_model(self.bench, request, job), self._opened)

    def _opened(self, loaded) -> None:
        _freeze_long_lived_objects()
        self.model_opened.emit(loaded)

    def load_calibration(self, request: wb.CalibrationRequest) -> None:
        self._submit("calibration", lambda job: wb.calibrate(self.bench, request, job), on_event=self._on_event,
                     on_error=self._calibration_failed)

    def _calibration_failed(self, message: str, user_error: bool = True) -> None:
        self.calibration_failed.emit(message)
        self._fail(message, user_error)

    def start_run(self, plan_options: dict, request: wb.CalibrationRequest) -> None:
        """Validate the plan, then (one job) tokenize the calibration if it changed and prune; `run_started` comes at once."""
        if self.running:
            return self.error.emit("A run is already going: wait for it or cancel it first.")
        try:
            self.bench.need_model()
            plan = PrunePlan.build(**plan_options)
        except UserError as exc:
            return self.error.emit(str(exc))
        self.run_started.emit(plan)

        def run(job):
            job = with_vram(job)         # live VRAM in the progress panel on CUDA; the same job on the CPU
            wb.calibrate(self.bench, request, job)
            return wb.prune(self.bench, plan, job)

        def failed(message: str, user_error: bool = True) -> None:
            self._run = None
            if self.bench.calib_request != request:      # it was the calibration that failed
                self.calibration_failed.emit(message)
            self.run_failed.emit()
            self._fail(message, user_error)

        self._run = self._submit("pruning", run, self._run_done, on_event=self._on_event, on_error=failed,
                                 on_cancelled=self._run_cancelled)

    def _on_event(self, event) -> None:
        if isinstance(event, wb.Calibrated):
            self.calibration_ready.emit(event.calib)
        elif isinstance(event, LayerPruned) and event.summary is not None:
            self.layer_pruned.emit(event.result, event.summary)
        elif isinstance(event, RecoveryStep):
            self.recovery_step.emit(event)
        elif isinstance(event, BlockRecovered):
            self.block_recovered.emit(event.curve)
        elif isinstance(event, AllocationChosen):
            self.allocation_chosen.emit(event.allocation)
        self.progress.emit(event)

    def _run_done(self, record) -> None:
        self._run = None
        self.run_finished.emit(record)

    def _run_cancelled(self) -> None:
        self._run = None               # the pipeline restored the weights it had: the dense ones
        self.run_cancelled.emit()

    def cancel_run(self) -> None:
        if self._run is not None:
            self._run.cancel.cancel()

    def start_profile(self, request, calibration: wb.CalibrationRequest) -> bool:
        """One job: the calibration (if it changed), then the sensitivity profile; each finished unit comes
        as a `UnitProfiled` through `progress`. The engine leaves the model dense, finished or not."""
        if self.running:
            self.error.emit("A run is going: wait for it or cancel it before profiling.")
            return False
        try:
            self.bench.need_model()
            request.plan()
        except UserError as exc:
            self.error.emit(str(exc))
            return False

        def profile(job):
            wb.calibrate(self.bench, calibration, job)
            return run_profile(self.bench, request, job)

        def ended(outcome) -> None:
            self._profile = None
            if isinstance(outcome, bool):
                self.profile_stopped.emit(outcome)
            else:
                self.profile_finished.emit(outcome)

        def failed(message: str, user_error: bool = True) -> None:
            ended(False)
            self._fail(message, user_error)

        self._profile = self._submit("profile", profile, ended, on_event=self._on_event, on_error=failed,
                                     on_cancelled=lambda: ended(True))
        return True

    def cancel_profile(self) -> None:
        if self._profile is not None:
            self._profile.cancel.cancel()

    def start_sweep(self, request) -> bool:
        """One job: the sparsity sweep of `core.studies.sweep.SweepRequest` on the open model, each point as
        `sweep_point`; the engine leaves the model dense, finished or not (an applied run is taken off first)."""
        if self.running:
            self.error.emit("A run is going: wait for it or cancel it before sweeping.")
            return False
        try:
            self.bench.need_model()
            request.points()
        except UserError as exc:
            self.error.emit(str(exc))
            return False
        replaced = self.bench.applied is not None

        def ended(result) -> None:
            self._sweep = None
            self.sweep_finished.emit(result)
            if replaced:
                self.weights_restored.emit()

        def failed(message: str, user_error: bool = True) -> None:
            ended(None)
            self._fail(message, user_error)

        def on_event(event) -> None:
            if isinstance(event, PointFinished):
                self.sweep_point.emit(event)
            elif isinstance(event, DensePerplexity):
                self.sweep_dense.emit(event.ppl)
            else:
                self._on_event(event)

        self._sweep = self._submit("sweep", lambda job: run_sweep(request, job, bench=self.bench), ended,
                                   on_event=on_event, on_error=failed, on_cancelled=lambda: ended(None))
        return True

    def cancel_sweep(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel.cancel()

    def start_shrink(self, request, calibration: wb.CalibrationRequest) -> None:
        """A structured shrink of a copy of the dense model (`core.studies.structure`); the dense model stays."""
        if self.running:
            return self.error.emit("A run is already going: wait for it or cancel it first.")

        def shrink(job):
            wb.calibrate(self.bench, calibration, job)
            return structure.shrink(self.bench, request, job).view()

        def failed(message: str, user_error: bool = True) -> None:
            self.shrink_failed.emit(message)
            self._fail(message, user_error)
        restored = self.bench.applied is not None      # a shrink starts from the dense model
        self._submit("shrink", shrink, lambda view: (restored and self.weights_restored.emit(),
                                                      self.shrink_finished.emit(view)),
                     on_event=self._on_event, on_error=failed, on_cancelled=lambda: self.shrink_failed.emit("cancelled"))

    def export_shrunk(self, folder: str, overwrite: bool = False) -> None:
        request = wb.ExportRequest(folder, overwrite)
        self._submit("export", lambda job: structure.export_shrunk(self.bench, request, job),
                     lambda done: self.export_done.emit(str(done.path), done.description))

    def evaluate(self, request: wb.EvaluationRequest) -> None:
        self._submit("evaluation", lambda job: wb.evaluate(self.bench, request, job),
                     lambda e: self.evaluation_done.emit((e.record, e.dense, e.pruned)))

    def evaluate_tasks(self, choice: dict) -> None:
        """Zero-shot tasks on the dense model and the applied run; `choice` holds TaskRequest.build's arguments."""
        try:
            request = TaskRequest.build(**choice)
            self.bench.need_model()
        except UserError as exc:
            return self.error.emit(str(exc))
        self._submit("zero-shot tasks", lambda job: evaluate_tasks(self.bench, request, job), self.tasks_done.emit)

    def export(self, out: str, overwrite: bool, format: str = "auto", gguf_type: str | None = None) -> None:
        request = wb.ExportRequest(out, overwrite, format, gguf_type)
        self._submit("export", lambda job: wb.export_run(self.bench, request, job),
                     lambda done: self.export_done.emit(str(done.path), done.description))

    def request_export_options(self) -> None:
        """On the views worker: the formats the applied run can be written in (GGUF's checks read the
        tokenizer), then each format's bytes (the compact check reads every weight)."""
        record = self.bench.applied
        quantized = record.result.quantized if record is not None else None
        two_four = record is not None and is_two_four(record.plan.served_pattern)
        self._latest("export checks", lambda job: self.export_refusals(), self.export_refusals_ready.emit)
        self._latest("export sizes", lambda job: format_sizes(self.bench.need_model(), quantized, two_four=two_four),
                     self.export_sizes_ready.emit)

    def restore_dense(self) -> None:
        if self.bench.applied is not None and not self.running:
            self._submit("restore", lambda job: wb.restore_dense(self.bench, job), lambda _: self.weights_restored.emit())

    def start_benchmark(self, choices) -> bool:
        try:
            options = choices if isinstance(choices, BenchOptions) else BenchOptions.from_choices(**choices)
            options.validate()
            self.bench.need_model()
        except UserError as exc:
            self.error.emit(str(exc))
            return False
        self._bench = self._submit("benchmark", lambda job: wb.benchmark(self.bench, options, job), self._bench_done,
                                   on_event=self._bench_event, on_error=lambda *e: self._bench_done(None, *e),
                                   on_cancelled=lambda: self._bench_done(None))
        return True

    def _bench_event(self, event) -> None:
        if isinstance(event, KernelMeasured):
            self.bench_result.emit(event.result)
        elif isinstance(event, MemorySampled):
            self.bench_memory.emit(event.sample)
        else:
            self.progress.emit(event)

    def _bench_done(self, report, *error) -> None:
        self._bench = None
        self.bench_finished.emit(report)
        if error:
            self._fail(*error)

    def stop_benchmark(self) -> None:
        if self._bench is not None:
            self._bench.cancel.cancel()

    def save_benchmark(self, path: str) -> None:
        try:
            wb.save_benchmark(self.bench, path)
        except UserError as exc:
            self.error.emit(str(exc))

    # ---- views (second worker: only the latest request of each kind matters) -------------------------
    def request_layer_view(self, name: str, sparsity: float = 0.5) -> None:
        self._latest("layer view", lambda job: wb.layer_view(self.bench, name, sparsity, job), self.layer_view_ready.emit)

    def request_tile(self, name: str, rows: tuple[int, int], cols: tuple[int, int]) -> None:
        self._latest("mask tile", lambda job: wb.layer_tile(self.bench, name, rows, cols, job),
                     lambda tile: self.tile_ready.emit(name, tile))

    def compare(self, a: int, b: int, layer: str | None) -> None:
        self._latest("compare runs", lambda job: wb.compare_runs(self.bench, a, b, layer, job),
                     self.comparison_ready.emit)

    def _latest(self, kind: str, fn, on_done) -> None:
        if self.bench.loaded is None:
            return
        if kind in self._views:
            self._views[kind].cancel.cancel()       # a request still queued is stale now
        self._views[kind] = self.views.submit(kind, fn, on_done=on_done, on_error=self._fail)

    def shutdown(self) -> None:
        self.engine.shutdown()
        self.views.shutdown()


def _freeze_long_lived_objects() -> None:
    """Keep a model's many Python objects out of full garbage collections, which walk them all holding the
    GIL (200-280 ms with a model loaded, a frozen window mid-run); the previous model is collected first."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
