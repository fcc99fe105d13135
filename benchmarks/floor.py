"""The floor a pruning run is measured against: two plain forward passes of the calibration windows through
every decoder block, batched as `prune` batches them (one where statistics would be gathered, one where
the block's outputs are propagated). No hooks, no solves: what the block loop cannot go below."""

from __future__ import annotations

import time

import torch

from core.events import Job
from core.pruning.activations import ActivationStore
from core.pruning.capture import auto_batch_size, capture_first_block_inputs, run_block


@torch.no_grad()
def floor_seconds(loaded, ids: torch.Tensor) -> float:
    store = ActivationStore()
    calls = capture_first_block_inputs(loaded.model, loaded.layout.blocks, ids, torch.device("cpu"),
                                       auto_batch_size(ids.shape[1]), Job(), store)
    hidden = [store[i] for i in range(len(store))]
    started = time.perf_counter()
    for block in loaded.layout.blocks:
        for batch, call in zip(hidden, calls):          # pass 1 (where statistics would be gathered)
            run_block(block, batch, call)
        hidden = [run_block(block, batch, call) for batch, call in zip(hidden, calls)]   # pass 2
    return time.perf_counter() - started
