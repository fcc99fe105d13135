"""Scratch folders named by the process that made them, so that a later run can remove what a killed one left.

A name carries `PID@HOST` (with the process's start time where a lock file can hold it, since pids are reused):
a folder whose owner no longer runs on this host is garbage; one whose owner runs, or ran on another host, is
never touched. Used for partial exports (`core.export.destination`), the dense copies a one-off run keeps
(`core.pruning.stash`) and spilled calibration activations (`core.pruning.activations`).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..events import Job, as_job


@dataclass(frozen=True)
class Owner:
    """The process that made a scratch folder; `started` tells a live process from a later one with its pid."""

    pid: int
    host: str
    started: str | None = None

    @classmethod
    def this_process(cls) -> "Owner":
        return cls(os.getpid(), socket.gethostname(), process_start(os.getpid()))

    def alive(self) -> bool | None:
        """Whether the owner still runs; None when it ran on another host (then nobody can tell from here)."""
        if self.host != socket.gethostname():
            return None
        if self.pid == os.getpid():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return self.started is None or process_start(self.pid) in (None, self.started)


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname()}-"


def owner_from_name(path: Path, prefix: str) -> Owner | None:
    """The owner a folder named `prefix` + `owner_tag()` + mkdtemp's suffix names; None for any other name."""
    try:
        pid, rest = path.name[len(prefix):].split("@", 1)
        return Owner(int(pid), rest.rsplit("-", 1)[0])
    except ValueError:
        return None


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def scratch_folder(prefix: str, job: Job | None = None) -> Path:
    """A new private folder in the system's temporary folder, named by this process; what killed runs left
    under the same prefix is removed first, with a message."""
    base = Path(tempfile.gettempdir())
    clean_dead(base, prefix, job)
    return Path(tempfile.mkdtemp(prefix=prefix + owner_tag(), dir=base))


def clean_dead(base: Path, prefix: str, job: Job | None = None) -> int:
    """Remove the folders `prefix*` in `base` whose owners are gone; the bytes freed."""
    job, freed = as_job(job), 0
    for path in sorted(base.glob(prefix + "*")):
        owner = owner_from_name(path, prefix)
        if owner is None or owner.alive() is not False or not path.is_dir() or path.is_symlink():
            continue
        size = folder_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
        freed += size
        job.message(f"removed {path}, left by a killed run (process {owner.pid}): {size / 2**20:,.1f} MiB freed")
    return freed
