"""The Qt-free state of one working session, and the jobs that act on it.

Both front ends drive the engine through this module only. `core.cli` calls the jobs one after the
other and draws their events; the studio's controller submits the same jobs to a worker thread and turns
their results into signals. A job is a plain function `name(bench, request, job)`: `bench` is the
`Workbench`, `request` says what to do, `job` (`core.events.Job`) carries the event sink and the cancel
check. A cancelled or failed run leaves the dense model and no run applied; any other job leaves the
workbench as it was.

A workbench that `remembers` (the studio) keeps the dense weights in memory so every run starts from the
same model, each run's masks in bits so runs can be compared, and display summaries of every layer. One
that does not (the command line) makes one run and keeps nothing it does not need.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .analysis import summaries
from .analysis.comparison import Comparison, compare, pack_masks
from .analysis.views import LayerView, Tile, current_weight, dense_view, run_view, tile
from .data.calibration import CalibrationSet, default_seqlen, load_calibration
from .data.generated import GenerationOptions, generate_calibration
from .errors import UserError
from .events import Event, Job, LayerPruned, as_job
from .evaluation.perplexity import Perplexity, evaluation_windows, perplexity
from .export import writers
from .export.report import build_report
from .export.streaming import prune_streaming
from .export.writers import Exported, ExportRequest
from .kernels.benchmark import BenchOptions, BenchReport, run_benchmark
from .models.demo import ensure_demo
from .models.loaded import LoadedModel
from .models.open import open_model as open_any
from .models.streaming import open_streaming
from .pruning.pipeline import PruneResult, prune as prune_in_memory
from .pruning.plan import PrunePlan
from .pruning.snapshot import WeightSnapshot
from .recovery.e2e import recover_pruned_model


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class OpenRequest:
    spec: str                       # a folder, a .gguf file, a cached hub id, or "demo"
    dtype: str = "float32"
    trust_remote_code: bool = False
    stream: bool = False            # a skeleton whose blocks are read from disk one at a time


@dataclass(frozen=True)
class CalibrationRequest:
    files: tuple[str, ...]
    nsamples: int = 128
    seqlen: int | None = None       # None: min(2048, the model's context)
    seed: int = 0
    text_field: str = "text"
    generate: GenerationOptions | None = None    # not None: the dense model writes the text itself (no files)


@dataclass(frozen=True)
class EvaluationRequest:
    path: str
    seqlen: int | None = None       # None: min(2048, the model's context)
    windows: int | None = None      # at most this many windows; None: every window of the text
    text_field: str = "text"


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Calibrated(Event):
    """The calibration windows are ready (sent by `calibrate`, also inside a run)."""

    calib: CalibrationSet


@dataclass
class RunRecord:
    """One pruning run: its plan and result, its masks and layer views (when remembered), its perplexities."""

    number: int
    plan: PrunePlan
    result: PruneResult
    masks: dict = field(default_factory=dict)          # full layer name -> PackedMask
    layer_views: dict = field(default_factory=dict)    # full layer name -> LayerView
    ppl_dense: Perplexity | None = None
    ppl: Perplexity | None = None
    zero_shot: object = None                           # core.evaluation.zero_shot.ZeroShot, once scored
    exported: Path | None = None                       # where a streamed run wrote its model

    method = property(lambda self: self.plan.method)
    pattern = property(lambda self: str(self.plan.pattern))
    target_sparsity = property(lambda self: self.plan.sparsity)
    sparsity = property(lambda self: self.result.sparsity)
    seconds = property(lambda self: self.result.seconds)


@dataclass(frozen=True)
class Evaluation:
    dense: Perplexity
    pruned: Perplexity | None
    record: RunRecord | None        # the run measured, if one was applied


# ---------------------------------------------------------------- state


class Workbench:
    """The model, its calibration, the dense weights to come back to, the runs, and the run applied now."""

    def __init__(self, remember: bool = True):
        self.remember = remember
        self.forget()

    def forget(self) -> None:
        """Back to an empty session (a model about to be opened starts afresh)."""
        self.loaded: LoadedModel | None = None
        self.streamed = False
        self.calib: CalibrationSet | None = None
        self.calib_request: CalibrationRequest | None = None
        self.dense: WeightSnapshot | None = None
        self.runs: list[RunRecord] = []
        self.applied: RunRecord | None = None         # the run whose weights the model holds now
        self.pruning = False                           # a run is changing the weights right now
        self.dense_ppl: dict = {}                      # EvaluationRequest -> Perplexity of the dense model
        self.dense_tasks: dict = {}                    # zero-shot: tasks read and dense results, by request
        self.previews: dict = {}                       # (layer, sparsity) -> LayerView of the dense model
        self.load_seconds = 0.0                        # opening plus calibration
        self.bench_report: BenchReport | None = None
        self.shrunk = None                             # the last structured shrink (core.studies.structure)

    def need_model(self) -> LoadedModel:
        if self.loaded is None:
            raise UserError("Open a model first: the welcome page offers the demo model, a folder, a .gguf file "
                            "or a hub id.")
        return self.loaded

    def run(self, number: int) -> RunRecord:
        found = next((r for r in self.runs if r.number == number), None)
        if found is None:
            raise UserError(f"there is no run {number}.")
        return found


# ---------------------------------------------------------------- jobs


def open_model(bench: Workbench, request: OpenRequest, job: Job | None = None) -> LoadedModel:
    """Open a model; the workbench then holds it alone (calibration, runs and caches start afresh)."""
    job, started = as_job(job), time.perf_counter()
    if not request.spec.strip():
        raise UserError("Type a model folder, a .gguf file, a hub id or 'demo' first.")
    if request.stream:
        loaded = open_streaming(_streamable_folder(request.spec, job), trust_remote_code=request.trust_remote_code,
                                job=job)
    else:
        loaded = open_any(request.spec.strip(), dtype=request.dtype, trust_remote_code=request.trust_remote_code,
                          job=job)
    bench.forget()
    bench.loaded, bench.streamed = loaded, request.stream
    bench.load_seconds = time.perf_counter() - started
    return loaded


def _streamable_folder(spec: str, job: Job) -> Path:
    folder = ensure_demo(job) if spec == "demo" else Path(spec).expanduser()
    if not folder.is_dir():
        raise UserError(f"{spec}: streaming needs a model folder with safetensors weights (or 'demo').")
    return folder


def calibrate(bench: Workbench, request: CalibrationRequest, job: Job | None = None) -> CalibrationSet:
    """Tokenize the calibration files and draw the windows, unless the same request is loaded already."""
    job, started = as_job(job), time.perf_counter()
    loaded = bench.need_model()
    if bench.calib is None or bench.calib_request != request:
        seqlen = request.seqlen or default_seqlen(loaded.context_length)
        if request.generate is not None:
            calib = _on_dense(bench, lambda: generate_calibration(
                loaded.model, loaded.tokenizer, nsamples=request.nsamples, seqlen=seqlen, seed=request.seed,
                options=request.generate, context_length=loaded.context_length, job=job))
        else:
            calib = load_calibration(list(request.files), loaded.tokenizer, nsamples=request.nsamples, seqlen=seqlen,
                                     seed=request.seed, text_field=request.text_field, job=job)
        bench.calib, bench.calib_request = calib, request
        bench.load_seconds += time.perf_counter() - started
    job.emit(Calibrated(bench.calib))
    return bench.calib


def _on_dense(bench: Workbench, work):
    """`work()` with the dense weights in the model (a run applied is put back afterwards)."""
    if bench.applied is None:
        return work()
    if bench.dense is None:
        raise UserError("this session keeps no dense copy of the model to write calibration text with: open it afresh.")
    pruned = WeightSnapshot(bench.loaded)
    bench.dense.restore(bench.loaded)
    try:
        return work()
    finally:
        pruned.restore(bench.loaded)


def prune(bench: Workbench, plan: PrunePlan, job: Job | None = None, *, memory_budget: int | None = None,
          export: ExportRequest | None = None) -> RunRecord:
    """Prune the dense model by `plan`; the run becomes the applied one. A streamed model is pruned
    straight into `export` (which it needs); a model in memory is exported afterwards with `export_run`.
    On cancel or error the model is dense again, with no run applied."""
    job = as_job(job)
    loaded = bench.need_model()
    plan.validate()
    plan.check_globs([info.full_name for block in loaded.layout.inventory for info in block.linears])
    if bench.calib is None:
        raise UserError("Load calibration text first: a run needs calibration windows.")
    if export is not None:
        export.check(plan, streamed=bench.streamed, loaded=loaded, job=job)
    number = len(bench.runs) + 1
    views: dict[str, LayerView] = {}
    watched = job.with_sink(_layer_views(job, plan, views))
    summarize = summaries.summarize if bench.remember else None
    if bench.streamed:
        if plan.quantizing:
            raise UserError("quantization is not available for streamed runs yet (--stream): it needs the "
                            "quantized model's scales for the export. Prune and quantize in memory.")
        if plan.recovery.mode == "e2e":
            raise UserError("end-to-end recovery needs the whole model in memory twice, which streaming avoids: "
                            "use blockwise recovery (--recover blockwise) with a streamed model.")
        return _prune_streamed(bench, plan, number, export, watched, summarize, views, memory_budget)
    _start_dense(bench)
    bench.applied, bench.pruning = None, True
    dense = bench.dense.weights if bench.dense is not None else None
    teacher = copy.deepcopy(loaded.model) if plan.recovery.mode == "e2e" else None
    try:
        result = prune_in_memory(loaded, bench.calib, plan, watched, summarize=summarize,
                                 memory_budget=memory_budget, dense=dense)
        if teacher is not None:
            recover_pruned_model(loaded.model, teacher, bench.calib.input_ids, result, job)
    except BaseException:
        if teacher is not None:      # the pipeline restores its own failures; this covers recovery's
            loaded.model.load_state_dict(teacher.state_dict())
        raise
    finally:
        bench.pruning = False
        del teacher
    masks = pack_masks(loaded, [layer.name for layer in result.layers]) if bench.remember else {}
    return _keep(bench, RunRecord(number, result.plan, result, masks, views))


def _layer_views(job: Job, plan: PrunePlan, views: dict):
    """A sink that turns each pruned layer's summary into the view the studio draws, then passes it on."""
    def on_event(event):
        if isinstance(event, LayerPruned) and event.summary is not None:
            view = run_view(event.result.name, event.result.shape, event.summary, plan.method)
            views[event.result.name] = view
            event = LayerPruned(event.block, event.result, view)
        job.emit(event)
    return on_event


