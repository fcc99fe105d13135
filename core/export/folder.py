"""Write a pruned model as an ordinary Hugging Face folder, atomically.

Everything is written into a hidden temporary folder beside the target and renamed into place at
the end, so an interrupted export never leaves a folder that looks complete. Beside the weights:
`sparsity.json` (what was done, how, and how well) and `calibration.safetensors` (the exact windows).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..data.calibration import CalibrationSet, save_calibration
from ..errors import UserError
from ..events import Job, as_job
from ..formats.names import CALIBRATION
from .report import write_report


def check_output(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output folder that exists (unless `overwrite`) or whose parent cannot be written."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: choose another folder or pass --overwrite.")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is a file, not a folder: choose another output path.")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{parent} is a file, not a folder: choose an output folder elsewhere.")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write into {parent}: choose an output folder you can write to.")
    return out


def write_export(
    loaded,
    out: str | Path,
    report: dict,
    calib: CalibrationSet | None = None,
    *,
    overwrite: bool = False,
    job: Job | None = None,
) -> Path:
    """Save model, tokenizer, generation config, `sparsity.json` and the calibration windows into `out`."""
    job = as_job(job)
    with atomic_folder(out, overwrite) as tmp:
        job.phase("export", 0, 3, "weights")
        loaded.model.save_pretrained(tmp)
        job.check()
        job.phase("export", 1, 3, "tokenizer")
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        if calib is not None:
            save_calibration(calib, tmp / CALIBRATION)
        write_report(tmp, report)
        job.check()
        job.phase("export", 2, 3, "moving into place")
    job.phase("export", 3, 3, str(Path(out).resolve()))
    return Path(out).expanduser().resolve()


@contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary folder beside `out`; on success it replaces `out`, on any failure it vanishes."""
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
