"""Run engine jobs on a QThread and hand their events and results back to the GUI thread.

A job is any callable `fn(job) -> result`, `job` being the engine's job context (`core.events.Job`).
It runs on the worker's thread; its events travel as queued signals to `Worker`, a QObject living in
the GUI thread, whose slots call the job's callbacks there. Cancel sets the job's `CancelToken`; the
engine stops at its next check.

A job's `UserError` is a message for the user; any other exception is a bug: its traceback goes to a crash
log (`core.crashlog`) and the user reads one line naming the log (`report_bug`). Either way the job ends
as failed and the worker takes the next one.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from PySide6.QtCore import QObject, QThread, Signal, Slot

from core.crashlog import write_crash_log
from core.errors import UserError
from core.events import CancelToken, Cancelled, Job as JobContext


def report_bug(exc: BaseException, what: str, context: str) -> str:
    """Log a genuine bug's traceback and return the one line to show: what failed, the exception, the log's
    path. The traceback goes to stderr instead when no log could be written."""
    log = write_crash_log(exc, context)
    if log is None:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    lines = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    detail = next((line.strip() for line in lines if line.strip()), type(exc).__name__)
    where = f"the details are in {log}" if log is not None else \
        "no crash log could be written, so the details were printed to the terminal"
    return f"{what} failed unexpectedly: {detail}; {where}"


@dataclass
class Task:
    id: int
    name: str
    fn: Callable
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[str, bool], None] | None = None   # (message, is_user_error)
    on_event: Callable[[Any], None] | None = None
    on_cancelled: Callable[[], None] | None = None
    cancel: CancelToken = field(default_factory=CancelToken)


class _Executor(QObject):
    """Lives on the worker thread; runs one job at a time, in submission order."""

    event = Signal(int, object)
    nice: int = 0
    done = Signal(int, object)
    failed = Signal(int, str, bool)
    cancelled = Signal(int)

    @Slot()
    def lower_priority(self) -> None:
        """Run this thread, and the compute threads it starts, below the window's priority.

        The engine's math keeps every core busy; the window's paints then got a third of a core and
        the event loop stalled for 60-120 ms whenever several plots redrew at once. At a lower priority
        the engine still has every core the window does not need. Linux only (there, nice is per thread;
        the OpenMP threads torch starts from this thread inherit it)."""
        if sys.platform.startswith("linux") and self.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except OSError:
                pass

    @Slot(object)
    def run(self, job: Task) -> None:
        if job.cancel.cancelled:
            self.cancelled.emit(job.id)
            return
        try:
            result = job.fn(JobContext(lambda e: self.event.emit(job.id, e), job.cancel))
        except Cancelled:
            self.cancelled.emit(job.id)
        except UserError as exc:
            self.failed.emit(job.id, str(exc), True)
        except Exception as exc:  # a bug: logged, and one line in the window rather than lost
            self.failed.emit(job.id, report_bug(exc, job.name, f"studio job {job.name!r}"), False)
        else:
            self.done.emit(job.id, result)


class Worker(QObject):
    """One background thread for engine jobs; create it in the GUI thread."""

    _submit = Signal(object)
    busy_changed = Signal(bool)

    def __init__(self, name: str, parent: QObject | None = None, nice: int = 0):
        super().__init__(parent)
        self._ids = itertools.count(1)
        self._jobs: dict[int, Task] = {}
        self._thread = QThread()
        self._thread.setObjectName(name)
        self._executor = _Executor()
        self._executor.nice = nice
        self._executor.moveToThread(self._thread)
        self._thread.started.connect(self._executor.lower_priority)
        self._submit.connect(self._executor.run)
        self._executor.event.connect(self._on_event)
        self._executor.done.connect(self._on_done)
        self._executor.failed.connect(self._on_failed)
        self._executor.cancelled.connect(self._on_cancelled)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    def submit(self, name: str, fn: Callable, **callbacks) -> Task:
        job = Task(next(self._ids), name, fn, **callbacks)
        was_busy = self.busy
        self._jobs[job.id] = job
        if not was_busy:
            self.busy_changed.emit(True)
        self._submit.emit(job)
        return job

    def cancel_all(self) -> None:
        for job in self._jobs.values():
            job.cancel.cancel()

    def shutdown(self) -> None:
        """Cancel what is queued or running and stop the thread (blocks until the current step ends)."""
        self.cancel_all()
        self._thread.quit()
        self._thread.wait()
        self._executor.deleteLater()

    def _finish(self, job_id: int) -> Task | None:
        job = self._jobs.pop(job_id, None)
        if not self._jobs:
            self.busy_changed.emit(False)
        return job

    @Slot(int, object)
    def _on_event(self, job_id: int, event) -> None:
        job = self._jobs.get(job_id)
        if job and job.on_event:
            job.on_event(event)

    @Slot(int, object)
    def _on_done(self, job_id: int, result) -> None:
        job = self._finish(job_id)
        if job and job.on_done:
            job.on_done(result)

    @Slot(int, str, bool)
    def _on_failed(self, job_id: int, message: str, user_error: bool) -> None:
        job = self._finish(job_id)
        if job and job.on_error:
            job.on_error(message, user_error)

    @Slot(int)
    def _on_cancelled(self, job_id: int) -> None:
        job = self._finish(job_id)
        if job and job.on_cancelled:
            job.on_cancelled()