def _start_dense(bench: Workbench) -> None:
    """Every in-memory run starts from the dense model: snapshot it before the first run, restore it before later ones."""
    if bench.applied is None and bench.dense is None and bench.remember:
        bench.dense = WeightSnapshot(bench.loaded)
    elif bench.applied is not None:
        if bench.dense is None:
            raise UserError("this session keeps no dense copy of the model, so it cannot prune it again: "
                            "open the model afresh.")
        bench.dense.restore(bench.loaded)


def _prune_streamed(bench, plan, number, export, job, summarize, views, memory_budget) -> RunRecord:
    if export is None:
        raise UserError("a streamed model is pruned straight into its export: choose the output folder.")
    record = RunRecord(number, plan, None, {}, views)

    def report(result, seconds):
        record.result, record.plan = result, result.plan
        return report_of(bench, record, total=seconds)

    result, path = prune_streaming(bench.loaded, bench.calib, plan, export.out, job, overwrite=export.overwrite,
                                   summarize=summarize, memory_budget=memory_budget, report=report)
    record.result, record.exported = result, path
    return _keep(bench, record)


def _keep(bench: Workbench, record: RunRecord) -> RunRecord:
    if bench.remember:
        bench.runs.append(record)
    bench.applied = record
    return record


def restore_dense(bench: Workbench, job: Job | None = None) -> None:
    """Put the dense weights back; no run is applied afterwards."""
    if bench.applied is None:
        return
    if bench.dense is None:
        raise UserError("this session keeps no dense copy of the model: open the model afresh.")
    bench.dense.restore(bench.need_model())
    bench.applied = None


