"""Open a model: a Hugging Face folder, a single .gguf file, a hub id from the local cache, or `demo`.

Safety: weights come from safetensors or GGUF; a pickle checkpoint (.bin/.pt) is read only
through `torch.load(weights_only=True)`; `trust_remote_code` stays off unless asked for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..compute import resolve_dtype
from ..errors import UserError
from ..events import Job, as_job
from ..formats.compact24 import is_compact
from . import demo
from .architectures import find_layout
from .compact import load_model as load_compact
from .gguf import make_serializable
from .loaded import LoadedModel
from .tokenizer import load_tokenizer

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def open_model(
    spec: str | os.PathLike,
    *,
    dtype=None,
    trust_remote_code: bool = False,
    job: Job | None = None,
) -> LoadedModel:
    """Load `spec` on the CPU (the pipeline moves one block at a time to the compute device); `dtype` a
    torch dtype or one of `core.compute.MODEL_DTYPES` (default float32)."""
    spec, job = str(spec), as_job(job)
    torch_dtype = resolve_dtype(dtype)
    if spec == "demo":
        folder = demo.ensure_demo(job)
        return _open_folder(folder, "demo", "demo", torch_dtype, trust_remote_code, job)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _open_gguf(path, spec, torch_dtype, job)
    if path.is_dir():
        return _open_folder(path, spec, "folder", torch_dtype, trust_remote_code, job)
    if path.exists():
        raise UserError(f"{spec} is a file but not a .gguf model: pass a model folder (with config.json) or a .gguf file.")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return _open_hub_id(spec, torch_dtype, trust_remote_code, job)
    raise UserError(f"{spec}: no such file or folder. Pass a model folder, a .gguf file, a cached hub id or 'demo'.")


def _open_folder(folder: Path, source: str, kind: str, dtype, trust_remote_code, job: Job) -> LoadedModel:
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: it is not a Hugging Face model folder.")
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")) + list(folder.glob("*.pt"))
    if not weights:
        raise UserError(f"{folder} has a config.json but no weights (*.safetensors or *.bin).")
    use_safetensors = any(w.suffix == ".safetensors" for w in weights)
    job.check()
    job.phase("load model", 0, 1, str(folder))
    if is_compact(folder):
        model, tokenizer = _from_compact(folder, source, dtype, trust_remote_code, job)
    else:
        model, tokenizer = _from_pretrained(
            str(folder), source, dtype, trust_remote_code, use_safetensors=use_safetensors, local_files_only=True
        )
    job.phase("load model", 1, 1, str(folder))
    return LoadedModel(model, tokenizer, source, kind, folder, find_layout(model))


def _from_compact(folder: Path, source, dtype, trust_remote_code, job: Job):
    """A compact 2:4 folder (see core.formats.compact24): its weights are unpacked in memory, nothing is written."""
    try:
        return load_compact(folder, dtype, trust_remote_code, job)
    except UserError:
        raise
    except Exception as exc:  # corrupt or truncated files
        raise UserError(f"could not read the compact model at {source}: {_first_line(str(exc)) or type(exc).__name__}") from None


def _open_hub_id(hub_id: str, dtype, trust_remote_code, job: Job) -> LoadedModel:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:
        raise UserError(
            f"{hub_id} is not in the local Hugging Face cache and this tool works offline: "
            f"download it first (`hf download {hub_id}`) or pass a model folder."
        ) from None
    return _open_folder(folder, hub_id, "hub", dtype, trust_remote_code, job)


def _open_gguf(path: Path, source: str, dtype, job: Job) -> LoadedModel:
    job.phase("load model", 0, 1, f"dequantizing {path.name}")
    model, tokenizer = _from_pretrained(str(path.parent), source, dtype, False, gguf_file=path.name)
    make_serializable(model)
    job.phase("load model", 1, 1, str(path))
    return LoadedModel(model, tokenizer, source, "gguf", path, find_layout(model))


def _from_pretrained(location, source, dtype, trust_remote_code, **kwargs):
    from transformers import AutoModelForCausalLM

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
    return model, load_tokenizer(location, trust_remote_code, **kwargs)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
