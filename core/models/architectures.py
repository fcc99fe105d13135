"""Where the decoder blocks and their prunable linear layers live, for each supported family.

Blocks are found generically (the longest `ModuleList` of one repeated class), so a
new family usually needs only its `model_type` added to `SUPPORTED` and a test.
GPT-2 style `Conv1D` layers store their weight transposed ([in, out]); `weight_matrix`
and `set_weight_matrix` hide that so methods always see [out_features, in_features].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError

try:  # transformers' GPT-2 style layer; absent in very old releases
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()

# model_type -> family name shown to users. Each entry has a test in tests/core/test_architectures.py.
SUPPORTED = {
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "gemma": "Gemma",
    "phi3": "Phi-3",
    "opt": "OPT",
    "gpt2": "GPT-2",
    "gpt_neox": "GPT-NeoX",
}


def is_prunable_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def weight_matrix(layer: nn.Module, raw: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's weight (or `raw`, a tensor stored like it) as [out_features, in_features]; a view, not a copy."""
    raw = layer.weight if raw is None else raw
    return raw.t() if _is_conv1d(layer) else raw


def set_weight_matrix(layer: nn.Module, value: torch.Tensor) -> None:
    """Write an [out_features, in_features] matrix back into the layer, in place."""
    target = layer.weight.data
    target.copy_(value.t() if _is_conv1d(layer) else value)


def _is_conv1d(layer: nn.Module) -> bool:
    return bool(Conv1D) and isinstance(layer, Conv1D)


@dataclass(frozen=True)
class LinearInfo:
    name: str            # name inside its block, e.g. "self_attn.q_proj"
    full_name: str       # name inside the model, e.g. "model.layers.0.self_attn.q_proj"
    out_features: int
    in_features: int

    @property
    def parameters(self) -> int:
        return self.out_features * self.in_features

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)


@dataclass(frozen=True)
class BlockInfo:
    index: int
    name: str
    linears: tuple[LinearInfo, ...]


@dataclass
class Layout:
    """The decoder blocks of a model and the prunable linear layers in each."""

    family: str
    model_class: str
    blocks_path: str          # e.g. "model.layers"
    blocks: nn.ModuleList
    inventory: tuple[BlockInfo, ...]

    def linears(self, block_index: int) -> dict[str, nn.Module]:
        block = self.blocks[block_index]
        return {info.name: block.get_submodule(info.name) for info in self.inventory[block_index].linears}

    @property
    def prunable_parameters(self) -> int:
        return sum(l.parameters for b in self.inventory for l in b.linears)


def find_layout(model: nn.Module) -> Layout:
    """Locate the decoder blocks; raise a `UserError` for families not supported yet."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    model_class = type(model).__name__
    if model_type not in SUPPORTED:
        raise UserError(
            f"not supported yet: {model_class} (model_type {model_type!r}). "
            f"Supported families: {', '.join(SUPPORTED.values())}."
        )
    path, blocks = _longest_repeated_modulelist(model)
    if blocks is None:
        raise UserError(f"not supported yet: {model_class}: no stack of decoder blocks was found in it.")
    inventory = tuple(_block_info(i, f"{path}.{i}", block) for i, block in enumerate(blocks))
    return Layout(SUPPORTED[model_type], model_class, path, blocks, inventory)


def _longest_repeated_modulelist(model: nn.Module) -> tuple[str, nn.ModuleList | None]:
    best_path, best = "", None
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        has_linears = any(is_prunable_linear(m) for m in module[0].modules())
        if len(kinds) == 1 and has_linears and (best is None or len(module) > len(best)):
            best_path, best = path, module
    return best_path, best


def _block_info(index: int, prefix: str, block: nn.Module) -> BlockInfo:
    linears = []
    for name, module in block.named_modules():
        if is_prunable_linear(module):
            out_f, in_f = weight_matrix(module).shape
            linears.append(LinearInfo(name, f"{prefix}.{name}", int(out_f), int(in_f)))
    return BlockInfo(index, prefix, tuple(linears))