def evaluate(bench: Workbench, request: EvaluationRequest, job: Job | None = None) -> Evaluation:
    """Perplexity of the dense model (measured once per request) and of the applied run, if any; the run
    keeps both."""
    job = as_job(job)
    loaded = bench.need_model()
    if bench.streamed:
        raise UserError("a streamed model is never whole in memory, so it cannot be evaluated here: "
                        "run `compression-studio eval` on the exported folder.")
    seqlen = request.seqlen or default_seqlen(loaded.context_length)
    windows = evaluation_windows(loaded.tokenizer, request.path, seqlen, request.windows, request.text_field)
    record = bench.applied
    dense = bench.dense_ppl.get(request)
    if dense is None:
        dense = _dense_perplexity(bench, windows, job)
    pruned = perplexity(loaded.model, windows, job=job) if record is not None else None
    bench.dense_ppl[request] = dense
    if record is not None:
        record.ppl_dense, record.ppl = dense, pruned
    return Evaluation(dense, pruned, record)


def _dense_perplexity(bench: Workbench, windows, job: Job) -> Perplexity:
    if bench.applied is None:
        return perplexity(bench.loaded.model, windows, job=job)
    if bench.dense is None:
        raise UserError("measure the dense model before pruning: this session keeps no dense copy.")
    pruned = WeightSnapshot(bench.loaded)
    bench.dense.restore(bench.loaded)
    try:
        return perplexity(bench.loaded.model, windows, job=job)
    finally:
        pruned.restore(bench.loaded)


