"""Kill an exporting process with SIGKILL at random moments: afterwards the destination either does not exist or is a
complete folder that plain transformers loads with the expected logits, never anything else; and the next export
to it removes what the killed one left behind.

Each moment is a process of its own, forked from a multiprocessing forkserver that has imported torch and
transformers once (a fresh interpreter per moment would spend most of the test importing)."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.export.destination import leftovers

MOMENTS = 20
PRELOAD = ["torch", "transformers", "transformers.models.llama.modeling_llama", "core.export.folder",
           "core.models.open"]


def export_once(model: str, out: str, ready) -> None:
    """The child: open the model, say so, export it (replacing `out` when it exists)."""
    from core.export.folder import write_export
    from core.models.open import open_model

    loaded = open_model(model)
    ready.send("ready")
    write_export(loaded, out, {"note": "fault injection"}, overwrite=True)
    ready.send("done")


@pytest.fixture(scope="module")
def forkserver():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _start(context, model: Path, out: Path):
    receive, send = context.Pipe(duplex=False)      # a pipe, not an Event: a killed child leaks no semaphore
    process = context.Process(target=export_once, args=(str(model), str(out), send), daemon=True)
    process.start()
    send.close()
    assert receive.poll(120) and receive.recv() == "ready", "the child never opened the model"
    return process, receive


def _logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits


def _assert_absent_or_complete(out: Path, expected: torch.Tensor, ids: torch.Tensor, moment: float) -> str:
    if not out.exists():
        return "absent"
    assert torch.equal(_logits(out, ids), expected), f"killed at {moment * 1000:.1f} ms: a folder that is not whole"
    return "complete"


def test_sigkill_at_random_moments_leaves_nothing_or_a_whole_folder(tiny_llama_folder, tmp_path, forkserver):
    ids = torch.arange(2, 34).unsqueeze(0)
    expected = _logits(tiny_llama_folder, ids)
    out = tmp_path / "exports" / "pruned"
    out.parent.mkdir()
    whole, said = _start(forkserver, tiny_llama_folder, out)
    started = time.monotonic()
    assert said.poll(60) and said.recv() == "done"
    duration = time.monotonic() - started          # the export alone, from the model being open to its end
    whole.join(60)
    assert whole.exitcode == 0 and _assert_absent_or_complete(out, expected, ids, 0) == "complete"

    rng = random.Random(0)
    seen = []
    while sum(code == -signal.SIGKILL for code, _ in seen) < MOMENTS and len(seen) < 3 * MOMENTS:
        if len(seen) % 2:                       # half the moments replace a folder, half write a new one
            _remove(out)
        process, _ = _start(forkserver, tiny_llama_folder, out)
        moment = rng.uniform(0, duration)
        time.sleep(moment)
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:              # it had finished already: that moment does not count
            pass
        process.join(30)
        seen.append((process.exitcode, _assert_absent_or_complete(out, expected, ids, moment)))
    print(f"export {duration * 1000:.0f} ms; outcomes {seen}")
    assert sum(code == -signal.SIGKILL for code, _ in seen) == MOMENTS, f"too few kills landed: {seen}"

    last, _ = _start(forkserver, tiny_llama_folder, out)
    last.join(60)
    assert last.exitcode == 0
    assert _assert_absent_or_complete(out, expected, ids, 0) == "complete"
    assert leftovers(out) == [], "the next export did not clean up after the killed ones"
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned"]


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
