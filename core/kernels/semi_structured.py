"""2:4 weights as PyTorch's semi-structured tensors, built from compact storage where the backend allows.

CUTLASS tensors are built straight from the compact layout's values and positions (no dense weight at
all); cuSPARSELt's packed layout is opaque and only `torch._cslt_compress(dense)` makes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torch.sparse._semi_structured_conversions import _calculate_meta_reordering_scatter_offsets

from ..formats.compact24 import POSITIONS, VALUES, unpack, unpack_positions, weight_files
from . import sparse_rules as rules


def cutlass_meta(positions: torch.Tensor, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """CUTLASS's reordered metadata for a 2:4 fp16/bf16 weight, computed from our packed positions.

    Same encoding and reordering as `torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass`:
    each group's nibble is (first kept position) | (second kept position) << 2, four nibbles per int16.
    With our `values` as CUTLASS's `packed`, this is everything its kernel needs.
    """
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"CUTLASS metadata from positions is implemented for fp16/bf16, not {dtype}")
    rows = positions.shape[0]
    if rows % 32 or cols % 64:
        raise ValueError(f"CUTLASS needs rows a multiple of 32 and columns of 64, got {rows}x{cols}")
    kept = unpack_positions(positions, cols)
    meta_4 = kept[..., 0] | (kept[..., 1] << 2)
    meta_ncols = cols // 16
    meta_n = meta_4.view(-1, meta_ncols, 4).to(torch.int16)
    meta = meta_n[:, :, 0] | (meta_n[:, :, 1] << 4) | (meta_n[:, :, 2] << 8) | (meta_n[:, :, 3] << 12)
    reordered = meta.new_empty((rows * meta_ncols,))
    offsets = _calculate_meta_reordering_scatter_offsets(rows, meta_ncols, torch.int16, positions.device)
    reordered.scatter_(0, offsets, meta.view(-1))
    return reordered.view(rows, meta_ncols)


def cutlass_from_compact(values: torch.Tensor, positions: torch.Tensor, cols: int):
    """A `SparseSemiStructuredTensorCUTLASS` built from compact storage on the values' (CUDA) device.

    cuSPARSELt has no such route: its packed layout is opaque and only `torch._cslt_compress(dense)` makes it.
    """
    meta = cutlass_meta(positions, cols, values.dtype).to(values.device)
    shape = torch.Size((values.shape[0], cols))
    return torch.sparse.SparseSemiStructuredTensorCUTLASS(shape, values.contiguous(), meta, None, None, None)


def semi_structured_weights(folder: str | Path, model, device: torch.device | str,
                            backend: str = "auto") -> dict[str, str]:
    """Put 2:4 semi-structured weights from a compact folder into `model` (already on a CUDA `device`).

    CUTLASS tensors are built straight from the stored values and positions (no dense weight at all);
    cuSPARSELt's packed layout is opaque, so its tensors go through one dense weight on the device at a time.
    Returns layer name -> "" when converted, else why it stays as it is (checked by `core.sparse_rules`).
    """
    device = torch.device(device)
    capability = rules.device_capability(device) if device.type == "cuda" else None
    available = rules.available_backends(capability)
    if backend == "auto":
        backend = next((b for b in (rules.CUSPARSELT, rules.CUTLASS) if not available[b]), rules.CUSPARSELT)
    outcome = {}
    for file in weight_files(Path(folder), compact=True):
        with safe_open(str(file), "pt") as reader:
            layers = json.loads((reader.metadata() or {}).get("layers", "{}"))
            for base, info in layers.items():
                name = base.removesuffix(".weight")
                layer = model.get_submodule(name)
                ok, reason = (False, available[backend]) if available[backend] else rules.check(
                    tuple(info["shape"]), layer.weight.dtype, backend, capability)
                if type(layer) is not nn.Linear or info["transposed"]:
                    ok, reason = False, "not an nn.Linear layer"
                if not ok or reason:        # padding inside a model is not done: the layer stays dense
                    outcome[name] = reason or "needs padding"
                    continue
                values = reader.get_tensor(base + VALUES).to(device, layer.weight.dtype)
                positions = reader.get_tensor(base + POSITIONS)
                cols = info["shape"][1]
                if backend == rules.CUTLASS:
                    sparse = cutlass_from_compact(values, positions, cols)
                else:
                    sparse = torch.sparse.SparseSemiStructuredTensorCUSPARSELT.from_dense(
                        unpack(values, positions.to(device), cols))
                layer.weight = nn.Parameter(sparse, requires_grad=False)
                outcome[name] = ""
    return outcome
