"""The compact 2:4 layout: each 2:4 weight stored as its kept values plus packed 2-bit positions.

A weight [out, in] that keeps at most 2 of every 4 consecutive inputs is stored as
`values` [out, in/2] (same dtype; the two kept entries of each group, in order) and
`positions` uint8 [out, ceil(in/8)]: the two 2-bit positions of a group make a nibble, two groups a
byte (4 positions per byte). For fp16 that is 1/2 + 1/16 = 9/16 (56%) of the dense bytes.

A compact folder is a Hugging Face export whose weight files are renamed `*.compact.safetensors`, so
plain `transformers` refuses it loudly (no weights found) instead of loading garbage. Kept values come
back bit for bit; a pruned entry comes back as +0.0 (a stored -0.0 loses its sign). Writing whole
folders is `core.export.compact`; opening one as a model is `core.models.compact`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import UserError
from ..events import Job, as_job
from ..patterns import TWO_FOUR, follows_pattern
from .names import CALIBRATION

FORMAT = "compression-studio/compact-2:4"
VERSION = 1
SUFFIX = ".compact.safetensors"
VALUES, POSITIONS = "::values", "::positions"
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def packable(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.shape[1] % 4 == 0 and follows_pattern(weight, TWO_FOUR)


def pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 2:4 weight [out, in] into kept values [out, in/2] and packed positions uint8 [out, ceil(in/8)]."""
    if not packable(weight):
        raise ValueError(f"weight {tuple(weight.shape)} does not follow 2:4 along its last dimension")
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // 4, 4)
    # Prefer non-zero values, then entries whose bits are non-zero (a -0.0), then the lowest position.
    bits = groups.contiguous().view(_BITS[weight.element_size()])
    score = (groups != 0).to(torch.int8) * 2 + (bits != 0).to(torch.int8)
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :2]
    kept = torch.sort(order, dim=-1).values                              # [rows, groups, 2], p0 < p1
    values = torch.gather(groups, 2, kept).reshape(rows, cols // 2)
    return values.contiguous(), _pack_positions(kept)


def unpack(values: torch.Tensor, positions: torch.Tensor, cols: int) -> torch.Tensor:
    """The dense weight [out, cols] from `pack`'s output."""
    rows = values.shape[0]
    kept = unpack_positions(positions, cols)
    dense = torch.zeros(rows, cols // 4, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(2, kept, values.reshape(rows, cols // 4, 2))
    return dense.reshape(rows, cols)


def _pack_positions(kept: torch.Tensor) -> torch.Tensor:
    rows, groups, _ = kept.shape
    nibbles = (kept[..., 0] | (kept[..., 1] << 2)).to(torch.uint8)      # [rows, groups]
    if groups % 2:
        nibbles = torch.cat([nibbles, torch.zeros(rows, 1, dtype=torch.uint8, device=kept.device)], dim=1)
    pairs = nibbles.reshape(rows, -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()


def unpack_positions(positions: torch.Tensor, cols: int) -> torch.Tensor:
    """Kept positions int64 [out, cols/4, 2] (ascending within each group) from the packed bytes."""
    rows = positions.shape[0]
    nibbles = torch.stack([positions & 0x0F, positions >> 4], dim=-1).reshape(rows, -1)[:, : cols // 4].long()
    return torch.stack([nibbles & 0b11, nibbles >> 2], dim=-1)


def compact_bytes(shape: tuple[int, int], dtype: torch.dtype) -> int:
    rows, cols = shape
    return rows * (cols // 2) * torch.empty(0, dtype=dtype).element_size() + rows * ((cols + 7) // 8)


def is_compact(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any(folder.glob(f"*{SUFFIX}"))


def weight_files(folder: Path, compact: bool) -> list[Path]:
    """The folder's weight files: the compact ones, or the ordinary ones (calibration windows left out)."""
    if compact:
        return sorted(folder.glob(f"*{SUFFIX}"))
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.endswith(SUFFIX) and p.name != CALIBRATION)


def load_state(folder: str | Path, job: Job | None = None) -> dict[str, torch.Tensor]:
    """Every weight of a compact folder, dense again, by the names `save_pretrained` wrote."""
    job = as_job(job)
    files, state = weight_files(Path(folder), compact=True), {}
    for i, file in enumerate(files):
        job.check()
        job.phase("unpack", i, len(files), file.name)
        state.update(read_compact_file(file))
    job.phase("unpack", len(files), len(files), str(folder))
    return state


def read_compact_file(file: Path) -> dict[str, torch.Tensor]:
    """One `*.compact.safetensors` file as dense tensors."""
    with safe_open(str(file), "pt") as reader:
        meta = reader.metadata() or {}
        if meta.get("format") != FORMAT:
            raise UserError(f"{file} is not a compact 2:4 file written by this tool (format {meta.get('format')!r}).")
        if int(meta.get("version", 0)) > VERSION:
            raise UserError(f"{file} uses compact format version {meta['version']}; update compression-studio to read it.")
        layers, state = json.loads(meta.get("layers", "{}")), {}
        for name in reader.keys():
            if name.endswith(POSITIONS):
                continue
            if not name.endswith(VALUES):
                state[name] = reader.get_tensor(name)
                continue
            base = name[: -len(VALUES)]
            info = layers[base]
            cols = info["shape"][0] if info["transposed"] else info["shape"][1]
            dense = unpack(reader.get_tensor(name), reader.get_tensor(base + POSITIONS), cols)
            state[base] = dense.t().contiguous() if info["transposed"] else dense
    return state
