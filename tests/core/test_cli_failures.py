"""Failures of a CLI run: caught before the work where they can be, one line and nothing left where they cannot,
a bug's traceback in a log file, and Ctrl-C."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import SafetensorError

from core import workbench as wb
from core.cli import main
from core.cli.main import Interrupts
from core.errors import UserError
from core.events import BlockStarted, Job
from core.export import destination
from core.export.streaming import prune_streaming
from core.pruning.plan import PrunePlan

from tests.core.export.test_streaming import calibration, tiny_llama_folder

ROOT = Path(__file__).resolve().parents[2]


def _prune_args(model, texts, out, *extra):
    return ["prune", str(model), "--calib", str(texts), "--nsamples", "2", "--seqlen", "32", "--device", "cpu",
            "--out", str(out), *extra]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_pruning(monkeypatch):
    """Fail the test if the run gets as far as pruning."""
    def refuse(*args, **kwargs):
        raise AssertionError("pruning started although the output could not be written")
    monkeypatch.setattr(wb, "prune", refuse)


def test_an_unwritable_output_is_refused_before_the_model_is_opened(tiny_llama_folder, text_file, capsys,
                                                                     monkeypatch, no_pruning):
    monkeypatch.setattr(wb, "open_model", lambda *a, **k: pytest.fail("the model was opened"))
    assert main(_prune_args(tiny_llama_folder, text_file, "/proc/nope/out")) == 2
    assert "cannot write into /proc" in _error_line(capsys)


def test_a_disk_without_room_is_refused_before_pruning_with_the_numbers(tiny_llama_folder, text_file, tmp_path,
                                                                          capsys, monkeypatch, no_pruning):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(destination.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(usage.total, usage.total - (1 << 20), 1 << 20))
    assert main(_prune_args(tiny_llama_folder, text_file, tmp_path / "out")) == 2
    line = _error_line(capsys)
    assert "the export needs about" in line and "1.0 MiB free" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", ["oserror", "safetensors"])
def test_a_full_disk_during_the_export_is_one_line_and_leaves_nothing(tiny_llama_folder, text_file, tmp_path,
                                                                      capsys, monkeypatch, failure):
    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)           # a part written, then the disk is full
        if failure == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", full_disk)
    out = tmp_path / "exports" / "out"
    assert main(_prune_args(tiny_llama_folder, text_file, out)) == 2
    line = _error_line(capsys)
    assert "ran out of space" in line and "nothing was written" in line
    assert list((tmp_path / "exports").iterdir()) == []


def test_a_source_shard_that_vanishes_mid_stream_is_named_and_nothing_is_left(tmp_path):
    folder = tmp_path / "model"
    tiny_llama_folder(folder)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, max_shard_size="60KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 2
    doomed = shards[-1]

    def remove_a_shard(event):
        if isinstance(event, BlockStarted) and event.index == 1:
            doomed.unlink()

    out = tmp_path / "exports" / "pruned"
    with pytest.raises(UserError) as caught:
        prune_streaming(folder, calibration(), PrunePlan.build(method="wanda"), out, Job(remove_a_shard))
    message = str(caught.value)
    assert str(doomed) in message and "\n" not in message
    assert list((tmp_path / "exports").iterdir()) == []


def test_a_bug_exits_1_with_one_line_and_the_traceback_in_a_log(tiny_llama_folder, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COMPRESSION_STUDIO_LOGS", str(tmp_path / "logs"))

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(wb, "open_model", broken)
    assert main(["inspect", str(tiny_llama_folder)]) == 1
    line = _error_line(capsys)
    logs = list((tmp_path / "logs").iterdir())
    assert len(logs) == 1 and str(logs[0]) in line and "ZeroDivisionError: a bug deep inside" in line
    text = logs[0].read_text()
    assert "Traceback" in text and "in broken" in text and "inspect" in text


def test_a_second_ctrl_c_exits_at_once(monkeypatch, capsys):
    def exit_now(code):
        raise SystemExit(f"os._exit({code})")

    monkeypatch.setattr(os, "_exit", exit_now)
    handler = Interrupts()
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)
    assert "Ctrl-C again" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"os\._exit\(130\)"):
        handler(signal.SIGINT, None)


def test_ctrl_c_during_a_run_exits_130_and_leaves_nothing(tiny_llama_folder, text_file, tmp_path):
    """A real SIGINT to a real CLI process, once the blocks are being pruned."""
    out = tmp_path / "exports" / "out"
    (tmp_path / "exports").mkdir()
    command = [sys.executable, "-m", "core.cli", *_prune_args(tiny_llama_folder, text_file, out, "--method",
                                                                "sparsegpt", "--nsamples", "64", "--seqlen", "64")]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        char = process.stderr.read(1)
        seen += char
        if "blocks" in seen or not char:
            break
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=60)[1]
    assert process.returncode == 130, seen + rest
    assert "interrupted: nothing was written" in rest
    assert list((tmp_path / "exports").iterdir()) == []
