"""A model as the engine holds it: the torch module, its tokenizer, where it came from, its layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import UserError
from .architectures import Layout


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    source: str            # what the user typed
    kind: str              # "folder" | "gguf" | "hub" | "demo"
    path: Path | None      # the folder or file the weights came from
    layout: Layout

    @property
    def context_length(self) -> int:
        return context_length(self.model.config)

    @property
    def name(self) -> str:
        return self.source if self.kind in ("hub", "demo") else (self.path.name if self.path else self.source)


def context_length(config) -> int:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def check_window_length(config, seqlen: int) -> None:
    """Refuse windows longer than the model's context: learned position tables (GPT-2, OPT) fail deep inside."""
    limit = context_length(config)
    if seqlen > limit:
        raise UserError(f"windows of {seqlen} tokens are longer than the model's context length ({limit}): "
                        f"use a sequence length of {limit} or less.")
