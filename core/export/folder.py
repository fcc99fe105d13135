"""Write a pruned model as an ordinary Hugging Face folder, atomically.

Everything is written into a hidden temporary folder beside the target and renamed into place at the end
(`core.export.destination`), so an interrupted export never leaves a folder that looks complete. Beside the
weights: `sparsity.json` (what was done, how, and how well) and `calibration.safetensors` (the exact windows).
"""

from __future__ import annotations

from pathlib import Path

from ..data.calibration import CalibrationSet, save_calibration
from ..events import Job, as_job
from ..formats.names import CALIBRATION
from .destination import atomic_folder
from .report import write_report


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
    with atomic_folder(out, overwrite, job) as tmp:
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
