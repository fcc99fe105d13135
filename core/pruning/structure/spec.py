"""What a structured shrink removes, checked against a model's config before anything changes.

`--structure mlp=F,heads=G`: F of each block's MLP intermediate channels and G of its attention heads,
the same count in every block so the config stays uniform. Heads go in whole key/value groups (a KV head
with the query heads that read it), so grouped-query attention stays valid and `head_dim` is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UserError

FAMILIES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}
# Families whose config can give the MLP / attention projections a bias (Llama's `mlp_bias`, `attention_bias`):
# only they get FLAP's bias compensation. Mistral has no biases; Qwen2's o_proj never has one.
BIAS_FLAGS = {"llama": ("mlp_bias", "attention_bias")}
CRITERIA = {
    "flap": "FLAP's fluctuation: Var(x_j) · ‖W[:, j]‖², x_j the channel's input to down_proj / o_proj",
    "wanda": "Wanda's score summed per channel: ‖x_j‖₂ · Σ_i |W_ij| over down_proj / o_proj",
    "magnitude": "‖W[:, j]‖₂ of down_proj / o_proj, no calibration data",
}


@dataclass(frozen=True)
class StructureSpec:
    mlp: float = 0.0      # fraction of intermediate channels removed
    heads: float = 0.0    # fraction of attention heads removed (in whole key/value groups)
    criterion: str = "flap"
    compensate: bool = True   # FLAP's bias compensation, where the family can hold the bias

    def describe(self) -> str:
        parts = [f"mlp={self.mlp:g}"] * bool(self.mlp) + [f"heads={self.heads:g}"] * bool(self.heads)
        return ",".join(parts)


@dataclass(frozen=True)
class Counts:
    """What each block loses: `channels` of `intermediate`, `groups` of `kv_heads` (each `group_size` query heads)."""

    intermediate: int
    channels: int
    heads: int
    kv_heads: int
    groups: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads


def check_family(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UserError(f"structured shrinking is not supported yet for model_type {model_type!r} (it supports "
                        f"{', '.join(FAMILIES.values())}): prune it without --structure.")
    return model_type


def counts(config, spec: StructureSpec) -> Counts:
    """The per-block counts `spec` asks of a model with `config`; a `UserError` for what cannot be met."""
    check_family(config)
    if spec.criterion not in CRITERIA:
        raise UserError(f"--method {spec.criterion} cannot rank whole channels: with --structure use "
                        f"{', '.join(CRITERIA)}.")
    if not (spec.mlp or spec.heads):
        raise UserError("--structure removes nothing: give mlp=FRACTION and/or heads=FRACTION above 0.")
    inter, heads = config.intermediate_size, config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    channels = round(spec.mlp * inter)
    if spec.mlp and channels == 0:
        raise UserError(f"mlp={spec.mlp:g} removes no channel of {inter}: use at least {1 / inter:.4g}.")
    if channels >= inter:
        raise UserError(f"mlp={spec.mlp:g} leaves none of the {inter} MLP channels: use a smaller fraction.")
    groups = spec.heads * kv
    if abs(groups - round(groups)) > 1e-6:
        raise UserError(f"heads={spec.heads:g} cannot be met in whole key/value groups: this model has {kv} "
                        f"groups of {heads // kv} query heads, so use a multiple of 1/{kv} ({1 / kv:.4g}).")
    if round(groups) >= kv:
        raise UserError(f"heads={spec.heads:g} leaves none of the {heads} attention heads: use a smaller fraction.")
    return Counts(inter, channels, heads, kv, round(groups), head_dim)
