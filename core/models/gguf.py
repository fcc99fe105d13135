"""GGUF files, which transformers reads dequantized into ordinary tensors but marks as not saveable."""

from __future__ import annotations

from torch import nn


def make_serializable(model: nn.Module) -> None:
    """A GGUF-loaded model holds plain dequantized tensors but refuses `save_pretrained`; unmark it."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            del model.__dict__[attr]
