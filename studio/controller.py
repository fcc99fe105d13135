"""The studio's state and the engine jobs it starts; no widgets here.

Widgets collect choices and call the controller; the controller runs engine functions on a worker
thread and announces what happened through signals, always emitted in the GUI thread. Engine jobs
(open, calibrate, prune, evaluate, export) queue on one worker; the small views a selection asks
for run on a second, so a long run never delays them.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from core import session
from core.calibration import CalibrationSet, load_calibration
from core.compact import export_compact
from core.errors import UserError
from core.evaluate import evaluation_windows, perplexity
from core.events import LayerPruned
from core.export import build_report, check_output, write_export
from core.models import LoadedModel, open_model
from core.pipeline import prune
from core.plan import PrunePlan

from .worker import Worker


@dataclass(frozen=True)
class CalibrationChoice:
    files: tuple[str, ...]
    nsamples: int
    seqlen: int
    seed: int
    text_field: str = "text"


@dataclass(frozen=True)
class EvaluationChoice:
    path: str
    seqlen: int
    windows: int


class Controller(QObject):
    model_loading = Signal(str)
    model_opened = Signal(object)             # LoadedModel
    calibration_ready = Signal(object)        # CalibrationSet
    calibration_failed = Signal(str)
    run_started = Signal(object)              # PrunePlan
    progress = Signal(object)                 # core.events.Event
    layer_pruned = Signal(object, object)     # LayerResult, LayerView
    run_finished = Signal(object)             # RunRecord
    run_cancelled = Signal()
    run_failed = Signal()
    layer_view_ready = Signal(object)         # LayerView
    tile_ready = Signal(str, object)          # layer name, Tile
    evaluation_done = Signal(object)          # RunRecord (or None) with perplexities
    comparison_ready = Signal(object)         # Comparison
    export_done = Signal(str, str)          # folder, a sentence on what was written and its size
    error = Signal(str)
    busy_changed = Signal(bool)
    weights_restored = Signal()
    bench_result = Signal(object)             # core.bench.KernelResult
    bench_memory = Signal(object)             # core.bench.MemorySample
    bench_finished = Signal(object)           # BenchReport, or None when stopped

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.engine = Worker("engine", self)
        self.views = Worker("views", self)
        self.engine.busy_changed.connect(self.busy_changed)
        self.loaded: LoadedModel | None = None
        self.calib: CalibrationSet | None = None
        self.calib_choice: CalibrationChoice | None = None
        self.dense: session.WeightSnapshot | None = None
        self.runs: list[session.RunRecord] = []
        self.applied: session.RunRecord | None = None     # the run whose weights the model holds now
        self.dense_ppl: dict = {}
        self._run_job = None
        self._view_job = None
        self._tile_job = None
        self._previews: dict = {}      # (layer, sparsity) -> LayerView of the dense model

    # ---- model -------------------------------------------------------------------------------------
    def open_model(self, spec: str, dtype: str = "float32", trust_remote_code: bool = False) -> None:
        spec = spec.strip()
        if not spec:
            self.error.emit("Type a model folder, a .gguf file, a hub id or 'demo' first.")
            return
        self.model_loading.emit(spec)
        self.engine.submit("open model", lambda on_event, cancel: open_model(
                               spec, dtype=dtype, trust_remote_code=trust_remote_code, on_event=on_event),
                           on_done=self.set_model, on_error=self._fail, on_event=self.progress.emit)

    @Slot(object)
    def set_model(self, loaded: LoadedModel) -> None:
        self.loaded, self.calib, self.calib_choice, self.dense = loaded, None, None, None
        self.runs, self.applied, self.dense_ppl = [], None, {}
        self._previews = {}
        _freeze_long_lived_objects()
        self.model_opened.emit(loaded)

    # ---- calibration ---------------------------------------------------------------------------------
    def load_calibration(self, choice: CalibrationChoice, then=None, on_failed=None):
        if not self._need_model():
            return None
        tokenizer = self.loaded.tokenizer

        def job(on_event, cancel):
            return load_calibration(list(choice.files), tokenizer, nsamples=choice.nsamples, seqlen=choice.seqlen,
                                    seed=choice.seed, text_field=choice.text_field, on_event=on_event)

        def done(calib):
            self.calib, self.calib_choice = calib, choice
            self.calibration_ready.emit(calib)
            if then:
                then()

        def failed(message, user_error):
            self.calibration_failed.emit(message)
            if on_failed:
                on_failed()
            self._fail(message, user_error)

        return self.engine.submit("calibration", job, on_done=done, on_error=failed, on_event=self.progress.emit,
                                  on_cancelled=on_failed)

    # ---- pruning -------------------------------------------------------------------------------------
    def start_run(self, plan_options: dict, choice: CalibrationChoice) -> None:
        """Validate the plan, tokenize the calibration if it changed, then prune; `run_started` comes at once."""
        if not self._need_model():
            return
        if self.running:
            self.error.emit("A run is already going: wait for it or cancel it first.")
            return
        try:
            plan = PrunePlan.build(**plan_options)
        except UserError as exc:
            self.error.emit(str(exc))
            return
        self.run_started.emit(plan)
        if self.calib is not None and self.calib_choice == choice:
            self._prune(plan)
            return

        def calibrated():
            if self._run_job is not None and self._run_job.cancel.cancelled:
                self._run_job = None
                self.run_cancelled.emit()
            else:
                self._prune(plan)

        def stopped():
            cancelled = self._run_job is not None and self._run_job.cancel.cancelled
            self._run_job = None
            (self.run_cancelled if cancelled else self.run_failed).emit()

        self._run_job = self.load_calibration(choice, then=calibrated, on_failed=stopped)

    @property
    def running(self) -> bool:
        return self._run_job is not None

    def _prune(self, plan: PrunePlan) -> None:
        loaded, calib = self.loaded, self.calib
        number = len(self.runs) + 1
        first_run = self.dense is None

        def job(on_event, cancel):
            if first_run:
                self.dense = session.WeightSnapshot(loaded)
            else:
                self.dense.restore(loaded)       # every run starts from the dense model
            # The snapshot holds the weights the run starts from: the pipeline keeps no copy of its own.
            result = prune(loaded, calib, plan, on_event, cancel, with_summaries=True, dense=self.dense.weights)
            masks = session.pack_masks(loaded, [layer.name for layer in result.layers])
            return session.RunRecord(number, plan.method, str(plan.pattern), plan.sparsity, result.sparsity,
                                     result.seconds, result, {}, masks)

        self.applied = None
        summaries = {}

        def on_event(event):
            if isinstance(event, LayerPruned) and event.summary is not None:
                view = session.run_view(event.result.name, event.result.shape, event.summary, plan.method)
                summaries[event.result.name] = view
                self.layer_pruned.emit(event.result, view)
            self.progress.emit(event)

        def done(record):
            self._run_job = None
            record.layer_summaries = summaries
            self.runs.append(record)
            self.applied = record
            self.run_finished.emit(record)

        def cancelled():
            self._run_job = None         # the pipeline restored the weights it had: the dense ones
            self.run_cancelled.emit()

        def failed(message, user_error):
            self._run_job = None
            self.run_failed.emit()
            self._fail(message, user_error)

        self._run_job = self.engine.submit("pruning", job, on_done=done, on_error=failed, on_event=on_event,
                                           on_cancelled=cancelled)

    def cancel_run(self) -> None:
        if self._run_job is not None:
            self._run_job.cancel.cancel()

    def summary_of(self, name: str):
        return self.applied.layer_summaries.get(name) if self.applied else None

    # ---- views ---------------------------------------------------------------------------------------
    def request_layer_view(self, name: str, sparsity: float = 0.5) -> None:
        """Show a layer: from the applied run's summary when it has one, else computed on the views thread."""
        dense_now = self.applied is None and not self.running     # the model holds its dense weights
        view = self.summary_of(name) or (self._previews.get((name, sparsity)) if dense_now else None)
        if view is not None:
            self.layer_view_ready.emit(view)
            return
        if not self._need_model():
            return
        if self._view_job is not None:
            self._view_job.cancel.cancel()      # only the latest selection matters
        loaded = self.loaded

        def job(on_event, cancel):
            cancel.check()
            return session.dense_view(name, session.current_weight(loaded, name), sparsity)

        def done(view):
            self._view_job = None
            if dense_now and self.applied is None and not self.running:
                self._previews[(name, sparsity)] = view
            self.layer_view_ready.emit(view)

        self._view_job = self.views.submit("layer view", job, on_done=done, on_error=self._fail)

    def request_tile(self, name: str, rows: tuple[int, int], cols: tuple[int, int]) -> None:
        if self.loaded is None:
            return
        if self._tile_job is not None:
            self._tile_job.cancel.cancel()
        loaded, dense = self.loaded, self.dense
        view = self.summary_of(name)
        factors = view.summary.score_factors if view is not None else None

        def job(on_event, cancel):
            cancel.check()
            current = session.current_weight(loaded, name)
            before = dense.weights[name] if dense is not None and self.applied is not None else current
            own = factors if factors is not None else (1, None)
            if own[1] is None:
                import numpy as np
                own = (1, np.ones(current.shape[1], np.float32))
            return session.tile(before, current, rows, cols, own)

        def done(result):
            self._tile_job = None
            self.tile_ready.emit(name, result)

        self._tile_job = self.views.submit("mask tile", job, on_done=done, on_error=self._fail)

    def compare(self, a: int, b: int, layer: str | None) -> None:
        runs = {r.number: r for r in self.runs}
        if a not in runs or b not in runs or a == b:
            self.error.emit("Select two different runs in the history table to compare them.")
            return
        self.views.submit("compare runs", lambda on_event, cancel: session.compare(runs[a], runs[b], layer),
                          on_done=self.comparison_ready.emit, on_error=self._fail)

    # ---- evaluation ----------------------------------------------------------------------------------
    def evaluate(self, choice: EvaluationChoice) -> None:
        """Perplexity of the dense model (cached per text and window) and of the applied run, if any."""
        if not self._need_model():
            return
        loaded, record, dense = self.loaded, self.applied, self.dense
        key = (choice.path, choice.seqlen, choice.windows)
        known_dense = self.dense_ppl.get(key)

        def job(on_event, cancel):
            windows = evaluation_windows(loaded.tokenizer, choice.path, choice.seqlen, choice.windows)
            dense_ppl = known_dense
            if dense_ppl is None:
                pruned = session.WeightSnapshot(loaded) if record is not None else None
                if pruned is not None:
                    dense.restore(loaded)
                try:
                    dense_ppl = perplexity(loaded.model, windows, on_event=on_event, cancel=cancel)
                finally:
                    if pruned is not None:
                        pruned.restore(loaded)
            pruned_ppl = perplexity(loaded.model, windows, on_event=on_event, cancel=cancel) if record else None
            return dense_ppl, pruned_ppl

        def done(result):
            dense_ppl, pruned_ppl = result
            self.dense_ppl[key] = dense_ppl
            if record is not None:
                record.ppl_dense, record.ppl = dense_ppl.ppl, pruned_ppl.ppl
            self.evaluation_done.emit((record, dense_ppl, pruned_ppl))

        self.engine.submit("evaluation", job, on_done=done, on_error=self._fail, on_event=self.progress.emit)

    # ---- export --------------------------------------------------------------------------------------
    @property
    def can_export_compact(self) -> bool:
        """The compact format stores 2:4 weights only: it is offered when the model holds a 2:4 run."""
        return self.applied is not None and str(self.applied.result.plan.pattern) == "2:4"

    def export(self, out: str, overwrite: bool, compact: bool = False) -> None:
        if not self._need_model():
            return
        try:
            check_output(out, overwrite)
        except UserError as exc:
            self.error.emit(str(exc))
            return
        loaded, record, calib = self.loaded, self.applied, self.calib
        if record is None:
            self.error.emit("Nothing to export yet: run a pruning method first.")
            return
        if compact and not self.can_export_compact:
            self.error.emit(f"The compact format stores 2:4 weights only and the last run is {record.pattern}: "
                            "run with pattern 2:4, or export in the ordinary format.")
            return

        def job(on_event, cancel):
            report = build_report(loaded, record.result, calib, durations={"prune": record.seconds})
            if record.ppl is not None:
                report["perplexity"] = {"dense": {"ppl": record.ppl_dense}, "pruned": {"ppl": record.ppl}}
            if compact:
                summary = export_compact(loaded, out, report, calib, overwrite=overwrite, on_event=on_event)
                return str(summary.out), _describe_compact(summary)
            folder = write_export(loaded, out, report, calib, overwrite=overwrite, on_event=on_event)
            return str(folder), _describe_dense(folder)

        self.engine.submit("export", job, on_done=lambda done: self.export_done.emit(*done), on_error=self._fail,
                           on_event=self.progress.emit)

    # ---- kernel benchmark ----------------------------------------------------------------------------
    def start_benchmark(self, options) -> bool:
        from core.bench import KernelMeasured, MemorySampled, run_benchmark

        if not self._need_model():
            return False
        try:
            options.validate()
        except UserError as exc:
            self.error.emit(str(exc))
            return False
        loaded = self.loaded

        def on_event(event):
            if isinstance(event, KernelMeasured):
                self.bench_result.emit(event.result)
            elif isinstance(event, MemorySampled):
                self.bench_memory.emit(event.sample)
            else:
                self.progress.emit(event)

        def done(report):
            self._bench_job, self.bench_report = None, report
            self.bench_finished.emit(report)

        def stopped(*_):
            self._bench_job = None
            self.bench_finished.emit(None)

        def failed(message, user_error):
            stopped()
            self._fail(message, user_error)

        self._bench_job = self.engine.submit(
            "benchmark", lambda on_ev, cancel: run_benchmark(loaded, options, on_event=on_ev, cancel=cancel),
            on_done=done, on_error=failed, on_event=on_event, on_cancelled=stopped)
        return True

    def stop_benchmark(self) -> None:
        if getattr(self, "_bench_job", None) is not None:
            self._bench_job.cancel.cancel()

    def save_benchmark(self, path: str) -> None:
        report = getattr(self, "bench_report", None)
        if report is None:
            self.error.emit("No finished benchmark to save yet.")
            return
        text = report.to_json() if path.lower().endswith(".json") else report.to_csv()
        try:
            Path(path).write_text(text)
        except OSError as exc:
            self.error.emit(f"could not write {path}: {exc.strerror or exc}. Choose another file.")

    # ---- plumbing ------------------------------------------------------------------------------------
    def restore_dense(self) -> None:
        if self.dense is None or self.applied is None or self.running:
            return
        loaded, dense = self.loaded, self.dense

        def done(_):
            self.applied = None
            self.weights_restored.emit()

        self.engine.submit("restore", lambda on_event, cancel: dense.restore(loaded), on_done=done, on_error=self._fail)

    def _need_model(self) -> bool:
        if self.loaded is None:
            self.error.emit("Open a model first: the welcome page offers the demo model, a folder, a .gguf file or a hub id.")
            return False
        return True

    def _fail(self, message: str, user_error: bool = True) -> None:
        self.error.emit(message)

    def shutdown(self) -> None:
        self.engine.shutdown()
        self.views.shutdown()



def _freeze_long_lived_objects() -> None:
    """Move the model's hundreds of thousands of Python objects out of the garbage collector's reach.

    A full collection walks every tracked object while holding the GIL: with a model loaded it took
    200-280 ms, freezing the window mid-run (benchmarks/gui_stall.py). Frozen objects are skipped;
    the previous model is collected first so it is not kept alive forever.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _describe_dense(folder) -> str:
    weights = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors") if f.name != "calibration.safetensors")
    return (f"weights {weights / 2**20:,.1f} MiB, the same size as the dense model: "
            "pruned weights are stored as zeros")


def _describe_compact(summary) -> str:
    return (f"compact 2:4: {summary.layers} layers packed, weights {summary.compact_bytes / 2**20:,.1f} MiB, "
            f"{summary.ratio:.0%} of the dense export's {summary.dense_bytes / 2**20:,.1f} MiB; "
            "load it with compression-studio or unpack it first")
