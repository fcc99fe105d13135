"""Read tensors from safetensors files by name, each with one plain `read` into its own buffer.

The files are not memory-mapped (as `safetensors.safe_open` does): every page of a mapping that has
been read stays in the process's resident set until unmapped, so streaming a 2 GB model through
mappings would show a 2 GB peak RSS although only one block is ever in use. The layout read here is
the documented safetensors one: 8 bytes of header length, a JSON header, then the raw data.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from .names import CALIBRATION, INDEX


class TensorReader:
    """The tensors of a folder's safetensors weight files (the calibration windows left out), by name."""

    def __init__(self, folder: Path):
        index = folder / INDEX
        if index.is_file():
            files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
        else:
            files = sorted(p for p in folder.glob("*.safetensors") if p.name != CALIBRATION)
        if not files:
            raise UserError(f"{folder} has no .safetensors weights: streaming reads safetensors only; "
                            "prune this model in memory instead.")
        self._entries: dict[str, tuple[Path, int, int, torch.dtype, list[int]]] = {}
        for file in files:
            self._entries.update(_read_header(file))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> torch.Tensor:
        file, start, end, dtype, shape = self._entries[name]
        raw = torch.empty(end - start, dtype=torch.uint8)
        with open(file, "rb", buffering=0) as f:
            f.seek(start)
            view, done = memoryview(raw.numpy()), 0
            while done < len(view):
                count = f.readinto(view[done:])
                if not count:
                    raise UserError(f"{file.name} is truncated: {name} ends past the end of the file.")
                done += count
        return raw.view(dtype).reshape(shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._entries[name][3]

    def nbytes(self, name: str) -> int:
        _, start, end, _, _ = self._entries[name]
        return end - start


def _read_header(file: Path) -> dict:
    with open(file, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise UserError(f"{file.name} is not a valid safetensors file (its header is unreadable).") from None
    base = 8 + length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise UserError(f"{file.name}: tensor {name} has dtype {info['dtype']}, which streaming does not read.")
        start, end = info["data_offsets"]
        entries[name] = (file, base + start, base + end, SAFETENSORS_DTYPES[info["dtype"]], info["shape"])
    return entries


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}
