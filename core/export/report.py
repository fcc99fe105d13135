"""`sparsity.json`: what was done, how, and how well, built in one place for every front end.

The same plan on the same calibration gives the same report from the command line and the studio,
durations aside: both call `build_report`, through the workbench.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import torch

from .. import __version__
from ..formats.names import REPORT

DENSE_STORAGE = "dense: pruned weights are stored as zeros in ordinary safetensors files"


def weights_sha256(loaded) -> str | None:
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


def build_report(loaded, result=None, calib=None, ppl_dense=None, ppl=None, durations: dict | None = None,
                 zero_shot: dict | None = None) -> dict:
    """`loaded` a `LoadedModel`, `result` a `PruneResult`, `calib` a `CalibrationSet`, perplexities as
    `core.evaluation.perplexity.Perplexity` records, `zero_shot` a `ZeroShot.describe()`; any of them may be missing."""
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
        "zero_shot": zero_shot,          # per task: dense and pruned acc/acc_norm, % of dense retained
        "durations_seconds": durations or {},
        "storage": DENSE_STORAGE,
    }


def _ppl_dict(value):
    if value is None:
        return None
    return {"ppl": value.ppl, "nll": value.nll, "windows": value.windows, "seqlen": value.seqlen, "tokens": value.tokens}


def write_report(folder: Path, report: dict) -> None:
    (folder / REPORT).write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    return str(value)
