"""Channel statistics gathered over the calibration tokens, and the importance of channels and KV groups.

A channel here is one input column of down_proj (an MLP intermediate channel) or of o_proj (one of a
head's `head_dim` outputs). Removing column j of W changes the layer's output by W[:, j]·x_j; FLAP
(An et al., AAAI 2024, arXiv:2312.11983) notes that a bias W[:, j]·E[x_j] recovers the constant part,
so what is lost is W[:, j]·(x_j − E[x_j]), whose expected squared norm is Var(x_j)·‖W[:, j]‖²: its
fluctuation metric. The statistics are accumulated in float64 per channel: count, sum, sum of squares.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelStats:
    """Running per-channel sums of a linear layer's inputs, filled by a forward pre-hook."""

    def __init__(self, layer: nn.Linear):
        width = layer.in_features
        self.count = 0
        self.sum = torch.zeros(width, dtype=torch.float64)
        self.squares = torch.zeros(width, dtype=torch.float64)
        self._handle = layer.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).to("cpu", torch.float64)
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.squares += x.pow(2).sum(0)

    def close(self) -> None:
        self._handle.remove()

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased (n − 1) variance over the tokens, as `torch.var`."""
        n = self.count
        return ((self.squares - n * self.mean.pow(2)) / max(n - 1, 1)).clamp_min(0)

    @property
    def norm(self) -> torch.Tensor:
        return self.squares.sqrt()


def channel_scores(weight: torch.Tensor, stats: ChannelStats, criterion: str) -> torch.Tensor:
    """Importance of each input column of `weight` ([out, in]); low scores are removed first."""
    w = weight.detach().to("cpu", torch.float64)
    if criterion == "flap":
        return stats.variance * w.pow(2).sum(0)
    if criterion == "wanda":
        return stats.norm * w.abs().sum(0)
    if criterion == "magnitude":
        return w.pow(2).sum(0).sqrt()
    raise ValueError(f"unknown criterion {criterion!r}")


def group_scores(column_scores: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """o_proj's column scores summed per key/value group: query head h reads KV head h // (heads / kv_heads),
    and its `head_dim` columns are contiguous, so each group is one contiguous run of columns."""
    return column_scores.reshape(kv_heads, -1).sum(1)


def lowest(scores: torch.Tensor, count: int) -> list[int]:
    """The indices of the `count` lowest scores, in increasing index order."""
    if count <= 0:
        return []
    return sorted(torch.argsort(scores, stable=True)[:count].tolist())
