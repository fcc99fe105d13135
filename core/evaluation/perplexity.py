"""Perplexity by the SparseGPT / Wanda protocol.

The text's rows are joined with "\\n\\n" (`texts.read_text`), tokenized once, and cut into
non-overlapping windows of `seqlen` tokens (the tail shorter than a window is dropped). Perplexity
is exp of the negative log-likelihood averaged over every predicted token (seqlen - 1 per window).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..compute import resolve_device
from ..data.calibration import tokenize
from ..data.texts import read_text
from ..errors import UserError
from ..events import Job, as_job
from ..models.loaded import check_window_length


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    nll: float          # mean negative log-likelihood per predicted token, in nats
    windows: int
    seqlen: int
    tokens: int         # predicted tokens
    seconds: float


def evaluation_windows(tokenizer, path: str | Path, seqlen: int, max_windows: int | None = None,
                       text_field: str = "text") -> torch.Tensor:
    ids = tokenize(tokenizer, read_text(path, text_field))
    count = ids.numel() // seqlen
    if count == 0:
        raise UserError(f"{Path(path).name} has {ids.numel()} tokens, fewer than one window of {seqlen}: use a longer text or a shorter --seqlen.")
    if max_windows:
        count = min(count, max_windows)
    return ids[: count * seqlen].view(count, seqlen)


def _window_nll(logits: torch.Tensor, batch: torch.Tensor) -> tuple[float, int]:
    """Summed negative log-likelihood of each window's next tokens, and how many tokens were predicted."""
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum")
    return float(nll), batch[:, 1:].numel()


@torch.no_grad()
def perplexity(
    model,
    windows: torch.Tensor,
    *,
    device: str = "auto",
    batch_size: int = 1,
    job: Job | None = None,
    before_batch: Callable[[int, int], None] | None = None,
) -> Perplexity:
    """Score `windows` [n, seqlen]; the model is moved to `device` for the run and back afterwards.
    `before_batch(start, stop)`, if given, is called before windows start:stop go through the model."""
    check_window_length(model.config, windows.shape[1])
    job = as_job(job)
    target = resolve_device(device)
    home = next(model.parameters()).device
    started = time.perf_counter()
    total_nll, total_tokens = 0.0, 0
    model.to(target)
    try:
        for start in range(0, windows.shape[0], batch_size):
            job.check()
            job.phase("perplexity", start, windows.shape[0])
            stop = min(start + batch_size, windows.shape[0])
            if before_batch is not None:
                before_batch(start, stop)
            batch = windows[start:stop].to(target)
            nll, tokens = _window_nll(model(input_ids=batch, use_cache=False).logits, batch)
            total_nll += nll
            total_tokens += tokens
    finally:
        model.to(home)
    job.phase("perplexity", windows.shape[0], windows.shape[0])
    mean = total_nll / total_tokens
    return Perplexity(math.exp(mean), mean, windows.shape[0], windows.shape[1], total_tokens,
                      time.perf_counter() - started)
