"""A compact 2:4 folder opened as a model: its weights unpacked in memory, nothing written."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..events import Job
from ..formats.compact24 import load_state
from .tokenizer import load_tokenizer


def _skip_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise normally
        import contextlib

        return contextlib.nullcontext()
    return no_init_weights()


def load_model(folder: str | Path, dtype: torch.dtype, trust_remote_code: bool = False, job: Job | None = None):
    """(model, tokenizer) from a compact folder, without writing a dense copy anywhere."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with _skip_init():         # every weight is overwritten below: random initialisation is wasted time
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()        # skipped with the initialisation
    state = load_state(folder, job)
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[name]) for name in state if name in params}
    untied = [name for name in missing if name not in params or id(params[name]) not in loaded]
    if unexpected or untied:
        raise UserError(f"{folder}: the compact weights do not match the model in config.json "
                        f"(missing {untied[:3]}, unexpected {list(unexpected)[:3]}).")
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.eval()
    return model, load_tokenizer(folder, trust_remote_code)
