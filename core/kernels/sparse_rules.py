"""What PyTorch's 2:4 semi-structured kernels accept, as data, and the checks made before running them.

The kernels fail late and obscurely (on Turing the availability checks pass and the first matmul
fails; on Hopper CUTLASS refuses), so every case is checked here first and skipped with a reason.
Facts from FIELD-NOTES.md §3–4 and `torch.sparse.semi_structured`:

- sparse tensor cores need compute capability ≥ 8.0; PyTorch's CUTLASS kernels are built for 8.x only,
  cuSPARSELt runs on 8.0 to 12.x (Hopper since cuSPARSELt 0.6.2);
- fp16, bf16 and int8 take 2:4; fp32 only 1:2 (one of every two kept), so a 2:4 weight cannot run in fp32;
- each weight dimension must be at least, and a multiple of, the backend's minimum (rows, cols);
- the dense operand (the tokens) is padded to a multiple of a small minimum automatically, but the kernel
  still computes whole tiles: a few tokens pay for a full tile and run slower than dense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CUTLASS, CUSPARSELT = "cutlass", "cusparselt"
BACKENDS = (CUTLASS, CUSPARSELT)


@dataclass(frozen=True)
class BackendRules:
    name: str
    min_capability: tuple[int, int]
    below_capability: tuple[int, int]              # first capability the backend does NOT run on
    weight_multiple: dict                          # dtype -> (rows, cols): minimum and multiple of each dimension
    token_multiple: dict                           # dtype -> multiple the token count is padded to
    sparsity: dict                                 # dtype -> "2:4" or "1:2"


RULES = {
    CUTLASS: BackendRules(
        CUTLASS, (8, 0), (9, 0),
        {torch.int8: (16, 128), torch.float16: (32, 64), torch.bfloat16: (32, 64), torch.float32: (32, 32)},
        {torch.int8: 16, torch.float16: 8, torch.bfloat16: 8, torch.float32: 4},
        {torch.int8: "2:4", torch.float16: "2:4", torch.bfloat16: "2:4", torch.float32: "1:2"},
    ),
    CUSPARSELT: BackendRules(
        CUSPARSELT, (8, 0), (13, 0),
        {torch.int8: (32, 32), torch.float16: (16, 16), torch.bfloat16: (16, 16), torch.float32: (8, 8)},
        {torch.int8: 16, torch.float16: 8, torch.bfloat16: 8, torch.float32: 8},
        {torch.int8: "2:4", torch.float16: "2:4", torch.bfloat16: "2:4", torch.float32: "1:2"},
    ),
}

# Padding a weight costs work on every call; beyond this fraction the case is skipped instead.
MAX_PADDING = 0.25
# Below this many tokens most of the sparse kernel's tile is padding (FIELD-NOTES: 1 token ran at 0.11× dense).
MIN_TOKENS_FOR_GAIN = 64
# Below this size on either side the matmul is too small for the 2:4 saving to beat the kernel's fixed costs.
MIN_DIM_FOR_GAIN = 1024


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "int8"}.get(
        dtype, str(dtype).replace("torch.", ""))


def installed_table(backend: str) -> dict | None:
    """The installed PyTorch's own (rows, cols) table for a backend, or None when it has no such class."""
    cls = {CUTLASS: "SparseSemiStructuredTensorCUTLASS", CUSPARSELT: "SparseSemiStructuredTensorCUSPARSELT"}[backend]
    try:
        table = getattr(torch.sparse, cls)._DTYPE_SHAPE_CONSTRAINTS
    except AttributeError:
        return None
    return {dtype: (c.sparse_min_rows, c.sparse_min_cols) for dtype, c in table.items()}


def padded_shape(shape: tuple[int, int], dtype: torch.dtype, backend: str) -> tuple[int, int]:
    """The weight shape rounded up to the backend's minimum and multiple for `dtype`."""
    rows, cols = RULES[backend].weight_multiple[dtype]
    return (max(rows, math.ceil(shape[0] / rows) * rows), max(cols, math.ceil(shape[1] / cols) * cols))


