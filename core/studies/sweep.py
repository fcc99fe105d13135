"""A sparsity sweep: every point of a grid of methods × sparsities × patterns is a full sequential pruning run
from the dense model, measured by perplexity.

The model is opened once, calibrated once and measured dense once; each point then prunes, evaluates and puts
the dense weights back (`core.workbench`'s prune, evaluate and restore_dense, the jobs `prune --eval` chains),
so a point equals the one-off run at its setting. Cancel is checked between points and inside them; a
cancelled sweep puts the dense weights back and keeps (and saves) the points it finished. With a Ray address
the points run as Ray tasks instead (`core.studies.sweep_ray`).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .. import workbench as wb
from ..data.texts import sha256_of
from ..errors import UserError
from ..events import Cancelled, Job, as_job, eta_seconds
from ..pruning.snapshot import WeightSnapshot
from .sweep_points import DensePerplexity, PointFinished, SweepPoint, SweepRequest, SweepResult

PHASE = "sweep points"


def run_sweep(request: SweepRequest, job: Job | None = None, on_point: Callable[[PointFinished], None] | None = None,
              bench: wb.Workbench | None = None) -> SweepResult:
    """Run every point of the grid one after another; the finished sweep (saved to `request.out` if given).

    `bench`: a workbench that already holds the model (the studio's): its model is swept in place, its
    runs and applied run are left alone (an applied run is taken off first: the model is dense at the end),
    and its calibration and dense perplexity are reused when they match. Without one the model is opened
    from `request.model`. Cancel raises `Cancelled` after saving the finished points with the model dense."""
    job = as_job(job)
    points = request.points()
    check_out(request.out)
    evaluation_file(request.evaluation)
    started = time.perf_counter()
    inner = _session(request, job, bench)
    result = start_result(request, describe_model(inner.loaded), points)
    if bench is not None:
        bench.pruning = True       # the weights are not the dense ones while a point runs: no dense previews
    try:
        wb.calibrate(inner, request.calibration, job)
        result.calibration = inner.calib.describe()
        dense = wb.evaluate(inner, request.evaluation, job).dense
        result.dense = {"ppl": dense.ppl, "nll": dense.nll, "seconds": dense.seconds}
        result.evaluation.update(windows=dense.windows, seqlen=dense.seqlen, tokens=dense.tokens)
        job.emit(DensePerplexity(dense.ppl, dense.nll, dense.seconds))
        save_result(result, request, started)
        for index, point in enumerate(points):
            job.check()
            job.phase(PHASE, index, len(points), _eta_text(started, index, len(points), point))
            finished = run_point(inner, request, point, index, job)
            result.points.append(with_progress(finished, started, index + 1, len(points)))
            save_result(result, request, started)
            job.emit(result.points[-1])
            if on_point is not None:
                on_point(result.points[-1])
        job.phase(PHASE, len(points), len(points), "done")
    except (Cancelled, KeyboardInterrupt):
        _back_to_dense(inner)
        save_result(result, request, started, "cancelled")
        raise
    except BaseException:
        _back_to_dense(inner)
        save_result(result, request, started, "failed")
        raise
    finally:
        if bench is not None:
            bench.pruning = False
    save_result(result, request, started, "finished")
    return result


def run_point(inner: wb.Workbench, request: SweepRequest, point: SweepPoint, index: int, job: Job) -> PointFinished:
    """Prune the dense model at `point`, measure it, and put the dense weights back."""
    plan = request.plan(point)
    started = time.perf_counter()
    try:
        record = wb.prune(inner, plan, job)
        measured = wb.evaluate(inner, request.evaluation, job).pruned
    finally:
        _back_to_dense(inner)
    return point_finished(index, point, record, measured, time.perf_counter() - started)


def point_finished(index: int, point: SweepPoint, record: wb.RunRecord, measured, seconds: float) -> PointFinished:
    """A point's record from its run and its perplexity (`core.evaluation.perplexity.Perplexity`)."""
    return PointFinished(index, point.method, point.pattern, point.sparsity, record.result.sparsity, measured.ppl,
                         measured.nll, record.result.seconds, measured.seconds, seconds,
                         {**record.plan.describe(), "device": record.result.device})


def _session(request: SweepRequest, job: Job, bench: wb.Workbench | None) -> wb.Workbench:
    """A workbench that keeps nothing but the dense weights: the given one's model, or the model opened now."""
    inner = wb.Workbench(remember=False)
    if bench is None:
        if request.model.stream:
            raise UserError("a sweep measures every point in memory: open the model without streaming.")
        wb.open_model(inner, request.model, job)
        inner.dense = WeightSnapshot(inner.loaded)
        return inner
    inner.loaded = bench.need_model()
    if bench.streamed:
        raise UserError("a streamed model is never whole in memory, so it cannot be swept: open it without "
                        "streaming.")
    if bench.pruning:
        raise UserError("a run is changing the weights right now: wait for it or cancel it first.")
    if bench.applied is not None:
        wb.restore_dense(bench, job)
    if bench.dense is None:
        bench.dense = WeightSnapshot(inner.loaded)
    inner.dense, inner.dense_ppl = bench.dense, bench.dense_ppl
    if bench.calib is not None and bench.calib_request == request.calibration:
        inner.calib, inner.calib_request = bench.calib, bench.calib_request
    return inner


def start_result(request: SweepRequest, model: dict, points: list[SweepPoint]) -> SweepResult:
    return SweepResult(request=request.describe(), model=model, evaluation=evaluation_file(request.evaluation),
                       planned=[asdict(p) for p in points])


def describe_model(loaded) -> dict:
    return {"name": loaded.name, "source": loaded.source, "kind": loaded.kind,
            "path": str(loaded.path) if loaded.path else None, "family": loaded.layout.family,
            "prunable_parameters": loaded.layout.prunable_parameters}


def evaluation_file(request: wb.EvaluationRequest) -> dict:
    path = Path(request.path)
    if not path.is_file():
        raise UserError(f"evaluation file {request.path}: no such file.")
    return {"path": str(path.resolve()), "sha256": sha256_of(path), "text_field": request.text_field}


def check_out(out: str | None) -> None:
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for sweep.json and sweep.csv.")
    if not path.expanduser().resolve().parent.is_dir():
        raise UserError(f"cannot write the sweep to {out}: folder {path.parent} does not exist.")


def with_progress(point: PointFinished, started: float, done: int, total: int) -> PointFinished:
    eta = eta_seconds(started, done, total) if done < total else None
    return PointFinished(**{**point.row(), "done": done, "total": total, "eta_seconds": eta})


def _eta_text(started: float, done: int, total: int, point: SweepPoint) -> str:
    eta = eta_seconds(started, done, total)
    return point.label + (f", about {format_duration(eta)} left" if eta is not None else "")


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _back_to_dense(inner: wb.Workbench) -> None:
    if inner.applied is not None:
        wb.restore_dense(inner)


def save_result(result: SweepResult, request: SweepRequest, started: float, status: str | None = None) -> None:
    if status is not None:
        result.status = status
    result.seconds = time.perf_counter() - started
    if request.out is not None:
        result.save(request.out)
