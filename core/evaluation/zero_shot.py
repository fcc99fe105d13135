"""Zero-shot accuracy: multiple-choice tasks scored by log-likelihood through lm-evaluation-harness, on the
model in memory (dense and pruned, nothing saved first).

Each choice is scored by the sum of the log-probabilities of its tokens after the question
(`harness_model.InMemoryScoring`); the harness's own task code turns those into acc (the most likely choice is
the gold one) and acc_norm (the same after dividing each choice's log-likelihood by its length in
characters), with their standard errors, so the numbers mean what the papers' tables mean. `--limit N`
scores the first N documents of each task.

`evaluate_tasks(bench, request, job)` is the job: the dense model's results (measured once per request,
with the dense weights put back for the purpose when a run is applied, then the run's again), and the
applied run's, with the percentage of dense each keeps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..compute import resolve_device
from ..errors import UserError
from ..events import Job, as_job
from ..pruning.snapshot import WeightSnapshot
from .harness_model import in_memory_lm
from .local_tasks import harness, harness_version, load_tasks, parse_task_names

FEWSHOT_SEED = 1234          # simple_evaluate's default, so few-shot tasks draw the same examples
STDERR_BOOTSTRAP = 1000      # resamples for metrics whose standard error has no closed form


@dataclass(frozen=True)
class TaskRequest:
    tasks: tuple[str, ...]
    limit: int | None = None        # at most this many documents per task; None: all
    tasks_dir: str | None = None    # a folder of local task configs (YAML) read before the harness's own
    device: str = "auto"
    batch_size: int = 0             # rows per forward pass; 0: as many as fit ~4096 tokens

    @classmethod
    def build(cls, tasks, limit: int | None = None, tasks_dir: str | None = None, device: str = "auto",
              batch_size: int = 0) -> "TaskRequest":
        if limit is not None and limit < 1:
            raise UserError(f"--limit {limit}: give a positive number of documents per task, or leave it out.")
        return cls(parse_task_names(tasks), limit or None, tasks_dir or None, device, batch_size)


@dataclass(frozen=True)
class TaskScore:
    task: str
    n: int                          # documents scored
    metrics: dict                   # "acc", "acc_norm" (where the task has it), ... -> value in [0, 1]
    stderr: dict                    # the same names -> standard error
    source: str = ""

    acc = property(lambda self: self.metrics.get("acc"))
    acc_norm = property(lambda self: self.metrics.get("acc_norm"))


@dataclass(frozen=True)
class TaskResults:
    scores: dict                    # task -> TaskScore, in the order asked
    seconds: float
    limit: int | None = None


@dataclass(frozen=True)
class ZeroShot:
    dense: TaskResults
    pruned: TaskResults | None
    record: object = None           # the run measured (a workbench RunRecord), if one was applied
    request: TaskRequest | None = None
    sources: dict = field(default_factory=dict)

    def retained(self) -> dict:
        """task -> metric -> pruned / dense (a fraction; None where dense is 0)."""
        if self.pruned is None:
            return {}
        return {task: {name: (self.pruned.scores[task].metrics[name] / value if value else None)
                       for name, value in score.metrics.items()}
                for task, score in self.dense.scores.items()}

    def describe(self) -> dict:
        """What `sparsity.json` and `--json` record."""
        retained = self.retained()
        tasks = {}
        for task, dense in self.dense.scores.items():
            pruned = self.pruned.scores[task] if self.pruned is not None else None
            tasks[task] = {"n": dense.n, "source": dense.source,
                           "dense": {**dense.metrics, **{f"{k}_stderr": v for k, v in dense.stderr.items()}},
                           "pruned": {**pruned.metrics, **{f"{k}_stderr": v for k, v in pruned.stderr.items()}}
                           if pruned is not None else None,
                           "retained": retained.get(task)}
        return {"harness": f"lm-eval {harness_version()}", "limit": self.dense.limit,
                "tasks_dir": self.request.tasks_dir if self.request else None, "tasks": tasks,
                "seconds": {"dense": self.dense.seconds, "pruned": self.pruned.seconds if self.pruned else None}}


def score_tasks(model, tokenizer, tasks, *, limit: int | None = None, device: str = "auto", batch_size: int = 0,
                job: Job | None = None, label: str = "zero-shot") -> TaskResults:
    """Run `tasks` (a `local_tasks.Tasks`) on `model`; the model is moved to `device` and back."""
    evaluator = harness().evaluator
    job, started = as_job(job), time.perf_counter()
    target = resolve_device(device)
    home = next(model.parameters()).device
    for task in tasks.tasks.values():          # what simple_evaluate sets before it calls evaluate
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
    lm = in_memory_lm(model, tokenizer, device=target, batch_size=batch_size, job=job, label=label)
    quiet = _Quiet()
    model.to(target)
    try:
        with quiet:
            out = evaluator.evaluate(lm=lm, task_dict=tasks.manager.load(list(tasks.tasks.values())), limit=limit,
                                     bootstrap_iters=STDERR_BOOTSTRAP, log_samples=False)
    finally:
        model.to(home)
    scores = {name: _score(name, out, tasks.sources.get(name, "")) for name in tasks.tasks}
    return TaskResults(scores, time.perf_counter() - started, limit)


def _score(name: str, out: dict, source: str) -> TaskScore:
    row = out["results"][name]
    metrics, stderr = {}, {}
    for key, value in row.items():
        metric, _, _filter = key.partition(",")
        if not _filter or not isinstance(value, (int, float)):
            continue
        if metric.endswith("_stderr"):
            stderr[metric[: -len("_stderr")]] = float(value)
        else:
            metrics[metric] = float(value)
    n = out.get("n-samples", {}).get(name, {}).get("effective", row.get("sample_len", 0))
    return TaskScore(name, int(n), metrics, {k: v for k, v in stderr.items() if k in metrics}, source)


class _Quiet:
    """The harness's INFO logging and the datasets library's progress bars off while a job runs."""

    def __enter__(self):
        self.logger = logging.getLogger("lm_eval")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        return False


def evaluate_tasks(bench, request: TaskRequest, job: Job | None = None) -> ZeroShot:
    """The workbench job: dense results (cached per request) and the applied run's; the run keeps both."""
    job = as_job(job)
    loaded = bench.need_model()
    if bench.streamed:
        raise UserError("a streamed model is never whole in memory, so its tasks cannot be scored here: "
                        "run `compression-studio eval OUT --tasks ...` on the exported folder.")
    cache, stamp = bench.dense_tasks, _stamp(request.tasks_dir)
    key = (request.tasks, request.tasks_dir, stamp)          # the task files as they are now, read once
    tasks = cache.get(key)
    if tasks is None:
        job.phase("loading tasks", 0, len(request.tasks), ", ".join(request.tasks))
        tasks = cache[key] = load_tasks(request.tasks, request.tasks_dir)
        job.phase("loading tasks", len(request.tasks), len(request.tasks))
    run = dict(limit=request.limit, device=request.device, batch_size=request.batch_size, job=job)
    record = bench.applied
    dense = cache.get((request, stamp))
    if dense is None:
        dense = cache[(request, stamp)] = _dense(bench, loaded, tasks, run)
    pruned = score_tasks(loaded.model, loaded.tokenizer, tasks, label="zero-shot (pruned)", **run) \
        if record is not None else None
    result = ZeroShot(dense, pruned, record, request, tasks.sources)
    if record is not None:
        record.zero_shot = result
    return result


def _stamp(folder: str | None) -> tuple:
    """Names, sizes and times of the files under a tasks folder: a changed file means the tasks are read again."""
    if not folder or not Path(folder).expanduser().is_dir():
        return ()
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in sorted(Path(folder).expanduser().rglob("*")) if p.is_file())


def _dense(bench, loaded, tasks, run) -> TaskResults:
    if bench.applied is None:
        return score_tasks(loaded.model, loaded.tokenizer, tasks, label="zero-shot (dense)", **run)
    if bench.dense is None:
        raise UserError("score the dense model before pruning: this session keeps no dense copy.")
    pruned = WeightSnapshot(loaded)
    bench.dense.restore(loaded)
    try:
        return score_tasks(loaded.model, loaded.tokenizer, tasks, label="zero-shot (dense)", **run)
    finally:
        pruned.restore(loaded)
