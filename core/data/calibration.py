"""Calibration data: the user's files, tokenized, cut into seeded windows.

The exact windows are kept (`CalibrationSet.input_ids`) and saved with every run as
`calibration.safetensors`, so a run can be reproduced token for token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..events import Job, as_job
from .texts import read_text, sha256_of

DEFAULT_NSAMPLES = 128
MAX_DEFAULT_SEQLEN = 2048


@dataclass(frozen=True)
class CalibrationFile:
    path: str
    sha256: str
    tokens: int


@dataclass
class CalibrationSet:
    input_ids: torch.Tensor          # [nsamples, seqlen], int64
    files: list[CalibrationFile]
    seed: int
    text_field: str = "text"
    tokens_found: int = 0
    starts: list[int] = field(default_factory=list)

    @property
    def nsamples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seqlen(self) -> int:
        return int(self.input_ids.shape[1])

    def describe(self) -> dict:
        return {
            "files": [vars(f) for f in self.files],
            "text_field": self.text_field,
            "tokens_found": self.tokens_found,
            "nsamples": self.nsamples,
            "seqlen": self.seqlen,
            "seed": self.seed,
        }


def default_seqlen(context_length: int) -> int:
    return min(MAX_DEFAULT_SEQLEN, context_length)


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of `text` as one long 1-D tensor, as the tokenizer encodes it by default (a BOS token where the model uses one)."""
    if tokenizer is None:
        raise UserError("this model has no tokenizer files (tokenizer.json or tokenizer_config.json): add them to its folder.")
    # Lists, then numpy: `return_tensors="pt"` built the tensor from a Python list of every token while holding
    # the GIL (about 50 ms for WikiText-2 valid), and the studio's window froze for as long.
    ids = tokenizer(text, verbose=False, return_attention_mask=False, return_token_type_ids=False).input_ids
    return torch.from_numpy(np.asarray(ids, dtype=np.int64))


def load_calibration(
    files: list[str | Path],
    tokenizer,
    *,
    nsamples: int = DEFAULT_NSAMPLES,
    seqlen: int,
    seed: int = 0,
    text_field: str = "text",
    job: Job | None = None,
) -> CalibrationSet:
    """Read `files`, tokenize them, and draw `nsamples` windows of `seqlen` tokens (seeded)."""
    job = as_job(job)
    if not files:
        raise UserError("no calibration files given: add at least one text file.")
    if nsamples < 1 or seqlen < 2:
        raise UserError(f"calibration needs at least 1 window of at least 2 tokens (got {nsamples} × {seqlen}).")
    streams, described = [], []
    for i, file in enumerate(files):
        job.check()
        job.phase("tokenize calibration", i, len(files), Path(file).name)
        text = read_text(file, text_field)
        if not text.strip():
            raise UserError(f"{Path(file).name} holds no text: pass a file with the calibration text in it.")
        ids = tokenize(tokenizer, text)
        streams.append(ids)
        described.append(CalibrationFile(str(Path(file).resolve()), sha256_of(Path(file)), int(ids.numel())))
    job.phase("tokenize calibration", len(files), len(files))
    stream = torch.cat(streams)
    windows, starts = draw_windows(stream, nsamples, seqlen, seed)
    return CalibrationSet(windows, described, seed, text_field, int(stream.numel()), starts)


def draw_windows(stream: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """`nsamples` windows of `seqlen` consecutive tokens at seeded random starts (windows may overlap)."""
    if stream.numel() < seqlen:
        raise UserError(
            f"the calibration text has {stream.numel()} tokens, fewer than one window of {seqlen}: "
            f"add text (at least {seqlen} tokens) or lower the sequence length."
        )
    if not -2**63 <= seed < 2**64:      # what torch.Generator.manual_seed accepts
        raise UserError(f"calibration seed {seed} is out of range: give a whole number from 0 to {2**63 - 1}.")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seqlen + 1, (nsamples,), generator=generator).tolist()
    return torch.stack([stream[s:s + seqlen] for s in starts]), starts


def save_calibration(calib: CalibrationSet, path: Path) -> None:
    save_file({"input_ids": calib.input_ids.contiguous()}, str(path), metadata={"seed": str(calib.seed)})


def load_saved_calibration(path: Path) -> torch.Tensor:
    return load_file(str(path))["input_ids"]
