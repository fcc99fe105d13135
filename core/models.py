"""Open a model: a Hugging Face folder, a single .gguf file, a hub id from the local cache, or `demo`.

Safety: weights come from safetensors or GGUF; a pickle checkpoint (.bin/.pt) is read only
through `torch.load(weights_only=True)`; `trust_remote_code` stays off unless asked for.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import demo
from .architectures import Layout, find_layout
from .errors import UserError
from .events import EventSink, Phase, ignore

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


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


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def open_model(
    spec: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = "float32",
    trust_remote_code: bool = False,
    on_event: EventSink = ignore,
) -> LoadedModel:
    """Load `spec` on the CPU (the pipeline moves one block at a time to the compute device)."""
    spec = str(spec)
    torch_dtype = resolve_dtype(dtype)
    if spec == "demo":
        folder = demo.ensure_demo(on_event=on_event)
        return _open_folder(folder, "demo", "demo", torch_dtype, trust_remote_code, on_event)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _open_gguf(path, spec, torch_dtype, on_event)
    if path.is_dir():
        return _open_folder(path, spec, "folder", torch_dtype, trust_remote_code, on_event)
    if path.exists():
        raise UserError(f"{spec} is a file but not a .gguf model: pass a model folder (with config.json) or a .gguf file.")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return _open_hub_id(spec, torch_dtype, trust_remote_code, on_event)
    raise UserError(f"{spec}: no such file or folder. Pass a model folder, a .gguf file, a cached hub id or 'demo'.")


def _open_folder(folder: Path, source: str, kind: str, dtype, trust_remote_code, on_event) -> LoadedModel:
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: it is not a Hugging Face model folder.")
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")) + list(folder.glob("*.pt"))
    if not weights:
        raise UserError(f"{folder} has a config.json but no weights (*.safetensors or *.bin).")
    use_safetensors = any(w.suffix == ".safetensors" for w in weights)
    on_event(Phase("load model", 0, 1, str(folder)))
    if _is_compact(folder):
        model, tokenizer = _from_compact(folder, source, dtype, trust_remote_code, on_event)
    else:
        model, tokenizer = _from_pretrained(
            str(folder), source, dtype, trust_remote_code, use_safetensors=use_safetensors, local_files_only=True
        )
    on_event(Phase("load model", 1, 1, str(folder)))
    return LoadedModel(model, tokenizer, source, kind, folder, find_layout(model))


def _is_compact(folder: Path) -> bool:
    from .compact import is_compact

    return is_compact(folder)


def _from_compact(folder: Path, source, dtype, trust_remote_code, on_event):
    """A compact 2:4 folder (see core.compact): its weights are unpacked in memory, nothing is written."""
    from .compact import load_model

    try:
        return load_model(folder, dtype, trust_remote_code, on_event)
    except UserError:
        raise
    except Exception as exc:  # corrupt or truncated files
        raise UserError(f"could not read the compact model at {source}: {_first_line(str(exc)) or type(exc).__name__}") from None


def _open_hub_id(hub_id: str, dtype, trust_remote_code, on_event) -> LoadedModel:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:
        raise UserError(
            f"{hub_id} is not in the local Hugging Face cache and this tool works offline: "
            f"download it first (`hf download {hub_id}`) or pass a model folder."
        ) from None
    loaded = _open_folder(folder, hub_id, "hub", dtype, trust_remote_code, on_event)
    return loaded


def _open_gguf(path: Path, source: str, dtype, on_event) -> LoadedModel:
    on_event(Phase("load model", 0, 1, f"dequantizing {path.name}"))
    model, tokenizer = _from_pretrained(str(path.parent), source, dtype, False, gguf_file=path.name)
    make_serializable(model)
    on_event(Phase("load model", 1, 1, str(path)))
    return LoadedModel(model, tokenizer, source, "gguf", path, find_layout(model))


def make_serializable(model: nn.Module) -> None:
    """A GGUF-loaded model holds plain dequantized tensors but refuses `save_pretrained`; unmark it."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            del model.__dict__[attr]


def _from_pretrained(location, source, dtype, trust_remote_code, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, trust_remote_code=trust_remote_code, weights_only=True, **kwargs
        )
    except UserError:
        raise
    except ValueError as exc:
        text = str(exc)
        if "trust_remote_code" in text:
            raise UserError(f"{source} needs custom code from its authors; allow it with --trust-remote-code (in the studio: the 'trust remote code' box) if you trust them.") from None
        if "Unrecognized configuration class" in text or "does not recognize this architecture" in text:
            raise UserError(f"not supported yet: {source} is not a causal language model transformers knows.") from None
        raise UserError(f"could not read the model at {source}: {_first_line(text)}") from None
    except (OSError, RuntimeError, KeyError, EnvironmentError, Exception) as exc:  # corrupt or truncated files
        raise UserError(f"could not read the model at {source}: {_first_line(str(exc)) or type(exc).__name__}") from None
    model.eval()
    if "gguf_file" not in kwargs and not any((Path(location) / f).is_file() for f in TOKENIZER_FILES):
        return model, None  # opens for inspection; calibration will say what is missing
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **kwargs)
    except Exception:  # a model without tokenizer files still opens for inspection; calibration will say what is missing
        tokenizer = None
    return model, tokenizer


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
