"""The blocks of a loaded model as a block source of `core.pruning.pipeline`: pruned in place, each
visiting the compute device (and compute dtype) for its turn, every change undone on cancel."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..models.architectures import set_weight_matrix, weight_matrix
from ..models.loaded import LoadedModel
from .capture import move_outside_blocks
from .stash import WeightStash


class InMemoryBlocks:
    """The blocks of a loaded model, pruned in place: each visits the compute device (and compute dtype) for its turn.

    The weights before the run, for the error probe and for a cancel, come from `dense` (full name ->
    [out, in] matrix) where the caller already holds them (the studio's snapshot), else from a stash
    on disk (`core.stash`): a copy in memory would cost as much as the linear layers themselves.
    """

    restores = True

    def __init__(self, loaded: LoadedModel, dense: Mapping[str, torch.Tensor] | None = None):
        self.model, self.layout = loaded.model, loaded.layout
        self.home = next(self.model.parameters()).device
        self.storage_dtype = next(self.layout.blocks.parameters()).dtype
        self._dtypes: dict[int, dict[str, torch.dtype]] = {}
        self._dense = dense or {}
        self._changed: dict[str, nn.Module] = {}
        self._stash = WeightStash()

    def remember(self, full_name, layer):
        self._changed[full_name] = layer
        given = self._dense.get(full_name)
        if given is None or tuple(given.shape) != tuple(weight_matrix(layer).shape):
            self._stash.put(full_name, layer.weight.detach().to("cpu", self.storage_dtype))

    def dense_matrix(self, full_name, layer):
        if full_name in self._stash:
            return weight_matrix(layer, self._stash.get(full_name))
        return self._dense[full_name]

    def restore(self):
        with torch.no_grad():
            for name, layer in self._changed.items():
                set_weight_matrix(layer, self.dense_matrix(name, layer).to(layer.weight.device, layer.weight.dtype))

    def prepare(self, device):
        move_outside_blocks(self.model, self.layout.blocks, device)

    def release_outside(self):
        move_outside_blocks(self.model, self.layout.blocks, self.home)

    def load(self, index, device, dtype):
        block = self.layout.blocks[index]
        self._dtypes.setdefault(index, {n: p.dtype for n, p in block.named_parameters()})
        _place(block, device, lambda name, p: dtype if p.is_floating_point() else p.dtype)
        return block

    def unload(self, index, block):
        dtypes = self._dtypes.pop(index, None)
        if dtypes is not None:
            _place(block, self.home, lambda name, p: dtypes[name])

    def close(self):
        for index in list(self._dtypes):
            self.unload(index, self.layout.blocks[index])
        for block in self.layout.blocks:
            block.to(self.home)
        move_outside_blocks(self.model, self.layout.blocks, self.home)
        self._stash.close()


def _place(block: nn.Module, device, dtype_of) -> None:
    with torch.no_grad():
        for name, param in block.named_parameters():
            param.data = param.data.to(device, dtype_of(name, param))
        for module in block.modules():
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None:
                    module._buffers[name] = buf.to(device)
