"""What each export format would weigh for the model as it stands, and what a serving GPU would hold.

Estimates without writing anything, for the studio's size chart: bytes per format from the tensors' shapes,
dtypes and the run's quantization; the KV cache from the config (layers × key/value heads × head size ×
2 for keys and values × tokens × batch), which at long contexts or large batches outweighs the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..patterns import TWO_FOUR, follows_pattern
from . import compressed_tensors, gguf


@dataclass(frozen=True)
class FormatSize:
    format: str             # "hf", "compressed-tensors", "gguf q4_0", "compact"
    bytes: int
    loads_in: str           # who reads it


def format_sizes(loaded, quantized: dict | None = None, two_four: bool = True) -> list[FormatSize]:
    """Every format this model could be written in now; `quantized`: the applied run's records; `two_four`:
    whether the run may be 2:4 (False skips the compact layout's scan of every weight)."""
    quantized = quantized or {}
    sizes = [FormatSize("hf", _dense_bytes(loaded.model), "transformers, vLLM, every runtime")]
    if quantized and compressed_tensors.available():
        sizes.append(FormatSize("compressed-tensors", compressed_tensors.compressed_bytes(loaded, quantized),
                                "vLLM, SGLang, transformers"))
    try:
        for qtype in gguf.GGUF_TYPES:
            gguf.check_gguf(loaded, qtype)
            sizes.append(FormatSize(f"gguf {qtype}", gguf.gguf_bytes(loaded, qtype), "llama.cpp, LM Studio, Ollama"))
    except Exception:           # an architecture GGUF does not cover: no bar, not an error
        pass
    compact = _compact_bytes(loaded, quantized) if two_four else None
    if compact is not None:
        sizes.append(FormatSize("compact", compact, "compression-studio (unpack for others)"))
    return sizes


GGUF_BYTES_PER_WEIGHT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}   # blocks of 32: codes plus an f16 scale


def planned_export_bytes(loaded, plan, fmt: str, gguf_type: str = "f16") -> int:
    """About the bytes an export of `plan`'s run in `fmt` will take, before the run (so no quantization
    records yet): for the disk check made before any work. Errs on the large side: the smallest group (32)."""
    dense = _dense_bytes(loaded.model)
    linears = loaded.layout.prunable_parameters
    element = next(loaded.model.parameters()).element_size()
    rest = max(dense - linears * element, 0)
    bits = plan.quantization.bits if plan.quantizing else None
    if fmt == "gguf":
        return int(dense / element * GGUF_BYTES_PER_WEIGHT[gguf_type])
    if fmt == "compressed-tensors":
        return int(rest + linears * (bits / 8 + 2 * 2 / 32))
    if fmt == "compact":
        kept = (bits / 8 + 2 * 2 / 32) if bits else element
        return int(rest + linears * (kept / 2 + 1 / 8))
    return dense


def _dense_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())   # parameters() yields tied weights once


def _compact_bytes(loaded, quantized: dict) -> int | None:
    """The compact 2:4 layout's bytes, or None when no linear layer is 2:4."""
    total, packed = _dense_bytes(loaded.model), 0
    for block in loaded.layout.inventory:
        for info in block.linears:
            weight = loaded.model.get_submodule(info.full_name).weight
            if info.in_features % 4 or not follows_pattern(weight.detach(), TWO_FOUR):
                continue
            packed += 1
            rows, cols = info.shape
            record = quantized.get(info.full_name)
            values = rows * cols // 2 * (record.bits / 8 if record else weight.element_size())
            scales = 0 if record is None else record.scale.numel() * record.scale.element_size() * \
                (1 if record.zero is None else 1.25)
            total += int(values + rows * ((cols + 7) // 8) + scales) - weight.numel() * weight.element_size()
    return total if packed else None


def kv_cache_bytes(config, batch: int, context: int, dtype: torch.dtype = torch.float16) -> int:
    """Keys and values of every layer for `batch` sequences of `context` tokens."""
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers = config.num_hidden_layers
    return 2 * layers * kv_heads * head_dim * context * batch * torch.empty((), dtype=dtype).element_size()