def check(shape: tuple[int, int], dtype: torch.dtype, backend: str,
          capability: tuple[int, int] | None) -> tuple[bool, str]:
    """Whether a 2:4 weight of `shape` [out, in] and `dtype` can run on `backend` on a GPU of `capability`.

    Returns (ok, reason). `ok` with a non-empty reason means it runs after padding the weight;
    `capability` None means there is no CUDA device.
    """
    if backend not in RULES:
        return False, f"unknown backend {backend!r}: choose {' or '.join(BACKENDS)}"
    rules = RULES[backend]
    if capability is None:
        return False, "no CUDA device: 2:4 kernels need an NVIDIA GPU of compute capability 8.0 or newer"
    if tuple(capability) < rules.min_capability:
        return False, (f"compute capability {capability[0]}.{capability[1]} has no sparse tensor cores "
                       f"(8.0 or newer needed)")
    if tuple(capability) >= rules.below_capability:
        return False, (f"PyTorch's {backend} 2:4 kernels are not built for compute capability "
                       f"{capability[0]}.{capability[1]} (they run on {_range(rules)})")
    if dtype not in rules.weight_multiple:
        return False, f"{backend} takes fp16, bf16, int8 (and fp32 as 1:2), not {dtype_name(dtype)}"
    if rules.sparsity[dtype] != "2:4":
        return False, (f"{dtype_name(dtype)} runs only as {rules.sparsity[dtype]} sparsity on {backend}, "
                       f"not 2:4: use fp16 or bf16")
    table = installed_table(backend)
    if table is not None and dtype not in table:
        return False, f"this PyTorch ({torch.__version__}) has no {backend} kernel for {dtype_name(dtype)}"
    if len(shape) != 2 or min(shape) <= 0:
        return False, f"weight shape {tuple(shape)} is not a 2-D matrix"
    if shape[1] % 4:
        return False, f"input dimension {shape[1]} does not divide into groups of 4"
    target = padded_shape(shape, dtype, backend)
    if target == tuple(shape):
        return True, ""
    extra = target[0] * target[1] / (shape[0] * shape[1]) - 1
    rows, cols = rules.weight_multiple[dtype]
    if extra > MAX_PADDING:
        return False, (f"{shape[0]}x{shape[1]} is not a multiple of ({rows}, {cols}) for {backend} "
                       f"{dtype_name(dtype)}; padding to {target[0]}x{target[1]} would add {extra:.0%} work")
    return True, f"padded to {target[0]}x{target[1]} (+{extra:.0%} work) for {backend} {dtype_name(dtype)}"


def expected_gain(shape: tuple[int, int], tokens: int, dtype: torch.dtype, backend: str) -> tuple[bool, str]:
    """A prediction, stated with the case: whether 2:4 should beat dense here, and why not."""
    padded = math.ceil(tokens / RULES[backend].token_multiple.get(dtype, 8)) * RULES[backend].token_multiple.get(dtype, 8)
    if tokens < MIN_TOKENS_FOR_GAIN:
        return False, (f"not expected to gain: {tokens} token(s) (padded to {padded}) fill only a fraction "
                       f"of the kernel's tile, which computes the padding too")
    if min(shape) < MIN_DIM_FOR_GAIN:
        return False, (f"not expected to gain: a {shape[0]}x{shape[1]} weight is too small for the 2:4 saving "
                       f"to outweigh the sparse kernel's fixed costs")
    return True, "may gain: up to 2x on the matrix math, typically 1.1-1.4x"


def _range(rules: BackendRules) -> str:
    low, high = rules.min_capability, rules.below_capability
    if high[1] == 0 and high[0] == low[0] + 1:
        return f"{low[0]}.x only"
    return f"{low[0]}.{low[1]} up to {high[0] - 1}.x"


def device_capability(device: torch.device | str | None = None) -> tuple[int, int] | None:
    """The CUDA device's compute capability, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))


def available_backends(capability: tuple[int, int] | None) -> dict[str, str]:
    """backend -> "" when it can run here, else the reason it cannot (checked with fp16)."""
    result = {}
    for backend in BACKENDS:
        ok, reason = check((64, 128), torch.float16, backend, capability)
        if ok and backend == CUSPARSELT and not _cusparselt_present():
            ok, reason = False, "this PyTorch was built without cuSPARSELt"
        result[backend] = "" if ok else reason
    return result


def _cusparselt_present() -> bool:
    try:
        return bool(torch.backends.cusparselt.is_available())
    except AttributeError:
        return False
