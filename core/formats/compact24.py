"""The compact 2:4 layout: each 2:4 weight stored as its kept values plus packed 2-bit positions.

A weight [out, in] that keeps at most 2 of every 4 consecutive inputs is stored as
`values` [out, in/2] (same dtype; the two kept entries of each group, in order) and
`positions` uint8 [out, ceil(in/8)]: the two 2-bit positions of a group make a nibble, two groups a
byte (4 positions per byte). For fp16 that is 1/2 + 1/16 = 9/16 (56%) of the dense bytes.

Version 2 adds quantized layers, stored as their integer codes instead of float values (metadata key
`quantized`, layer -> shape, transposed, bits, group_size, symmetric, sparse, dtype). A 2:4 one keeps
`codes` of its kept entries only ([out, in/2]; int4 packed two per byte, low nibble first, int8 one
per byte) beside the same `positions`; a quantized layer that is not 2:4 keeps the codes of every
entry. Both add `scale` [out, groups] (the layer's own dtype) and, when asymmetric, `zero` int8
[out, groups]. A weight is float32(code − zero) · float32(scale) rounded to `dtype`; a pruned entry
is +0.0. With fp16 scales a 2:4 int4 layer costs 2 + 1 + 16/g bits per weight (+ 8/g asymmetric):
3.25 for g = 64, 3.125 for g = 128, against 16 dense.

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
VERSION = 2                 # 2: integer codes of quantized layers; version 1 files still read
SUFFIX = ".compact.safetensors"
VALUES, POSITIONS = "::values", "::positions"
CODES, SCALE, ZERO = "::codes", "::scale", "::zero"
PART = "::"                 # every stored part of a compact layer is named <tensor name>::<part>
CODE_BITS = (4, 8)
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}


def packable(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.shape[1] % 4 == 0 and follows_pattern(weight, TWO_FOUR)


def kept_positions(weight: torch.Tensor) -> torch.Tensor:
    """The two kept positions int64 [out, in/4, 2] (ascending) of every group of a 2:4 weight."""
    if not packable(weight):
        raise ValueError(f"weight {tuple(weight.shape)} does not follow 2:4 along its last dimension")
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // 4, 4)
    # Prefer non-zero values, then entries whose bits are non-zero (a -0.0), then the lowest position.
    bits = groups.contiguous().view(_BITS[weight.element_size()])
    score = (groups != 0).to(torch.int8) * 2 + (bits != 0).to(torch.int8)
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :2]
    return torch.sort(order, dim=-1).values


def pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 2:4 weight [out, in] into kept values [out, in/2] and packed positions uint8 [out, ceil(in/8)]."""
    kept = kept_positions(weight)
    rows, cols = weight.shape
    values = torch.gather(weight.reshape(rows, cols // 4, 4), 2, kept).reshape(rows, cols // 2)
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
    return _pair_nibbles(nibbles)


def _pair_nibbles(nibbles: torch.Tensor) -> torch.Tensor:
    """uint8 nibbles [rows, n] as bytes [rows, ceil(n/2)]: even entries in the low half, odd in the high."""
    rows, n = nibbles.shape
    if n % 2:
        nibbles = torch.cat([nibbles, torch.zeros(rows, 1, dtype=torch.uint8, device=nibbles.device)], dim=1)
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


# ---- integer codes of quantized layers (version 2) ----

def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes [rows, n] as stored: int4 two per byte (uint8 [rows, ceil(n/2)]), int8 as they are."""
    if bits not in CODE_BITS:
        raise ValueError(f"{bits}-bit codes cannot be stored (only {CODE_BITS})")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = codes.to(torch.int16)
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise ValueError(f"codes outside the int{bits} range {lo}..{hi}")
    if bits == 8:
        return codes.to(torch.int8).contiguous()
    return _pair_nibbles((codes & 0x0F).to(torch.uint8))


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The int8 codes [rows, n] from `pack_codes`'s output."""
    if bits == 8:
        return packed.to(torch.int8)
    rows = packed.shape[0]
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(rows, -1)[:, :n].to(torch.int16)
    return ((nibbles ^ 8) - 8).to(torch.int8)                           # sign-extend 4 bits


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """float32 (code − zero) · scale for codes [rows, cols], with one scale (and zero point) per `group_size` inputs."""
    cols = codes.shape[1]
    expand = lambda t: t.float().repeat_interleave(group_size, dim=1)[:, :cols]
    s = expand(scale)
    z = torch.zeros_like(s) if zero is None else expand(zero)
    return (codes.float() - z) * s


def encode_quantized(matrix: torch.Tensor, codes: torch.Tensor, bits: int, group_size: int,
                     scale: torch.Tensor, zero: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], dict]:
    """The stored parts (by suffix) and the metadata entry (less shape and transposed) of a quantized
    weight [out, in] whose int codes are `codes`; 2:4 weights keep only their kept entries' codes."""
    rows, cols = matrix.shape
    if codes.shape != matrix.shape or scale.dim() != 2 or scale.shape[0] != rows:
        raise ValueError(f"codes {tuple(codes.shape)} / scale {tuple(scale.shape)} do not fit a {rows}x{cols} weight")
    sparse = packable(matrix)
    parts = {}
    if sparse:
        kept = kept_positions(matrix)
        codes = torch.gather(codes.reshape(rows, cols // 4, 4), 2, kept).reshape(rows, cols // 2)
        parts[POSITIONS] = _pack_positions(kept)
    parts[CODES] = pack_codes(codes, bits)
    parts[SCALE] = scale.contiguous()
    if zero is not None:
        parts[ZERO] = zero.to(torch.int8).contiguous()
    info = {"bits": bits, "group_size": int(group_size), "symmetric": zero is None, "sparse": sparse,
            "dtype": str(matrix.dtype).removeprefix("torch.")}
    return parts, info


def quantized_parts(info: dict) -> tuple[str, ...]:
    """The suffixes a quantized layer's metadata entry says are stored."""
    return ((POSITIONS,) if info.get("sparse") else ()) + (CODES, SCALE) + (() if info.get("symmetric") else (ZERO,))


def decode_quantized(parts: dict[str, torch.Tensor], info: dict) -> torch.Tensor:
    """The weight [out, in] (in its stored dtype) from `encode_quantized`'s output; ValueError when they disagree."""
    bits, group, sparse, rows, cols = _quantized_geometry(info)
    n = cols // 2 if sparse else cols
    groups = -(-cols // group)
    _expect(parts[CODES], (rows, -(-n // 2)) if bits == 4 else (rows, n), torch.uint8 if bits == 4 else torch.int8, "codes")
    scale = parts[SCALE]
    if scale.dtype not in _DTYPES.values():
        raise ValueError(f"scale dtype {scale.dtype} is not a float type")
    _expect(scale, (rows, groups), scale.dtype, "scale")
    zero = None if info["symmetric"] else _expect(parts[ZERO], (rows, groups), torch.int8, "zero")
    codes = unpack_codes(parts[CODES], bits, n)
    if sparse:
        _expect(parts[POSITIONS], (rows, -(-cols // 8)), torch.uint8, "positions")
        kept = unpack_positions(parts[POSITIONS], cols)
        if zero is None:
            dense = torch.zeros(rows, cols // 4, 4, dtype=torch.int8)
        else:                          # a pruned entry's code is the zero point: it dequantizes to +0.0
            dense = zero.repeat_interleave(group, dim=1)[:, :cols].reshape(rows, cols // 4, 4).clone()
        codes = dense.scatter_(2, kept, codes.reshape(rows, cols // 4, 2)).reshape(rows, cols)
    return dequantize(codes, scale, zero, group).to(_DTYPES[info["dtype"]])


def _quantized_geometry(info: dict) -> tuple[int, int, bool, int, int]:
    bits, group, sparse = info["bits"], info["group_size"], info["sparse"]
    shape, transposed = info["shape"], info["transposed"]
    if bits not in CODE_BITS or not isinstance(group, int) or group < 1:
        raise ValueError(f"bits {bits!r} / group_size {group!r} are not valid")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise ValueError(f"shape {shape!r} is not a matrix shape")
    if info["dtype"] not in _DTYPES or not all(isinstance(info[k], bool) for k in ("symmetric", "sparse", "transposed")):
        raise ValueError(f"dtype {info['dtype']!r} or a flag is not valid")
    rows, cols = reversed(shape) if transposed else shape
    if sparse and cols % 4:
        raise ValueError(f"a 2:4 layer needs its input dimension ({cols}) a multiple of 4")
    return bits, group, sparse, rows, cols


def _expect(tensor: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype, what: str) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
        raise ValueError(f"{what} is {tensor.dtype} {tuple(tensor.shape)}, expected {dtype} {tuple(shape)}")
    return tensor


def quantized_bits_per_weight(bits: int, group_size: int, symmetric: bool = True, sparse: bool = True,
                              scale_bits: int = 16) -> float:
    """Stored bits per weight of a quantized layer (large layers: ignoring the rounding to whole bytes)."""
    per_group = scale_bits + (0 if symmetric else 8)
    return (bits / 2 + 1 if sparse else bits) + per_group / group_size


# ---- folders and files ----

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


def file_layers(meta: dict, file: Path | str = "file") -> tuple[dict, dict]:
    """(2:4 layers stored as float values, quantized layers stored as codes) from a compact file's metadata."""
    if meta.get("format") != FORMAT:
        raise UserError(f"{file} is not a compact 2:4 file written by this tool (format {meta.get('format')!r}).")
    try:
        version = int(meta.get("version", 0))
        layers = json.loads(meta.get("layers", "{}"))
        quantized = json.loads(meta.get("quantized", "{}")) if version >= 2 else {}
    except ValueError as err:
        raise UserError(f"{file}: its compact metadata is corrupted ({err}).") from err
    if version > VERSION:
        raise UserError(f"{file} uses compact format version {meta['version']}; update compression-studio to read it.")
    if version < 1 or not isinstance(layers, dict) or not isinstance(quantized, dict):
        raise UserError(f"{file}: its compact metadata is corrupted (version {meta.get('version')!r}).")
    if set(layers) & set(quantized):
        raise UserError(f"{file}: {sorted(set(layers) & set(quantized))[:3]} are listed both as float and as codes.")
    return layers, quantized


def read_compact_file(file: Path) -> dict[str, torch.Tensor]:
    """One `*.compact.safetensors` file as dense tensors (version 1 or 2)."""
    with safe_open(str(file), "pt") as reader:
        layers, quantized = file_layers(reader.metadata() or {}, file)
        names, state, claimed = list(reader.keys()), {}, set()
        for base, info in [*layers.items(), *quantized.items()]:
            try:
                suffixes = (VALUES, POSITIONS) if base in layers else quantized_parts(info)
                missing = [base + s for s in suffixes if base + s not in names]
                if missing or base in names:
                    raise ValueError(f"stored tensors missing: {missing[:3]}" if missing else "also stored dense")
                parts = {s: reader.get_tensor(base + s) for s in suffixes}
                state[base] = _float_layer(parts, info) if base in layers else _transposed(decode_quantized(parts, info), info)
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as err:
                raise UserError(f"{file}: the compact metadata of {base} does not match its stored tensors "
                                f"({type(err).__name__}: {err}); the file is corrupted or was not written by this tool.") from err
            claimed.update(base + s for s in suffixes)
        stray = [n for n in names if PART in n and n not in claimed]
        if stray:
            raise UserError(f"{file}: {stray[:3]} belong to no layer its metadata lists; the file is corrupted.")
        for name in names:
            if PART not in name:
                state[name] = reader.get_tensor(name)
    return {name: state[name] for name in sorted(state)}


def _float_layer(parts: dict[str, torch.Tensor], info: dict) -> torch.Tensor:
    shape = info["shape"]
    if not (isinstance(shape, list) and len(shape) == 2 and isinstance(info["transposed"], bool)):
        raise ValueError(f"shape {shape!r} / transposed {info['transposed']!r} are not valid")
    rows, cols = reversed(shape) if info["transposed"] else shape
    if cols % 4 or not parts[VALUES].is_floating_point():
        raise ValueError(f"values of dtype {parts[VALUES].dtype} cannot make a 2:4 {rows}x{cols} weight")
    _expect(parts[VALUES], (rows, cols // 2), parts[VALUES].dtype, "values")
    _expect(parts[POSITIONS], (rows, -(-cols // 8)), torch.uint8, "positions")
    return _transposed(unpack(parts[VALUES], parts[POSITIONS], cols), info)


def _transposed(matrix: torch.Tensor, info: dict) -> torch.Tensor:
    return matrix.t().contiguous() if info["transposed"] else matrix
