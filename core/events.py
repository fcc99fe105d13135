"""Typed progress events and the cancellation token shared by every long job.

A job takes `on_event` (any callable accepting an `Event`) and a `CancelToken`;
the CLI draws progress bars from the events, the studio re-emits them as Qt signals.
"""

from __future__ import annotations

import threading
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
    """One linear layer has been pruned; `result` is a `core.pipeline.LayerResult`.

    `summary` carries small, already-reduced views for display (histograms,
    heatmaps) when the job was asked for them; never full tensors.
    """

    block: int
    result: Any
    summary: Any = None


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


@dataclass
class Recorder:
    """A listener that keeps every event; handy in tests and scripts."""

    events: list = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]
