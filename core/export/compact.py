"""Compact 2:4 folders: an exported dense folder rewritten with every 2:4 weight in the compact layout
(`core.formats.compact24`), and the way back to an ordinary folder that plain `transformers` loads.

Given the run's quantization records (full module name -> `QuantizedLayer`), a quantized weight is
stored as its integer codes instead: only the kept ones (beside the 2:4 positions) when it is 2:4, every
one otherwise, plus its group scales and zero points. Codes are only stored when they give the exported
weight back bit for bit; a record that does not is left as float and named in the summary."""

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
from ..formats.compact24 import (FORMAT, POSITIONS, SUFFIX, VALUES, VERSION, decode_quantized, encode_quantized,
                                 is_compact, pack, packable, read_compact_file, weight_files)
from ..formats.names import COMPACT_INDEX, INDEX, REPORT
from .destination import atomic_folder, check_output, hidden_prefix
from .folder import write_export


@dataclass
class CompactSummary:
    out: Path
    layers: int                 # weights stored compactly
    dense_bytes: int            # bytes of every weight file in the dense folder
    compact_bytes: int          # bytes of every weight file in the compact folder
    quantized_layers: int = 0   # weights stored as integer codes (2:4 or not)
    quantized_weights: int = 0  # entries of those weights (pruned ones included)
    quantized_bytes: int = 0    # bytes of their stored parts: codes, positions, scales, zero points
    kept_float: tuple[str, ...] = ()   # records whose weight stayed float (absent, e.g. tied, or codes not exact)

    @property
    def ratio(self) -> float:
        return self.compact_bytes / self.dense_bytes if self.dense_bytes else 0.0

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight of the quantized layers (0 when there are none)."""
        return 8 * self.quantized_bytes / self.quantized_weights if self.quantized_weights else 0.0


def _candidates(folder: Path) -> set[str] | None:
    """Weight names the export says were pruned (None: no report, try every 2-D tensor)."""
    report = folder / REPORT
    if not report.is_file():
        return None
    layers = (json.loads(report.read_text()).get("pruning") or {}).get("layers") or []
    return {f"{layer['name']}.weight" for layer in layers} or None


def write_compact(dense_folder: str | Path, out: str | Path, *, overwrite: bool = False,
                  job: Job | None = None, quantized: dict | None = None) -> CompactSummary:
    """Rewrite an exported dense folder with every 2:4 weight in compact form, atomically; the weights of
    `quantized` (full module name -> `QuantizedLayer`) as their integer codes."""
    dense_folder, job = Path(dense_folder), as_job(job)
    files = weight_files(dense_folder, compact=False)
    if not (dense_folder / "config.json").is_file() or not files:
        raise UserError(f"{dense_folder} is not an exported model folder (config.json and *.safetensors needed).")
    records = {f"{name}.weight": record for name, record in (quantized or {}).items()}
    wanted, totals, used = _candidates(dense_folder), CompactSummary(Path(out), 0, 0, 0), set()
    out = Path(out).expanduser().resolve()
    with atomic_folder(out, overwrite, job) as tmp:
        _copy_others(dense_folder, tmp, skip={f.name for f in files} | {INDEX, REPORT})
        for i, file in enumerate(files):
            job.phase("compact", i, len(files), file.name)
            tensors, layers, coded = {}, {}, {}
            with safe_open(str(file), "pt") as reader:
                for name in reader.keys():
                    job.check()
                    tensor = reader.get_tensor(name)
                    stored = _as_codes(tensor, records[name]) if name in records else None
                    if stored is not None:
                        parts, coded[name] = stored
                        tensors.update({name + suffix: part for suffix, part in parts.items()})
                        used.add(name)
                        totals.layers += coded[name]["sparse"]
                        totals.quantized_layers += 1
                        totals.quantized_weights += tensor.numel()
                        totals.quantized_bytes += sum(p.numel() * p.element_size() for p in parts.values())
                        continue
                    layout = _compact_layout(name, tensor, wanted)
                    if layout is None:
                        tensors[name] = tensor
                        continue
                    matrix = tensor.t() if layout else tensor
                    tensors[name + VALUES], tensors[name + POSITIONS] = pack(matrix)
                    layers[name] = {"shape": list(tensor.shape), "transposed": layout}
                    totals.layers += 1
            target = tmp / (file.name[: -len(".safetensors")] + SUFFIX)
            save_file(tensors, str(target), metadata={"format": FORMAT, "version": str(VERSION),
                                                      "layers": json.dumps(layers), "quantized": json.dumps(coded)})
            totals.dense_bytes += file.stat().st_size
            totals.compact_bytes += target.stat().st_size
        _rename_index(dense_folder / INDEX, tmp / COMPACT_INDEX, to_compact=True)
        totals.out, totals.kept_float = out, tuple(sorted(n[: -len(".weight")] for n in set(records) - used))
        _write_report(dense_folder, tmp, totals)
    job.phase("compact", len(files), len(files), str(out))
    return totals


def _as_codes(tensor: torch.Tensor, record) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The stored parts and metadata entry of a quantized weight, or None when its codes do not give it back exactly.

    The record is [out, in]; a GPT-2 Conv1D stores [in, out], so both readings are tried (a square
    weight too): the one whose codes reproduce the stored bits is the one kept.
    """
    if not tensor.is_floating_point() or tensor.dim() != 2:
        return None
    for transposed in (False, True):
        matrix = tensor.t() if transposed else tensor
        if matrix.shape[0] != record.scale.shape[0] or record.scale.shape[1] != -(-matrix.shape[1] // record.group_size):
            continue
        try:
            parts, info = encode_quantized(matrix, record.codes(matrix), record.bits, record.group_size,
                                           record.scale, None if record.symmetric else record.zero)
            info.update(shape=list(tensor.shape), transposed=transposed)
            back = decode_quantized(parts, info)
        except ValueError:
            continue
        if _same_bits(back, matrix):
            return parts, info
    return None


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    as_int = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


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
    note = "2:4 weights stored as kept values [out, in/2] plus 2-bit positions, 4 per byte"
    if summary.quantized_layers:
        note += (f"; {summary.quantized_layers} quantized weights stored as integer codes (int4 two per byte, "
                 "int8 one per byte; of a 2:4 weight only its kept codes [out, in/2] beside the same positions) "
                 f"plus group scales and, when asymmetric, int8 zero points: {summary.bits_per_weight:.3f} bits "
                 "per weight, dequantized to the stored dtype bit for bit on unpacking")
    report["storage"] = {
        "format": "compact-2:4", "version": VERSION, "compact_layers": summary.layers,
        "quantized_layers": summary.quantized_layers,
        "bytes": {"dense": summary.dense_bytes, "compact": summary.compact_bytes,
                  "quantized_layers": summary.quantized_bytes},
        "quantized_bits_per_weight": round(summary.bits_per_weight, 4),
        "quantized_kept_float": list(summary.kept_float),
        "note": note + "; restore the ordinary folder with `compression-studio unpack DIR --out DIR2`",
        "dense_storage": report.get("storage"),
    }
    (dst / REPORT).write_text(json.dumps(report, indent=2) + "\n")


def unpack_folder(compact_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                  job: Job | None = None) -> Path:
    """Write the ordinary dense Hugging Face folder a compact folder was made from, atomically."""
    compact_dir, job = Path(compact_dir), as_job(job)
    if not is_compact(compact_dir):
        raise UserError(f"{compact_dir} is not a compact 2:4 folder (no *{SUFFIX} files): nothing to unpack.")
    with atomic_folder(out_dir, overwrite, job) as tmp:
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
                   job: Job | None = None, quantized: dict | None = None) -> CompactSummary:
    """The ordinary export (`core.export.folder.write_export`) written to a scratch folder, then compacted into `out`
    (`quantized`: the run's records, full module name -> `QuantizedLayer`, stored as integer codes)."""
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=hidden_prefix(out, "dense"), dir=out.parent))
    try:
        dense = write_export(loaded, scratch / "dense", report, calib, job=job)
        return write_compact(dense, out, overwrite=overwrite, job=job, quantized=quantized)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
