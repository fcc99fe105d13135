"""Where an export goes: checked before the work, locked while it is written, cleaned up after a killed run.

Every export is written into a hidden `.NAME.partial-*` folder beside its destination and renamed into place
at the end, so a destination either does not exist or is complete. While it is written the partial folder
holds a lock file naming the process and host that own it: the next export to the same destination tells a
partial left by a killed run (removed, the bytes freed reported) from one a live run is still writing (never
touched). An export that replaces a folder first moves the old one aside to `.NAME.old-*`; a run killed
between the two renames leaves it there, and the next export puts it back.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from safetensors import SafetensorError

from ..errors import UserError
from ..events import Job, as_job
from ..formats.scratch import Owner, folder_bytes, owner_from_name, owner_tag

LOCK = ".export.lock"
UNLOCKED_GRACE_S = 60       # a leftover naming no owner (an older version's): after this long, its run is over
DISK_MARGIN = 1.02          # the estimate times this, plus the slack below, must be free
DISK_SLACK = 16 << 20


def write_lock(folder: Path) -> None:
    owner = Owner.this_process()
    (folder / LOCK).write_text(json.dumps({"pid": owner.pid, "host": owner.host, "started": owner.started,
                                           "created": time.time()}) + "\n")


def read_lock(folder: Path) -> Owner | None:
    try:
        data = json.loads((folder / LOCK).read_text())
        return Owner(int(data["pid"]), str(data["host"]), data.get("started"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def hidden_prefix(out: Path, kind: str) -> str:
    """The name of a folder an export to `out` writes (`partial`) or moves aside (`old`), less mkdtemp's suffix.
    The owner is in the name too: a lock file cannot be written before the folder exists, or into the empty
    folder an old one is renamed onto, and a run killed in between must still be recognised."""
    return f".{out.name}.{kind}-" + owner_tag()


@dataclass(frozen=True)
class Leftover:
    path: Path
    kind: str                   # "partial" (an unfinished export), "old" (the folder an export replaced), "dense"
                                # (the compact export's scratch copy)
    owner: Owner | None         # from its lock file, else from its name; None for neither (an older version's)

    def dead(self) -> bool | None:
        if self.owner is not None:
            alive = self.owner.alive()
            return None if alive is None else not alive
        try:
            age = time.time() - self.path.lstat().st_mtime
        except OSError:
            return False
        return age > UNLOCKED_GRACE_S


def leftovers(out: Path) -> list[Leftover]:
    if not out.parent.is_dir():
        return []
    found = []
    for kind in ("partial", "old", "dense"):
        prefix = f".{out.name}.{kind}-"
        for path in sorted(out.parent.glob(prefix + "*")):
            if path.is_dir() and not path.is_symlink():
                found.append(Leftover(path, kind, read_lock(path) or owner_from_name(path, prefix)))
    return found


def clean_leftovers(out: Path, job: Job | None = None) -> int:
    """Remove what killed exports to `out` left behind (a replaced folder comes back if `out` is gone); the
    bytes freed. Leftovers of live runs, or of runs on other hosts, are left alone with a message."""
    job, freed = as_job(job), 0
    for leftover in leftovers(out):
        dead = leftover.dead()
        if not dead:
            if leftover.owner is not None:
                job.message(f"{leftover.path} is being written by process {leftover.owner.pid} on "
                            f"{leftover.owner.host}: left alone", "warning")
            continue
        if leftover.kind == "old" and not out.exists():
            (leftover.path / LOCK).unlink(missing_ok=True)
            os.replace(leftover.path, out)
            job.message(f"{out} was being replaced by a run that was killed: the previous folder is back")
            continue
        size = folder_bytes(leftover.path)
        shutil.rmtree(leftover.path, ignore_errors=True)
        freed += size
        job.message(f"removed {leftover.path.name}, left by a killed export{_owner_text(leftover.owner)}: "
                    f"{size / 2**20:,.1f} MiB freed")
    return freed


def _owner_text(owner: Owner | None) -> str:
    return "" if owner is None else f" (process {owner.pid} on {owner.host})"


def check_output(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output folder that exists (unless `overwrite`), or one that cannot be created and written:
    a probe file is made and removed in the nearest folder that exists. The resolved target."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: choose another folder or pass --overwrite.")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is a file, not a folder: choose another output path.")
    base = existing_ancestor(out)
    if not base.is_dir():
        raise UserError(f"{base} is a file, not a folder: choose an output folder elsewhere.")
    probe(base)
    return out


def existing_ancestor(path: Path) -> Path:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    return parent


def probe(folder: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".compression-studio-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UserError(f"cannot write into {folder} ({exc.strerror or exc}): choose an output folder "
                        "you can write to.") from None


def check_room(out: Path, needed: int) -> None:
    """Refuse an export of about `needed` bytes where the disk holding `out` has less free."""
    free = shutil.disk_usage(existing_ancestor(out)).free
    if needed * DISK_MARGIN + DISK_SLACK > free:
        raise UserError(f"the export needs about {_size(needed)} and the disk holding {existing_ancestor(out)} "
                        f"has {_size(free)} free: free some space or choose an output folder on another disk.")


def _size(count: int) -> str:
    return f"{count / 2**30:,.2f} GiB" if count >= 2**30 else f"{count / 2**20:,.1f} MiB"


@contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False, job: Job | None = None) -> Iterator[Path]:
    """Yield a hidden, locked temporary folder beside `out`; on success it replaces `out` with the modes the
    umask gives, on any failure it vanishes (an I/O error becomes a `UserError` naming the file)."""
    out = Path(out).expanduser().resolve()
    clean_leftovers(out, job)
    out = check_output(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=hidden_prefix(out, "partial"), dir=out.parent))
        write_lock(tmp)
    except OSError as exc:
        raise io_failure(exc, out, None) from exc
    try:
        yield tmp
        apply_umask(tmp)
        _replace(tmp, out)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise io_failure(exc, out, tmp) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=hidden_prefix(out, "old"), dir=out.parent))
        os.replace(out, old)          # onto the empty folder mkdtemp made: atomic; its name says whose it is
    (tmp / LOCK).unlink()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def current_umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)           # elsewhere: the only portable read sets it, so put it straight back
    os.umask(mask)
    return mask


def apply_umask(folder: Path) -> None:
    """Folders 0777 and files 0666 less the umask, as ordinary files get: the safetensors writer makes every
    file 0600 and mkdtemp the folder 0700, which would hide a checkpoint from a serving account."""
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def io_failure(exc: BaseException, out: Path, tmp: Path | None) -> UserError:
    """One line for an I/O error during an export: which file, what went wrong, what to do."""
    code = getattr(exc, "errno", None)
    filename = getattr(exc, "filename", None)
    reason = getattr(exc, "strerror", None) or str(exc)
    if code == errno.ENOSPC or "No space left" in str(exc):
        free = shutil.disk_usage(existing_ancestor(out)).free if existing_ancestor(out).exists() else 0
        return UserError(f"the disk ran out of space while writing {filename or out} ({_size(free)} free now): "
                         "free some space or choose an output folder on another disk; nothing was written.")
    if filename is not None and tmp is not None and not _written_by_export(Path(filename), out, tmp):
        return UserError(f"reading {filename} failed during the export ({reason}): the source changed or vanished; "
                         "restore it and run again; nothing was written.")
    if code == errno.ENOENT:
        return UserError(f"{filename or out} vanished while the export was written: keep the output folder in "
                         "place during the run and try again; nothing was written.")
    return UserError(f"writing {filename or out} failed ({reason}): check the disk and the folder's permissions "
                     "and run again; nothing was written.")


def _written_by_export(path: Path, out: Path, tmp: Path) -> bool:
    path = path.resolve()
    return path in (out, tmp.resolve(), out.parent) or path.is_relative_to(tmp.resolve())
