"""Cutting whole channels out of a block's linear layers, in place, with FLAP's bias compensation.

MLP channel c: row c of gate_proj and up_proj, column c of down_proj. Key/value group g (with r query
heads per group and head dimension d): rows g·d:(g+1)·d of k_proj and v_proj, rows g·r·d:(g+1)·r·d of
q_proj and the same columns of o_proj. Compensation adds W[:, removed]·E[x_removed] to the bias of the
layer whose columns go (down_proj, o_proj), computed before they are cut.
"""

from __future__ import annotations

import torch
from torch import nn

from .importance import ChannelStats

MLP_LAYERS = ("gate_proj", "up_proj", "down_proj")
ATTENTION_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _complement(size: int, removed: list[int]) -> torch.Tensor:
    gone = set(removed)
    return torch.tensor([i for i in range(size) if i not in gone], dtype=torch.long)


@torch.no_grad()
def keep_rows(layer: nn.Linear, removed: list[int]) -> None:
    keep = _complement(layer.out_features, removed).to(layer.weight.device)
    layer.weight = nn.Parameter(layer.weight[keep].clone(), requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias[keep].clone(), requires_grad=layer.bias.requires_grad)
    layer.out_features = len(keep)


@torch.no_grad()
def keep_columns(layer: nn.Linear, removed: list[int]) -> None:
    keep = _complement(layer.in_features, removed).to(layer.weight.device)
    layer.weight = nn.Parameter(layer.weight[:, keep].clone(), requires_grad=layer.weight.requires_grad)
    layer.in_features = len(keep)


@torch.no_grad()
def compensate(layer: nn.Linear, removed: list[int], stats: ChannelStats) -> None:
    """Add the removed columns' mean contribution, W[:, removed]·E[x_removed], to the layer's bias."""
    index = torch.tensor(removed, dtype=torch.long)
    w = layer.weight.detach().to("cpu", torch.float64)[:, index]
    extra = (w @ stats.mean[index]).to(layer.weight.device, layer.weight.dtype)
    ensure_bias(layer)
    layer.bias.add_(extra)


@torch.no_grad()
def ensure_bias(layer: nn.Linear) -> None:
    """A zero bias where the layer has none (the config's bias flag gives every projection one)."""
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.out_features, dtype=layer.weight.dtype, device=layer.weight.device),
                                  requires_grad=False)


def shrink_mlp(mlp: nn.Module, removed: list[int], stats: ChannelStats, bias: bool) -> None:
    if not removed:
        return
    if bias:
        compensate(mlp.down_proj, removed, stats)
    keep_rows(mlp.gate_proj, removed)
    keep_rows(mlp.up_proj, removed)
    keep_columns(mlp.down_proj, removed)


def group_spans(groups: list[int], width: int) -> list[int]:
    """Indices of the contiguous spans of `width` that groups `groups` occupy."""
    return [g * width + i for g in groups for i in range(width)]


def shrink_attention(attention: nn.Module, groups: list[int], group_size: int, head_dim: int,
                     stats: ChannelStats, bias: bool) -> None:
    if not groups:
        return
    query = group_spans(groups, group_size * head_dim)
    if bias:
        compensate(attention.o_proj, query, stats)
    keep_rows(attention.q_proj, query)
    keep_rows(attention.k_proj, group_spans(groups, head_dim))
    keep_rows(attention.v_proj, group_spans(groups, head_dim))
    keep_columns(attention.o_proj, query)


def give_biases(block: nn.Module, mlp: bool, attention: bool) -> None:
    """Zero biases on every projection the config's flags will build with one, so the export loads as saved."""
    for name in (MLP_LAYERS if mlp else ()):
        ensure_bias(getattr(block.mlp, name))
    for name in (ATTENTION_LAYERS if attention else ()):
        ensure_bias(getattr(block.self_attn, name))


def update_config(config, counts, mlp_bias: bool, attention_bias: bool) -> None:
    """The smaller shapes (and the bias flags compensation needs) in the config transformers rebuilds from."""
    config.intermediate_size = counts.intermediate - counts.channels
    config.num_key_value_heads = counts.kv_heads - counts.groups
    config.num_attention_heads = counts.heads - counts.groups * counts.group_size
    config.head_dim = counts.head_dim       # hidden_size / num_attention_heads no longer equals it
    if mlp_bias:
        config.mlp_bias = True
    if attention_bias:
        config.attention_bias = True
