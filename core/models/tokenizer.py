"""The tokenizer of a model folder, when it has one."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def has_tokenizer_files(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(location: str | Path, trust_remote_code: bool = False, *, strict: bool = False, **kwargs):
    """The tokenizer at `location`, or None when it has none (the model still opens for inspection and
    calibration says what is missing). An unreadable tokenizer is None too, unless `strict`."""
    from transformers import AutoTokenizer

    if "gguf_file" not in kwargs and not has_tokenizer_files(location):
        return None
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **kwargs)
    except Exception as exc:
        if strict:
            raise UserError(f"could not read the tokenizer in {location}: {str(exc).strip().splitlines()[0]}") from None
        return None
