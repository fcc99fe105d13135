"""Typed progress events, and the job context every long engine function takes.

A job context (`Job`) carries the two things a long job needs from whoever started it: where its
events go (`emit`) and whether it should stop (`check`, which raises `Cancelled`). The CLI draws
progress bars from the events; the studio re-emits them as Qt signals; tests record them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


class Cancelled(Exception):
    """Raised inside a job when its token was cancelled; the job has cleaned up."""


class CancelToken:
    """Thread-safe flag a listener sets and a job checks between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


@dataclass(frozen=True)
class Event:
    """Base of every progress event."""


@dataclass(frozen=True)
class Phase(Event):
    """A named step of a job, with optional progress `done` of `total` (units are the step's own)."""

    name: str
    done: int = 0
    total: int = 0
    detail: str = ""


@dataclass(frozen=True)
class BlockStarted(Event):
    index: int
    total: int


@dataclass(frozen=True)
class LayerPruned(Event):
    """One linear layer has been pruned; `result` is a `core.pruning.pipeline.LayerResult`.

    `summary` carries small, already-reduced views for display (histograms,
    heatmaps) when the job was asked for them; never full tensors.
    """

    block: int
    result: Any
    summary: Any = None


@dataclass(frozen=True)
class RecoveryStep(Event):
    """One optimizer step of a block's (or the whole model's, `block` -1) recovery; `loss` is relative."""

    block: int
    step: int
    total: int
    loss: float


@dataclass(frozen=True)
class BlockRecovered(Event):
    """A block's recovery is over; `curve` is a `core.recovery.blockwise.RecoveryCurve`."""

    block: int
    curve: Any


@dataclass(frozen=True)
class AllocationChosen(Event):
    """The per-block sparsity a non-uniform allocation chose, before any block is pruned."""

    allocation: Any


@dataclass(frozen=True)
class Message(Event):
    """A line for the user's log (a retry, a skipped layer, a warning)."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class Finished(Event):
    result: Any = None


EventSink = Callable[[Event], None]


def ignore(_: Event) -> None:
    """The default listener: drops every event."""


class Job:
    """The context of one running job: its event sink and its cancel token.

    `Job()` is a job nobody watches and nobody cancels. `with_sink` gives a context that shares the
    cancel token but sends events elsewhere first (the workbench watches a run's layer events).
    """

    def __init__(self, on_event: EventSink | None = None, cancel: CancelToken | None = None):
        self.on_event = on_event or ignore
        self.cancel = cancel or CancelToken()

    def emit(self, event: Event) -> None:
        self.on_event(event)

    def phase(self, name: str, done: int = 0, total: int = 0, detail: str = "") -> None:
        self.on_event(Phase(name, done, total, detail))

    def message(self, text: str, level: str = "info") -> None:
        self.on_event(Message(text, level))

    def check(self) -> None:
        """Raise `Cancelled` when the job was asked to stop."""
        self.cancel.check()

    def with_sink(self, on_event: EventSink) -> "Job":
        return Job(on_event, self.cancel)


def as_job(job: "Job | None") -> Job:
    return job if job is not None else Job()


def eta_seconds(started: float, done: int, total: int, now: float | None = None) -> float | None:
    """Remaining time assuming the remaining steps take as long as the finished ones did on average."""
    if done <= 0 or total <= 0:
        return None
    elapsed = (now if now is not None else time.perf_counter()) - started
    return elapsed / done * (total - done)


@dataclass
class Recorder:
    """A listener that keeps every event; handy in tests and scripts."""

    events: list = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]
