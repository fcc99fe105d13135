"""A GGUF file's header checked before a loader maps it: the magic, the version, the metadata and the
tensor table, and every tensor's data inside the file.

A loader trusts the header: a damaged or hostile file (cut short, or with a tensor table claiming more
data than there is) fails deep inside transformers with an unreadable message, after the model has been
built at full size. Here the header alone is walked, through a read-only memory map (nothing is read
but the header's pages), and every count and length is held against the bytes left before it is used,
so no claim in the file can make this allocate or loop more than the file's size allows.

Layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): magic `GGUF`, u32 version, u64 tensor
count, u64 metadata count, the metadata key/value pairs, the tensor infos (name, u32 dimension count, u64
dimensions, u32 ggml type, u64 offset into the data section), padding to `general.alignment` (32 unless
the metadata says otherwise), then the data.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from ..errors import UserError

MAGIC = b"GGUF"
VERSIONS = (2, 3)          # v1 counted in 32 bits; transformers reads v2 and v3 only
MAX_DIMS = 4               # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32

# metadata value types: fixed-size ones by struct format; 8 is a string, 9 an array
_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_NESTING = 4           # arrays of arrays: none in real files beyond one level


class _Damaged(Exception):
    """The header ends early or holds an impossible value; the message says where."""


def check_gguf_file(path: str | Path) -> None:
    """Refuse (UserError, naming the file and what is wrong) a file that is not GGUF, whose header is cut
    short or malformed, or one of whose tensors claims data past the end of the file."""
    path = Path(path)
    size = path.stat().st_size
    if size < len(MAGIC):
        raise UserError(f"{path.name} is not a GGUF file (it is {size} bytes long): pass a .gguf model or a model folder.")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as blob:
        if blob[:4] != MAGIC:
            raise UserError(f"{path.name} is not a GGUF file (it does not start with the GGUF magic bytes): "
                            "pass a .gguf model or a model folder.")
        try:
            tensors, data_start = _read_header(blob, path.name)
        except _Damaged as exc:
            raise UserError(f"{path.name} is damaged or cut short: {exc}; download or copy it again.") from None
    for name, ggml_type, elements, offset in tensors:
        start = data_start + offset
        nbytes = _byte_count(ggml_type, elements)
        end = start + (nbytes or 0)
        if end > size:
            claim = f"{nbytes:,} bytes at offset {start:,}" if nbytes is not None else f"data at offset {start:,}"
            raise UserError(f"{path.name} is damaged or cut short: tensor {name} claims {claim}, past the end of "
                            f"the file ({size:,} bytes); download or copy it again.")


def _read_header(blob: mmap.mmap, filename: str) -> tuple[list[tuple[str, int, int, int]], int]:
    """([(name, ggml type, element count, offset)], where the data section starts)."""
    reader = _Reader(blob)
    version = reader.unpack("<I", "the version")
    if version not in VERSIONS:
        raise UserError(f"{filename} is GGUF version {version}, which is not supported (only versions "
                        f"{' and '.join(map(str, VERSIONS))}): convert the model again with a current llama.cpp.")
    tensor_count = reader.unpack("<Q", "the tensor count")
    kv_count = reader.unpack("<Q", "the metadata count")
    # every pair takes at least 13 bytes (key length, type, one byte), every tensor info at least 24
    reader.need(kv_count * 13 + tensor_count * 24, f"{kv_count:,} metadata entries and {tensor_count:,} tensors")
    alignment = DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key = reader.string("a metadata key")
        value_type = reader.unpack("<I", f"the type of {key}")
        value = reader.value(value_type, key, 0)
        if key == "general.alignment":
            if not isinstance(value, int) or value <= 0 or value & (value - 1):
                raise _Damaged(f"general.alignment is {value!r}, not a power of two")
            alignment = value
    tensors = []
    for _ in range(tensor_count):
        name = reader.string("a tensor name")
        dims = reader.unpack("<I", f"the dimension count of {name}")
        if dims > MAX_DIMS:
            raise _Damaged(f"tensor {name} has {dims} dimensions (at most {MAX_DIMS})")
        elements = 1
        for _ in range(dims):
            elements *= reader.unpack("<Q", f"the shape of {name}")
        ggml_type = reader.unpack("<I", f"the type of {name}")
        offset = reader.unpack("<Q", f"the offset of {name}")
        tensors.append((name, ggml_type, elements, offset))
    data_start = (reader.pos + alignment - 1) // alignment * alignment
    return tensors, data_start


class _Reader:
    """Reads the header from a memory map, refusing every read or claim past its end."""

    def __init__(self, blob: mmap.mmap):
        self.blob, self.pos = blob, 4

    def need(self, count: int, what: str) -> None:
        if count > len(self.blob) - self.pos:
            raise _Damaged(f"{what} would need {count:,} bytes from offset {self.pos:,}, but the file ends at "
                          f"{len(self.blob):,}")

    def unpack(self, fmt: str, what: str):
        width = struct.calcsize(fmt)
        self.need(width, what)
        (value,) = struct.unpack_from(fmt, self.blob, self.pos)
        self.pos += width
        return value

    def string(self, what: str) -> str:
        length = self.unpack("<Q", what)
        self.need(length, what)
        raw = self.blob[self.pos:self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Damaged(f"{what} at offset {self.pos - length:,} is not UTF-8 text") from None

    def value(self, value_type: int, key: str, depth: int):
        if value_type in _FIXED:
            return self.unpack(_FIXED[value_type], f"the value of {key}")
        if value_type == _STRING:
            length = self.unpack("<Q", f"the value of {key}")
            self.need(length, f"the value of {key}")
            self.pos += length           # skipped, not decoded: no metadata string matters here
            return None
        if value_type == _ARRAY and depth < _MAX_NESTING:
            element_type = self.unpack("<I", f"the element type of {key}")
            count = self.unpack("<Q", f"the length of {key}")
            if element_type in _FIXED:
                width = struct.calcsize(_FIXED[element_type])
                self.need(count * width, f"the {count:,} values of {key}")
                self.pos += count * width
                return None
            self.need(count * 8, f"the {count:,} values of {key}")   # each string or array has an 8-byte length
            if element_type == _STRING:       # a vocabulary: 10^5 strings, walked without a call each
                self.pos = _skip_strings(self.blob, self.pos, count, key)
                return None
            for _ in range(count):
                self.value(element_type, key, depth + 1)
            return None
        raise _Damaged(f"metadata {key} has value type {value_type}, which GGUF does not define")


def _skip_strings(blob: mmap.mmap, pos: int, count: int, key: str) -> int:
    """The offset past `count` length-prefixed strings from `pos`."""
    end, unpack = len(blob), struct.Struct("<Q").unpack_from
    for _ in range(count):
        if pos + 8 > end:
            break
        pos += 8 + unpack(blob, pos)[0]
    else:
        if pos <= end:
            return pos
    raise _Damaged(f"the strings of {key} run past the end of the file ({end:,} bytes)")


def _byte_count(ggml_type: int, elements: int) -> int | None:
    """The bytes `elements` of a ggml type take, or None for a type this version of gguf does not know."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block_elements, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return None
    return -(-elements // block_elements) * block_bytes
