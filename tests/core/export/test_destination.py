"""Where an export goes: probed and sized before the work, locked while written, cleaned after a killed run,
and given the modes the umask gives ordinary files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import SafetensorError

from core.errors import UserError
from core.events import Job, Message, Recorder
from core.export import destination
from core.export.destination import LOCK, atomic_folder, check_output, check_room, clean_leftovers, io_failure, leftovers
from core.formats.scratch import Owner, clean_dead, owner_tag, process_start, scratch_folder


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped), so nothing runs under it."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _partial(parent: Path, name: str, owner: dict | None, kind: str = "partial", size: int = 1000,
             suffix: str = "abc123") -> Path:
    folder = parent / f".{name}.{kind}-{suffix}"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * size)
    if owner is not None:
        (folder / LOCK).write_text(json.dumps(owner))
    return folder


def _messages(recorder: Recorder) -> list[str]:
    return [e.text for e in recorder.of(Message)]


def test_an_unwritable_place_is_refused_before_anything_is_made(tmp_path):
    with pytest.raises(UserError, match=r"cannot write into /proc"):
        check_output("/proc/nope/out")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):          # root writes anywhere: the probe cannot fail there
            pytest.skip("running as root")
        with pytest.raises(UserError, match="cannot write into"):
            check_output(locked / "deeper" / "out")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_the_probe_leaves_nothing_behind(tmp_path):
    assert check_output(tmp_path / "a" / "b") == (tmp_path / "a" / "b").resolve()
    assert list(tmp_path.iterdir()) == []


def test_a_disk_without_room_is_refused_with_both_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(destination.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(8 << 30, 5 << 30,
                                                                                                 3 << 30))
    with pytest.raises(UserError, match=r"needs about 4\.00 GiB .* has 3\.00 GiB free"):
        check_room(tmp_path / "out", 4 << 30)
    check_room(tmp_path / "out", 2 << 30)


def test_a_killed_exports_partial_folder_is_removed_and_the_bytes_reported(tmp_path):
    out = tmp_path / "pruned"
    dead = _partial(tmp_path, "pruned", {"pid": _dead_pid(), "host": socket.gethostname(), "started": None},
                    size=3 << 20)
    recorder = Recorder()
    freed = clean_leftovers(out, Job(recorder))
    assert freed >= 3 << 20 and not dead.exists()
    assert any("3.0 MiB freed" in m for m in _messages(recorder))


def test_a_live_runs_partial_folder_is_never_touched(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _partial(tmp_path, "pruned", {"pid": sleeper.pid, "host": socket.gethostname(),
                                              "started": process_start(sleeper.pid)})
        other_host = _partial(tmp_path, "pruned", {"pid": 1, "host": "another-host"}, suffix="zzz")
        recorder = Recorder()
        assert clean_leftovers(tmp_path / "pruned", Job(recorder)) == 0
        assert live.exists() and other_host.exists()
        assert sum("left alone" in m for m in _messages(recorder)) == 2
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_reused_pid_does_not_keep_a_dead_runs_partial(tmp_path):
    """The lock records the process's start time: the same pid, started later, is somebody else."""
    folder = _partial(tmp_path, "pruned", {"pid": os.getppid(), "host": socket.gethostname(), "started": "1"})
    assert Owner(os.getppid(), socket.gethostname(), "1").alive() is (process_start(os.getppid()) is None)
    clean_leftovers(tmp_path / "pruned")
    assert folder.exists() == (process_start(os.getppid()) is None)


def test_an_unlocked_partial_is_left_while_young_and_removed_when_old(tmp_path):
    folder = _partial(tmp_path, "pruned", None)
    clean_leftovers(tmp_path / "pruned")
    assert folder.exists()
    old = time.time() - destination.UNLOCKED_GRACE_S - 5
    os.utime(folder, (old, old))
    clean_leftovers(tmp_path / "pruned")
    assert not folder.exists()


def test_a_folder_moved_aside_by_a_killed_replace_comes_back(tmp_path):
    out = tmp_path / "pruned"
    aside = _partial(tmp_path, "pruned", {"pid": _dead_pid(), "host": socket.gethostname()}, kind="old")
    clean_leftovers(out)
    assert out.is_dir() and not aside.exists()
    assert (out / "model.safetensors").is_file() and not (out / LOCK).exists()


def test_a_finished_export_has_no_lock_and_the_modes_of_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "out") as tmp:
            assert (tmp / LOCK).is_file()
            assert read_owner(tmp) == os.getpid()
            (tmp / "weights.bin").write_bytes(b"w")
            os.chmod(tmp / "weights.bin", 0o600)              # as the safetensors writer leaves its files
            (tmp / "sub").mkdir(mode=0o700)
            (tmp / "sub" / "f").write_text("x")
            os.chmod(tmp / "sub" / "f", 0o600)
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["sub", "weights.bin"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "weights.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "sub" / "f").stat().st_mode) == 0o644
    assert leftovers(out) == []


def read_owner(folder: Path) -> int:
    return json.loads((folder / LOCK).read_text())["pid"]


def test_replacing_a_folder_leaves_only_the_new_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device", "model.safetensors"),
                                   SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                                                   "StorageFull, message: \"No space left on device\" })")])
def test_a_full_disk_during_the_export_is_one_line_and_leaves_nothing(tmp_path, error):
    with pytest.raises(UserError, match="ran out of space") as caught:
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "part").write_bytes(b"x")
            raise error
    assert "\n" not in str(caught.value) and "nothing was written" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_read_error_in_the_source_names_the_source_file(tmp_path):
    source = tmp_path / "model" / "model-00002.safetensors"
    error = FileNotFoundError(errno.ENOENT, "No such file or directory", str(source))
    message = str(io_failure(error, tmp_path / "out", tmp_path / ".out.partial-x"))
    assert message.startswith(f"reading {source} failed") and "restore it" in message


def test_a_vanished_output_folder_says_so(tmp_path):
    tmp = tmp_path / ".out.partial-x"
    error = FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp / "config.json"))
    assert "vanished while the export was written" in str(io_failure(error, tmp_path / "out", tmp))


def test_an_unlocked_leftover_is_judged_by_the_owner_its_name_gives(tmp_path):
    """A run killed before its lock file was written (or just after an old folder was moved aside) still
    named itself in the folder's name."""
    host = socket.gethostname()
    dead = _partial(tmp_path, "pruned", None, suffix=f"{_dead_pid()}@{host}-x1")
    mine = _partial(tmp_path, "pruned", None, kind="old", suffix=f"{os.getpid()}@{host}-x2")
    (tmp_path / "pruned").mkdir()
    clean_leftovers(tmp_path / "pruned")
    assert not dead.exists() and mine.exists()


def test_scratch_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    """The dense copies and spilled activations a run keeps in the temporary folder (gigabytes for a large model)."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    prefix = "compression-studio-activations-"
    dead = tmp_path / f"{prefix}{_dead_pid()}@{socket.gethostname()}-abc"
    dead.mkdir()
    (dead / "0.safetensors").write_bytes(b"x" * (2 << 20))
    foreign = tmp_path / f"{prefix}1@another-host-abc"
    foreign.mkdir()
    unnamed = tmp_path / f"{prefix}old-style"
    unnamed.mkdir()
    recorder = Recorder()
    mine = scratch_folder(prefix, Job(recorder))
    assert mine.name.startswith(prefix + owner_tag()) and mine.is_dir()
    assert not dead.exists() and foreign.exists() and unnamed.exists()
    assert any("2.0 MiB freed" in m for m in _messages(recorder))
    assert clean_dead(tmp_path, prefix) == 0 and mine.exists()
