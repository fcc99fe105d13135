"""Open a model: a Hugging Face folder, a single .gguf file, a hub id from the local cache, or `demo`.

Safety: weights come from safetensors or GGUF; a pickle checkpoint (.bin/.pt) is read only
through `torch.load(weights_only=True)`; `trust_remote_code` stays off unless asked for, and a folder that
cannot open without its authors' code is refused naming that setting. Before transformers sees a file,
config.json must be a JSON object and every safetensors or GGUF header is checked against its file's
size (`core.formats`), so a damaged or hostile header is refused before anything is allocated from it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..compute import resolve_dtype
from ..errors import UserError
from ..events import Job, as_job
from ..formats.compact24 import is_compact
from ..formats.gguf_check import check_gguf_file
from ..formats.names import CALIBRATION
from ..formats.safetensors_reader import check_safetensors_file
from . import demo
from .architectures import find_layout
from .compact import load_model as load_compact
from .gguf import make_serializable
from .loaded import LoadedModel
from .tokenizer import load_tokenizer

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
TRUST_SETTING = "--trust-remote-code (in the studio: the 'trust remote code' box beside the dtype)"


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
    config = read_config(folder)
    if not trust_remote_code:
        refuse_remote_code(folder, config)
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")) + list(folder.glob("*.pt"))
    if not weights:
        raise UserError(f"{folder} has a config.json but no weights (*.safetensors or *.bin).")
    use_safetensors = any(w.suffix == ".safetensors" for w in weights)
    for file in weights:
        if file.suffix == ".safetensors" and file.name != CALIBRATION:
            try:
                check_safetensors_file(file)
            except UserError as exc:
                raise UserError(f"could not read the model at {source}: {exc}") from None
    job.check()
    job.phase("load model", 0, 1, str(folder))
    if is_compact(folder):
        model, tokenizer = _from_compact(folder, source, dtype, trust_remote_code, job)
    else:
        model, tokenizer = _from_pretrained(
            str(folder), source, dtype, trust_remote_code, use_safetensors=use_safetensors, local_files_only=True
        )
    if tokenizer is None and not trust_remote_code:
        _refuse_remote_tokenizer(folder)
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
    check_gguf_file(path)
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
            raise UserError(f"{source} needs code from its authors to open; allow it with {TRUST_SETTING} "
                            "if you trust its source.") from None
        if "Unrecognized configuration class" in text or "does not recognize this architecture" in text:
            raise UserError(f"not supported yet: {source} is not a causal language model transformers knows.") from None
        raise UserError(f"could not read the model at {source}: {_first_line(text)}") from None
    except (OSError, RuntimeError, KeyError, EnvironmentError, Exception) as exc:  # corrupt or truncated files
        raise UserError(f"could not read the model at {source}: {_first_line(str(exc)) or type(exc).__name__}") from None
    model.eval()
    return model, load_tokenizer(location, trust_remote_code, **kwargs)


def read_config(folder: Path) -> dict:
    """A folder's config.json, which must be a JSON object (transformers' own message says neither)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError):      # JSON and UTF-8 errors, an unreadable file
        config = None
    if not isinstance(config, dict):
        raise UserError(f"{folder / 'config.json'} is not a valid config (it must be a JSON object): "
                        "fix it or copy the model again.")
    return config


def refuse_remote_code(folder: Path, config: dict) -> None:
    """UserError naming the trust setting when transformers could open this config only by running the
    code its `auto_map` names: no built-in config class for its model_type, or no built-in causal LM
    for it. Where transformers has its own class it uses that one with trust off (and so do we)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict):
        return
    model_type = config.get("model_type")
    try:
        builtin = CONFIG_MAPPING[model_type] if isinstance(model_type, str) and model_type in CONFIG_MAPPING else None
    except (ImportError, KeyError, AttributeError):     # a built-in family that cannot be imported here
        builtin = None
    if builtin is None and "AutoConfig" not in auto_map:
        return                         # transformers cannot read this config, trusted or not: its message follows
    needed = ["AutoConfig"] if builtin is None else []
    if "AutoModelForCausalLM" in auto_map and (builtin is None or builtin not in MODEL_FOR_CAUSAL_LM_MAPPING):
        needed.append("AutoModelForCausalLM")
    if needed:
        raise UserError(f"{folder / 'config.json'} asks to run the model authors' own code "
                        f"({_auto_map_text(auto_map, needed)}); open it with {TRUST_SETTING} if you trust its source.")


def _refuse_remote_tokenizer(folder: Path) -> None:
    """The tokenizer did not load with trust off: name the setting when its config asks for its authors' code."""
    try:
        auto_map = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("auto_map")
    except (ValueError, OSError, AttributeError):
        return
    if isinstance(auto_map, list):         # the old form: [slow class, fast class]
        auto_map = {"AutoTokenizer": auto_map}
    if isinstance(auto_map, dict) and "AutoTokenizer" in auto_map:
        raise UserError(f"{folder / 'tokenizer_config.json'} asks to run the model authors' own code "
                        f"({_auto_map_text(auto_map, ['AutoTokenizer'])}) to read its tokenizer; open it with "
                        f"{TRUST_SETTING} if you trust its source.")


def _auto_map_text(auto_map: dict, names: list[str]) -> str:
    text = ", ".join(f"{name}: {auto_map[name]}" for name in names)
    text = " ".join(text.split())          # one line, whatever the file holds
    return "auto_map " + (text if len(text) <= 160 else text[:157] + "...")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
