"""A sparsity sweep whose points run as Ray tasks (`--ray ADDRESS`); Ray is the optional extra `cluster`.

Every point is one task that opens the model itself from the request's spec, calibrates, prunes and measures
it, on a worker with one GPU when the cluster has GPUs (else one CPU); one more task measures the dense
model. Results stream back in the order they finish (`ray.wait`), each saved at once as in the sequential
sweep. `ADDRESS` is a running cluster's (host:port, or ray://host:port for Ray Client, or auto) or `local`,
which starts a Ray instance on this machine for the sweep alone. An address nobody answers at is refused in
one line before anything runs; cancel stops the tasks still running and keeps the finished points.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

from .. import workbench as wb
from ..data.calibration import default_seqlen
from ..errors import UserError
from ..evaluation.perplexity import evaluation_windows, perplexity
from ..events import Cancelled, Job, as_job, eta_seconds
from .sweep import PHASE, check_out, describe_model, evaluation_file, point_finished, save_result, start_result, \
    with_progress
from .sweep_points import DensePerplexity, PointFinished, SweepPoint, SweepRequest, SweepResult

CONNECT_TIMEOUT_S = 5.0
POLL_S = 0.5                 # how often cancel is looked at while tasks run


def run_sweep_ray(request: SweepRequest, address: str, job: Job | None = None,
                  on_point: Callable[[PointFinished], None] | None = None) -> SweepResult:
    """Run the grid's points as Ray tasks on the cluster at `address`; the sweep with its points by grid order."""
    job = as_job(job)
    points = request.points()
    check_out(request.out)
    ray = _ray()
    if request.model.stream:
        raise UserError("a sweep measures every point in memory: open the model without streaming.")
    started = time.perf_counter()
    result = start_result(request, {"source": request.model.spec}, points)
    result.ray = address
    ours = connect(address)
    try:
        _run(request, points, result, job, on_point, started)
    finally:
        if ours:
            ray.shutdown()
    result.points.sort(key=lambda p: p.index)
    save_result(result, request, started, "finished")
    return result


def _ray():
    """Ray, imported on first use: the optional extra `cluster`, whose import the window and the CLI should
    not pay at start."""
    try:
        import ray
        import ray.exceptions
    except ImportError:
        raise UserError("--ray needs Ray, which is not installed: pip install 'compression-studio[cluster]', or "
                        "drop --ray to run the points one after another.") from None
    return ray


def connect(address: str) -> bool:
    """Join the cluster at `address` (or start a local one for 'local'); whether this call started Ray."""
    ray = _ray()
    if ray.is_initialized():
        return False
    address = address.strip()
    if address not in ("local", "auto"):
        _reachable(address)
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:      # Ray raises ConnectionError, RuntimeError, ValueError… for a cluster it cannot join
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"could not join the Ray cluster at {address}: {detail}. Start one with `ray start --head` "
                        "and give its address, or use --ray local.") from None
    return True


def _reachable(address: str) -> None:
    """Refuse at once an address no process listens at (Ray itself retries for a minute or more)."""
    client = address.startswith("ray://")
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host:
        host, port = hostport, "10001" if client else "6379"
    try:
        port_number = int(port)
    except ValueError:
        raise UserError(f"--ray {address}: give host:port (e.g. 10.0.0.5:6379), ray://host:10001, auto or "
                        "local.") from None
    try:
        socket.create_connection((host, port_number), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"no Ray cluster answers at {address} ({exc.strerror or exc}): check the address, start "
                        "one with `ray start --head`, or use --ray local.") from None


def _run(request, points, result: SweepResult, job: Job, on_point, started: float) -> None:
    ray = _ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    task = ray.remote(num_gpus=1, num_cpus=0)(point_task) if gpus else ray.remote(num_cpus=1)(point_task)
    dense = task.remote(request, None, -1)
    pending = [dense, *(task.remote(request, point, i) for i, point in enumerate(points))]
    done, total = 0, len(points)
    job.message(f"{total} sweep points sent to Ray as tasks, one {'GPU' if gpus else 'CPU'} each")
    try:
        while pending:
            job.check()
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
            for ref in ready:
                value = _get(ref)
                if ref == dense:
                    result.model, result.calibration, result.dense, evaluated = value
                    result.evaluation.update(evaluated)
                    job.emit(DensePerplexity(result.dense["ppl"], result.dense["nll"], result.dense["seconds"]))
                else:
                    done += 1
                    point = with_progress(value, started, done, total)
                    result.points.append(point)
                    job.emit(point)
                    if on_point is not None:
                        on_point(point)
                    eta = eta_seconds(started, done, total)
                    job.phase(PHASE, done, total, f"{point.point.label} done" +
                              (f", about {eta:.0f} s left" if eta is not None and done < total else ""))
                save_result(result, request, started)
    except (Cancelled, KeyboardInterrupt):
        for ref in pending:
            ray.cancel(ref, force=True)
        save_result(result, request, started, "cancelled")
        raise
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        save_result(result, request, started, "failed")
        raise


def _get(ref):
    ray = _ray()
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError):
            raise UserError(str(cause).splitlines()[0]) from None
        raise cause if isinstance(cause, Exception) else exc
    except ray.exceptions.RayError as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"a Ray worker of the sweep was lost: {detail}. Run the sweep again.") from None


def point_task(request: SweepRequest, point: SweepPoint | None, index: int):
    """On a Ray worker: open the model, calibrate, prune at `point` and measure it; the PointFinished.
    With no point: the dense model's (model, calibration, dense perplexity, evaluation windows)."""
    job = Job()
    bench = wb.Workbench(remember=False)
    loaded = wb.open_model(bench, request.model, job)
    seqlen = request.evaluation.seqlen or default_seqlen(loaded.context_length)
    windows = evaluation_windows(loaded.tokenizer, request.evaluation.path, seqlen, request.evaluation.windows,
                                 request.evaluation.text_field)
    calib = wb.calibrate(bench, request.calibration, job)
    if point is None:
        dense = perplexity(loaded.model, windows, job=job)
        evaluated = {**evaluation_file(request.evaluation), "windows": dense.windows, "seqlen": dense.seqlen,
                     "tokens": dense.tokens}
        return (describe_model(loaded), calib.describe(), {"ppl": dense.ppl, "nll": dense.nll,
                                                           "seconds": dense.seconds}, evaluated)
    started = time.perf_counter()
    record = wb.prune(bench, request.plan(point), job)
    measured = perplexity(loaded.model, windows, job=job)
    return point_finished(index, point, record, measured, time.perf_counter() - started)
