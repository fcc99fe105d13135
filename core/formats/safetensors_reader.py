"""Read tensors from safetensors files by name, each with one plain `read` into its own buffer.

The files are not memory-mapped (as `safetensors.safe_open` does): every page of a mapping that has
been read stays in the process's resident set until unmapped, so streaming a 2 GB model through
mappings would show a 2 GB peak RSS although only one block is ever in use. The layout read here is
the documented safetensors one: 8 bytes of header length, a JSON header, then the raw data.

`check_safetensors_file` holds a header against the file before anything trusts it (here, or
transformers through `safetensors`): a length field or a tensor's offsets past the end of the file, or a
tensor whose shape and dtype do not fill its byte range, is refused naming the file and the tensor,
before any buffer is allocated from a claimed size.
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
            files = _indexed_files(index)
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


def _indexed_files(index: Path) -> list[Path]:
    """The weight files `model.safetensors.index.json` names, each checked to be a file in the folder."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = set(weight_map.values())
        if not all(isinstance(n, str) for n in names):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{index.name} is not a valid shard index (it needs a \"weight_map\" of tensor names to "
                        "file names): fix it or delete it.") from None
    files = sorted(index.parent / n for n in names)
    for file in files:
        if file.parent != index.parent or not file.is_file():
            raise UserError(f"{index.name} names {file.name}, which is not a file in {index.parent}: "
                            "copy the missing shard or fix the index.")
    return files


def check_safetensors_file(file: str | Path) -> dict[str, tuple[str, list[int], int, int]]:
    """`{tensor name: (dtype, shape, begin, end)}` of a safetensors file, offsets from the file's start,
    after checking the header against the file's size; UserError naming the file (and tensor) otherwise."""
    file = Path(file)
    size = file.stat().st_size
    if size < 8:
        raise UserError(f"{file.name} is not a valid safetensors file: it is {size} bytes long; copy it again.")
    with open(file, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise UserError(f"{file.name} is damaged or not a safetensors file: its header claims {length:,} bytes "
                            f"but the file has {size:,}; copy it again.")
        try:
            header = json.loads(f.read(length))
        except ValueError:      # JSON and UTF-8 errors alike
            header = None
    if not isinstance(header, dict):
        raise UserError(f"{file.name} is not a valid safetensors file (its header is unreadable); copy it again.")
    base, entries = 8 + length, {}
    for name, info in header.items():
        if name != "__metadata__":
            dtype, shape, begin, end = _tensor_info(file.name, name, info, size - base)
            entries[name] = (dtype, shape, base + begin, base + end)
    return entries


def _tensor_info(filename: str, name: str, info, data_bytes: int) -> tuple[str, list[int], int, int]:
    """One header entry, checked: its offsets inside the data region, its byte range the size of its shape."""
    where = f"{filename}: tensor {name}"
    try:
        dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise UserError(f"{where} has no valid dtype, shape and data_offsets: the file is damaged; copy it again.") from None
    numbers = [*shape, begin, end]
    if not isinstance(dtype, str) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise UserError(f"{where} has an invalid dtype, shape or data_offsets: the file is damaged; copy it again.")
    if not begin <= end <= data_bytes:
        raise UserError(f"{where} claims bytes {begin:,} to {end:,} of a data region of {data_bytes:,} bytes: "
                        "the file is damaged or cut short; copy it again.")
    elements = 1
    for n in shape:
        elements *= n
    if dtype in DTYPE_BITS and (elements * DTYPE_BITS[dtype] + 7) // 8 != end - begin:
        raise UserError(f"{where} has shape {shape} of {dtype} ({(elements * DTYPE_BITS[dtype] + 7) // 8:,} bytes) "
                        f"but {end - begin:,} bytes of data: the file is damaged; copy it again.")
    return dtype, shape, begin, end


def _read_header(file: Path) -> dict:
    entries = {}
    for name, (dtype, shape, start, end) in check_safetensors_file(file).items():
        if dtype not in SAFETENSORS_DTYPES:
            raise UserError(f"{file.name}: tensor {name} has dtype {dtype}, which streaming does not read.")
        entries[name] = (file, start, end, SAFETENSORS_DTYPES[dtype], shape)
    return entries


MAX_HEADER_BYTES = 100_000_000      # what the safetensors library itself accepts

DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
              "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
              "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
"""Bits per element of every dtype the safetensors format defines; another is checked for its range only."""

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}
