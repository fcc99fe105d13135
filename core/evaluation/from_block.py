"""Perplexity that starts at block k, for changes that leave blocks 0..k-1 dense.

A sensitivity profile changes one layer or block at a time. Blocks before it compute exactly what they
computed for the dense model, so their outputs can be remembered once (`BlockInputs.record`, one dense pass
over the windows that also gives the dense perplexity) and every later evaluation starts where the change
is (`BlockInputs.perplexity_from`). The model itself still runs end to end — embeddings, rotary tables,
masks, final norm, head and any logit soft-capping are its own — only blocks 0..k-1 are swapped for
pass-throughs for the call, and block k's input is replaced by the recorded one. The result equals a full
`perplexity` pass, and costs (n - k) of n blocks plus the head.
"""

from __future__ import annotations

import torch
from torch import nn

from ..events import Job
from .perplexity import Perplexity, perplexity

DEFAULT_MAX_BYTES = 2 << 30


class _PassThrough(nn.Module):
    """Stands in for a block that would compute what was recorded: returns its input as the block would."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, *args, **kwargs):
        hidden = _hidden_of(args, kwargs)
        return (hidden,) if self.as_tuple else hidden


def _hidden_of(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, hidden):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def cache_bytes(windows: torch.Tensor, hidden_size: int, blocks: int, dtype: torch.dtype) -> int:
    return windows.numel() * hidden_size * blocks * dtype.itemsize


class BlockInputs:
    """The dense input of every block for each evaluation window (kept on the CPU)."""

    def __init__(self, blocks: nn.ModuleList, inputs: list[list[torch.Tensor]], as_tuple: bool, dense: Perplexity):
        self.blocks = blocks
        self.inputs = inputs            # inputs[block][window]: [seqlen, hidden]
        self.as_tuple = as_tuple
        self.dense = dense

    @classmethod
    @torch.no_grad()
    def record(cls, model, blocks: nn.ModuleList, windows: torch.Tensor, *, device: str = "auto",
               job: Job | None = None) -> "BlockInputs":
        """One dense pass over `windows` [n, seqlen], recording each block's input for each window."""
        inputs: list[list[torch.Tensor]] = [[] for _ in blocks]
        returns_tuple: list[bool] = []

        def recorder(index):
            def hook(module, args, kwargs):
                inputs[index].extend(_hidden_of(args, kwargs).detach().to("cpu", copy=True).unbind(0))
            return hook

        def output_kind(module, args, kwargs, out):
            returns_tuple.append(isinstance(out, (tuple, list)))

        handles = [b.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, b in enumerate(blocks)]
        handles.append(blocks[0].register_forward_hook(output_kind, with_kwargs=True))
        try:
            dense = perplexity(model, windows, device=device, job=job)
        finally:
            for h in handles:
                h.remove()
        return cls(blocks, inputs, bool(returns_tuple and returns_tuple[0]), dense)

    @torch.no_grad()
    def perplexity_from(self, model, start: int, windows: torch.Tensor, *, device: str = "auto",
                        job: Job | None = None) -> Perplexity:
        """Perplexity of `model` on `windows` (the recorded ones), blocks 0..start-1 taken as recorded."""
        if start <= 0:
            return perplexity(model, windows, device=device, job=job)
        originals = [self.blocks[j] for j in range(start)]
        current: dict[str, torch.Tensor] = {}

        def choose(first: int, stop: int) -> None:
            current["hidden"] = torch.stack(self.inputs[start][first:stop])

        def substitute(module, args, kwargs):
            hidden = _hidden_of(args, kwargs)
            return _with_hidden(args, kwargs, current["hidden"].to(hidden.device, hidden.dtype))

        for j in range(start):
            self.blocks[j] = _PassThrough(self.as_tuple)
        handle = self.blocks[start].register_forward_pre_hook(substitute, with_kwargs=True)
        try:
            return perplexity(model, windows, device=device, job=job, before_batch=choose)
        finally:
            handle.remove()
            for j, block in enumerate(originals):
                self.blocks[j] = block
