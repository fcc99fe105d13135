"""Compact 2:4 folders: an exported dense folder rewritten with every 2:4 weight in the compact layout
(`core.formats.compact24`), and the way back to an ordinary folder that plain `transformers` loads."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..events import Job, as_job
from ..formats.compact24 import (FORMAT, POSITIONS, SUFFIX, VALUES, VERSION, is_compact, pack, packable,
                                 read_compact_file, weight_files)
from ..formats.names import COMPACT_INDEX, INDEX, REPORT
from .folder import atomic_folder, check_output, write_export


@dataclass
class CompactSummary:
    out: Path
    layers: int                 # weights stored compactly
    dense_bytes: int            # bytes of every weight file in the dense folder
    compact_bytes: int          # bytes of every weight file in the compact folder

    @property
    def ratio(self) -> float:
        return self.compact_bytes / self.dense_bytes if self.dense_bytes else 0.0


def _candidates(folder: Path) -> set[str] | None:
    """Weight names the export says were pruned (None: no report, try every 2-D tensor)."""
    report = folder / REPORT
    if not report.is_file():
        return None
    layers = (json.loads(report.read_text()).get("pruning") or {}).get("layers") or []
    return {f"{layer['name']}.weight" for layer in layers} or None


def write_compact(dense_folder: str | Path, out: str | Path, *, overwrite: bool = False,
                  job: Job | None = None) -> CompactSummary:
    """Rewrite an exported dense folder with every 2:4 weight in compact form, atomically."""
    dense_folder, job = Path(dense_folder), as_job(job)
    files = weight_files(dense_folder, compact=False)
    if not (dense_folder / "config.json").is_file() or not files:
        raise UserError(f"{dense_folder} is not an exported model folder (config.json and *.safetensors needed).")
    wanted, layers, dense_bytes, compact_bytes_total = _candidates(dense_folder), {}, 0, 0
    out = Path(out).expanduser().resolve()
    with atomic_folder(out, overwrite) as tmp:
        _copy_others(dense_folder, tmp, skip={f.name for f in files} | {INDEX, REPORT})
        for i, file in enumerate(files):
            job.phase("compact", i, len(files), file.name)
            tensors = {}
            with safe_open(str(file), "pt") as reader:
                for name in reader.keys():
                    job.check()
                    tensor = reader.get_tensor(name)
                    layout = _compact_layout(name, tensor, wanted)
                    if layout is None:
                        tensors[name] = tensor
                        continue
                    matrix = tensor.t() if layout else tensor
                    tensors[name + VALUES], tensors[name + POSITIONS] = pack(matrix)
                    layers[name] = {"shape": list(tensor.shape), "transposed": layout}
            target = tmp / (file.name[: -len(".safetensors")] + SUFFIX)
            save_file(tensors, str(target), metadata={"format": FORMAT, "version": str(VERSION),
                                                      "layers": json.dumps({k: v for k, v in layers.items()
                                                                            if k + VALUES in tensors})})
            dense_bytes += file.stat().st_size
            compact_bytes_total += target.stat().st_size
        _rename_index(dense_folder / INDEX, tmp / COMPACT_INDEX, to_compact=True)
        summary = CompactSummary(out, len(layers), dense_bytes, compact_bytes_total)
        _write_report(dense_folder, tmp, summary)
    job.phase("compact", len(files), len(files), str(out))
    return summary


def _compact_layout(name: str, tensor: torch.Tensor, wanted: set[str] | None) -> bool | None:
    """None: keep dense; False: 2:4 along the last dimension; True: along the first (GPT-2 Conv1D)."""
    if not tensor.is_floating_point() or tensor.dim() != 2 or (wanted is not None and name not in wanted):
        return None
    if packable(tensor):
        return False
    if tensor.shape[0] % 4 == 0 and packable(tensor.t()):
        return True
    return None


def _copy_others(src: Path, dst: Path, skip: set[str]) -> None:
    for item in src.iterdir():
        if item.name in skip or item.name.startswith("."):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, dst / item.name)


def _rename_index(src: Path, dst: Path, to_compact: bool) -> None:
    if not src.is_file():
        return
    index = json.loads(src.read_text())
    old, new = (".safetensors", SUFFIX) if to_compact else (SUFFIX, ".safetensors")
    index["weight_map"] = {k: v[: -len(old)] + new for k, v in index.get("weight_map", {}).items()}
    dst.write_text(json.dumps(index, indent=2) + "\n")


def _write_report(src: Path, dst: Path, summary: CompactSummary) -> None:
    report_file = src / REPORT
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    report["storage"] = {
        "format": "compact-2:4", "version": VERSION, "compact_layers": summary.layers,
        "bytes": {"dense": summary.dense_bytes, "compact": summary.compact_bytes},
        "note": ("2:4 weights stored as kept values [out, in/2] plus 2-bit positions, 4 per byte; "
                 "restore the ordinary folder with `compression-studio unpack DIR --out DIR2`"),
        "dense_storage": report.get("storage"),
    }
    (dst / REPORT).write_text(json.dumps(report, indent=2) + "\n")


def unpack_folder(compact_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                  job: Job | None = None) -> Path:
    """Write the ordinary dense Hugging Face folder a compact folder was made from, atomically."""
    compact_dir, job = Path(compact_dir), as_job(job)
    if not is_compact(compact_dir):
        raise UserError(f"{compact_dir} is not a compact 2:4 folder (no *{SUFFIX} files): nothing to unpack.")
    with atomic_folder(out_dir, overwrite) as tmp:
        files = weight_files(compact_dir, compact=True)
        _copy_others(compact_dir, tmp, skip={f.name for f in files} | {COMPACT_INDEX, REPORT})
        for file in files:
            job.check()
            state = read_compact_file(file)
            save_file(state, str(tmp / (file.name[: -len(SUFFIX)] + ".safetensors")), metadata={"format": "pt"})
        _rename_index(compact_dir / COMPACT_INDEX, tmp / INDEX, to_compact=False)
        _restore_report(compact_dir, tmp)
    out = Path(out_dir).expanduser().resolve()
    job.phase("unpack", 1, 1, str(out))
    return out


def _restore_report(src: Path, dst: Path) -> None:
    report_file = src / REPORT
    if not report_file.is_file():
        return
    report = json.loads(report_file.read_text())
    storage = report.pop("storage", None) or {}
    if storage.get("dense_storage") is not None:
        report["storage"] = storage["dense_storage"]
    (dst / REPORT).write_text(json.dumps(report, indent=2) + "\n")


def export_compact(loaded, out: str | Path, report: dict, calib=None, *, overwrite: bool = False,
                   job: Job | None = None) -> CompactSummary:
    """The ordinary export (`core.export.folder.write_export`) written to a scratch folder, then compacted into `out`."""
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.dense-", dir=out.parent))
    try:
        dense = write_export(loaded, scratch / "dense", report, calib, job=job)
        return write_compact(dense, out, overwrite=overwrite, job=job)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