def report_of(bench: Workbench, record: RunRecord, total: float | None = None) -> dict:
    """`sparsity.json` for a run: the same plan on the same calibration gives the same report from every front end."""
    durations = {"load": bench.load_seconds}
    if record.ppl_dense is not None:
        durations["eval_dense"] = record.ppl_dense.seconds
    durations["prune"] = record.result.seconds
    if record.ppl is not None:
        durations["eval_pruned"] = record.ppl.seconds
    if total is not None:
        durations["total"] = total
    return build_report(bench.loaded, record.result, bench.calib, record.ppl_dense, record.ppl, durations,
                        zero_shot=record.zero_shot.describe() if record.zero_shot is not None else None)


def can_export(bench: Workbench, format: str) -> bool:
    """Whether the applied run can be written in `format`."""
    if bench.applied is None:
        return False
    try:
        ExportRequest("", format=format).check_format(bench.applied.plan, loaded=bench.loaded)
    except UserError:
        return False
    return True


def check_export(bench: Workbench, request: ExportRequest, plan: PrunePlan, job: Job | None = None) -> Path:
    """Refuse, before any work, an export the plan's run could not be written in, or that the disk has no room
    for; the target folder."""
    return request.check(plan, streamed=bench.streamed, loaded=bench.loaded, job=job)


def export_run(bench: Workbench, request: ExportRequest, job: Job | None = None) -> Exported:
    """Write the applied run's model in the requested format with its report and calibration windows, atomically."""
    job = as_job(job)
    loaded = bench.need_model()
    record = bench.applied
    if record is None:
        raise UserError("Nothing to export yet: run a pruning method first.")
    if record.exported is not None:
        raise UserError(f"this run was written to {record.exported} while it ran: copy that folder instead.")
    return writers.write(loaded, request, report_of(bench, record), bench.calib, record.result, job)


def benchmark(bench: Workbench, options: BenchOptions, job: Job | None = None) -> BenchReport:
    """Dense against the 2:4 kernels for the model's layer shapes, then end to end; the report is kept."""
    bench.bench_report = run_benchmark(bench.need_model(), options, job)
    return bench.bench_report


def save_benchmark(bench: Workbench, path: str) -> None:
    """The last benchmark's report as JSON (a .json path) or CSV (any other)."""
    if bench.bench_report is None:
        raise UserError("No finished benchmark to save yet.")
    report = bench.bench_report
    try:
        Path(path).write_text(report.to_json() if path.lower().endswith(".json") else report.to_csv())
    except OSError as exc:
        raise UserError(f"could not write {path}: {exc.strerror or exc}. Choose another file.") from None


# ---------------------------------------------------------------- views (run on a second worker thread)


def layer_view(bench: Workbench, name: str, sparsity: float = 0.5, job: Job | None = None) -> LayerView:
    """A layer as the applied run left it, or a magnitude preview of its dense weights (cached)."""
    as_job(job).check()
    if bench.applied is not None and name in bench.applied.layer_views:
        return bench.applied.layer_views[name]
    dense_now = bench.applied is None and not bench.pruning    # the model holds its dense weights
    view = bench.previews.get((name, sparsity)) if dense_now else None
    if view is None:
        view = dense_view(name, current_weight(bench.need_model(), name), sparsity)
        if dense_now and bench.applied is None and not bench.pruning:
            bench.previews[(name, sparsity)] = view
    return view


def layer_tile(bench: Workbench, name: str, rows: tuple[int, int], cols: tuple[int, int],
               job: Job | None = None) -> Tile:
    """The weights of a zoomed region, before and after the applied run, with their scores where known."""
    as_job(job).check()
    loaded, record = bench.need_model(), bench.applied
    current = current_weight(loaded, name)
    before = bench.dense.weights[name] if bench.dense is not None and record is not None else current
    view = record.layer_views.get(name) if record is not None else None
    factors = view.summary.score_factors if view is not None else None
    if factors is None:                 # no run's score, or one not of that form: |W|, as a magnitude run would rank
        factors = (1, np.ones(current.shape[1], np.float32))
    return tile(before, current, rows, cols, factors)


def compare_runs(bench: Workbench, a: int, b: int, layer: str | None, job: Job | None = None) -> Comparison:
    if a == b:
        raise UserError("Select two different runs in the history table to compare them.")
    return compare(bench.run(a), bench.run(b), layer)
