"""The dense weights of a model kept in memory, so that each of many runs starts from the same model.

The studio prunes one model in memory again and again: it takes a snapshot before its first run and
restores it before every later one (and around a dense evaluation). A one-off run keeps its copies on
disk instead (`core.pruning.stash`).
"""

from __future__ import annotations

import torch

from ..models.architectures import set_weight_matrix, weight_matrix
from ..models.loaded import LoadedModel


class WeightSnapshot:
    """A CPU copy of every prunable weight ([out, in] matrices by full layer name)."""

    def __init__(self, loaded: LoadedModel):
        self.weights = {info.full_name: weight_matrix(loaded.model.get_submodule(info.full_name)).detach().to("cpu", copy=True)
                        for block in loaded.layout.inventory for info in block.linears}

    def restore(self, loaded: LoadedModel) -> None:
        with torch.no_grad():
            for name, weight in self.weights.items():
                layer = loaded.model.get_submodule(name)
                set_weight_matrix(layer, weight.to(layer.weight.device, layer.weight.dtype))
