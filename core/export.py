"""Write a pruned model as an ordinary Hugging Face folder, atomically.

Everything is written into a hidden temporary folder beside the target and renamed into place at
the end, so an interrupted export never leaves a folder that looks complete. Beside the weights:
`sparsity.json` (what was done, how, and how well) and `calibration.safetensors` (the exact windows).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from . import __version__
from .calibration import CalibrationSet, save_calibration
from .errors import UserError
from .events import EventSink, Phase, ignore
from .models import LoadedModel

REPORT = "sparsity.json"
CALIBRATION = "calibration.safetensors"


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


def weights_sha256(loaded: LoadedModel) -> str | None:
    """One digest over the source's weight files (sorted by name), or of the .gguf file."""
    if loaded.path is None:
        return None
    files = [loaded.path] if loaded.path.is_file() else sorted(
        p for p in loaded.path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def build_report(loaded: LoadedModel, result=None, calib: CalibrationSet | None = None,
                 ppl_dense=None, ppl=None, durations: dict | None = None) -> dict:
    import transformers

    dtype = next(loaded.model.parameters()).dtype
    return {
        "tool": {"name": "compression-studio", "version": __version__},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "source": {"model": loaded.source, "kind": loaded.kind, "path": str(loaded.path) if loaded.path else None,
                   "family": loaded.layout.family, "model_class": loaded.layout.model_class,
                   "weights_sha256": weights_sha256(loaded)},
        "dtype": str(dtype).replace("torch.", ""),
        "pruning": result.describe() if result is not None else None,
        "calibration": calib.describe() if calib is not None else None,
        "perplexity": {"dense": _ppl_dict(ppl_dense), "pruned": _ppl_dict(ppl)},
        "durations_seconds": durations or {},
        "storage": "dense: pruned weights are stored as zeros in ordinary safetensors files",
    }


def _ppl_dict(value):
    if value is None:
        return None
    return {"ppl": value.ppl, "nll": value.nll, "windows": value.windows, "seqlen": value.seqlen, "tokens": value.tokens}


def write_export(
    loaded: LoadedModel,
    out: str | Path,
    report: dict,
    calib: CalibrationSet | None = None,
    *,
    overwrite: bool = False,
    on_event: EventSink = ignore,
) -> Path:
    """Save model, tokenizer, generation config, `sparsity.json` and the calibration windows into `out`."""
    with atomic_folder(out, overwrite) as tmp:
        on_event(Phase("export", 0, 3, "weights"))
        loaded.model.save_pretrained(tmp)
        on_event(Phase("export", 1, 3, "tokenizer"))
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        if calib is not None:
            save_calibration(calib, tmp / CALIBRATION)
        write_report(tmp, report)
        on_event(Phase("export", 2, 3, "moving into place"))
    on_event(Phase("export", 3, 3, str(Path(out).resolve())))
    return Path(out).expanduser().resolve()


def write_report(folder: Path, report: dict) -> None:
    (folder / REPORT).write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")


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


def _jsonable(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    return str(value)
