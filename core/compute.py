"""Devices and dtypes by the names users type: one table, one set of messages."""

from __future__ import annotations

import torch

from .errors import UserError

# Every spelling a user may give, for loading a model (float32/float16/bfloat16) and for kernels (fp16/bf16).
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
MODEL_DTYPES = ("float32", "float16", "bfloat16")     # the choices offered when opening a model
KERNEL_DTYPES = ("fp16", "bf16")                      # the choices offered for 2:4 kernels


def resolve_dtype(name: str | torch.dtype | None, choices: tuple[str, ...] = MODEL_DTYPES) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return torch.float32
    if name not in choices:
        raise UserError(f"unknown dtype {name!r}: choose one of {', '.join(choices)}.")
    return DTYPES[name]


def resolve_device(name: str | None) -> torch.device:
    if name in ("auto", None, ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device cuda was asked for, but no CUDA GPU is available here: use --device cpu or auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"there is no {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif device.type != "cpu":
        raise UserError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N.")
    return device
