"""Capture what the first decoder block receives, and run one block over captured inputs.

The first block's inputs are caught with a forward pre-hook that stops the model right there,
so whatever the family computes before its blocks (embeddings, rotary tables, masks; the
`cache` keyword of transformers 5) is recorded as-is instead of being rebuilt by hand.
The hidden states go to an `ActivationStore` (memory or disk); the other call arguments are
the same at every block and stay in memory (`BlockCall`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .activations import ActivationStore
from . import finite
from ..events import Job


class _StopForward(Exception):
    pass


@dataclass
class BlockCall:
    """Everything a block is called with besides the hidden states, for one batch of windows."""

    args: tuple
    kwargs: dict

    def to(self, device: torch.device, dtype: torch.dtype) -> "BlockCall":
        """A copy on `device` with floating tensors (rotary tables, float masks) cast to `dtype`."""
        return BlockCall(tuple(_cast(a, device, dtype) for a in self.args),
                         {k: _cast(v, device, dtype) for k, v in self.kwargs.items()})

    def windows(self, start: int, stop: int, batch: int) -> "BlockCall":
        """The call for windows start:stop of a batch of `batch` windows: tensors whose first dimension
        is the batch are sliced, those shared by every window (shape 1 in front) are kept."""
        if batch <= 1 or (start, stop) == (0, batch):
            return self
        return BlockCall(tuple(_slice(a, start, stop, batch) for a in self.args),
                         {k: _slice(v, start, stop, batch) for k, v in self.kwargs.items()})


def _cast(value, device, dtype):
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, tuple):
        return tuple(_cast(v, device, dtype) for v in value)
    if isinstance(value, list):
        return [_cast(v, device, dtype) for v in value]
    return value


def _slice(value, start, stop, batch):
    if isinstance(value, torch.Tensor):
        return value[start:stop] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_slice(v, start, stop, batch) for v in value)
    return value


def batches(input_ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [input_ids[i:i + batch_size] for i in range(0, input_ids.shape[0], batch_size)]


def auto_batch_size(seqlen: int, target_tokens: int = 4096) -> int:
    return max(1, target_tokens // max(seqlen, 1))


def move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> None:
    """Move every parameter and buffer that is not inside a decoder block (embeddings, final norm, head).

    Tensors still on the meta device (a streamed model's head, never needed for pruning) stay there.
    """
    inside = {id(m) for m in blocks.modules()}
    for module in model.modules():
        if id(module) in inside:
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.device != device and not param.is_meta:
                param.data = param.data.to(device)
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and buf.device != device and not buf.is_meta:
                module._buffers[name] = buf.to(device)


@torch.no_grad()
def capture_first_block_inputs(
    model: nn.Module,
    blocks: nn.ModuleList,
    input_ids: torch.Tensor,
    device: torch.device,
    batch_size: int,
    job: Job,
    store: ActivationStore,
) -> list[BlockCall]:
    """Fill `store` with the first block's hidden states per batch; return the other call arguments."""
    calls: list[BlockCall] = []

    def catch(module, args, kwargs):
        hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        finite.check_embedded(hidden, model, blocks)
        store.append(hidden)
        calls.append(BlockCall(rest, dict(kwargs)))
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
    chunks = batches(input_ids, batch_size)
    try:
        for i, chunk in enumerate(chunks):
            job.check()
            job.phase("capture inputs", i, len(chunks))
            try:
                model(input_ids=chunk.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    job.phase("capture inputs", len(chunks), len(chunks))
    return calls


def run_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    out = block(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out
