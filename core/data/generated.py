"""Calibration text the model writes itself, for a first run with no files at hand.

The recipe is the self-calibration of Williams, Chrysostomou and Aletras (2024, "Self-calibration for
language model quantization and pruning", arXiv 2410.17170): every window starts from the beginning-of-sequence
token alone and the model samples the rest, with a temperature schedule that is linear over the first
`schedule_tokens` steps (from `temperature_start` to `temperature_end`, then constant) so that the first few
tokens, which decide what a text is about, vary more across windows than the rest. Sampling is nucleus (top-p)
sampling. The values here (1.5 → 1.0 over 32 tokens, top-p 0.95) are this tool's choice, not the paper's tuned
ones.

Windows are generated in batches with the model's key/value cache; one seeded CPU `torch.Generator` draws one
uniform number per window per step, so the same seed, model, window count and length give the same tokens on
any device (up to the model's own floating-point differences between devices). The exact ids are what a run
uses and saves (`calibration.safetensors`, as for files): decoding them and tokenizing the text again need not
give the same ids back. A decoded sample goes into the description (`sparsity.json`) for people to read.

This module takes the transformers model and tokenizer as arguments: `core.data` is below `core.models`.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..events import Job, as_job, eta_seconds
from .calibration import CalibrationSet

SOURCE = "self-generated"
LABEL = "text the model writes itself"
SAMPLE_CHARS = 400


@dataclass(frozen=True)
class GenerationOptions:
    temperature_start: float = 1.5
    temperature_end: float = 1.0
    schedule_tokens: int = 32        # the schedule's length n: steps 1..n move from start to end
    top_p: float = 0.95
    batch_tokens: int = 16384        # windows per batch: this many tokens' worth (at least one window)

    def validate(self) -> None:
        if self.temperature_start < 0 or self.temperature_end < 0:
            raise UserError("the sampling temperature cannot be negative: use 0 (greedy) or more.")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p must be in (0, 1] (got {self.top_p}).")
        if self.schedule_tokens < 0 or self.batch_tokens < 1:
            raise UserError("the temperature schedule's length and the batch size must be positive.")

    def temperature(self, step: int) -> float:
        """The temperature of generated token `step` (1 is the first token after the start token)."""
        n = self.schedule_tokens
        if n == 0 or step >= n:
            return self.temperature_end
        return self.temperature_start + step / n * (self.temperature_end - self.temperature_start)

    def windows_per_batch(self, nsamples: int, seqlen: int) -> int:
        return max(1, min(nsamples, self.batch_tokens // seqlen))

    def describe(self) -> dict:
        return {"temperature_start": self.temperature_start, "temperature_end": self.temperature_end,
                "schedule_tokens": self.schedule_tokens, "top_p": self.top_p, "batch_tokens": self.batch_tokens}


@dataclass
class GeneratedCalibration(CalibrationSet):
    """A `CalibrationSet` whose windows the model sampled; its description says so."""

    options: GenerationOptions = field(default_factory=GenerationOptions)
    start_token: int = 0
    sample: str = ""
    seconds: float = 0.0

    def describe(self) -> dict:
        return {**super().describe(), "source": SOURCE, "label": LABEL,
                "generation": {**self.options.describe(), "start_token": self.start_token,
                               "recipe": "Williams et al. 2024 self-calibration: from the BOS token, linear "
                                         "temperature schedule, top-p sampling",
                               "seconds": round(self.seconds, 3)},
                "sample": self.sample}


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row of `logits` [B, V]: argmax at temperature 0, else a draw from the smallest set of most
    probable tokens whose probability reaches `top_p`, renormalized. Exactly one uniform number is drawn per row
    (also at temperature 0), by inverting the cumulative distribution over the tokens sorted by probability."""
    uniform = torch.rand(logits.shape[0], generator=generator, dtype=torch.float64)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs          # mass of the tokens ranked above each one
    kept = torch.where(before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    kept[:, 0] = sorted_probs[:, 0]                              # the most probable token is always kept
    cumulative = kept.cumsum(dim=-1)
    target = uniform * cumulative[:, -1]
    index = torch.searchsorted(cumulative, target[:, None], right=True).clamp_(max=logits.shape[1] - 1)
    count = (kept > 0).sum(dim=-1, keepdim=True)
    index = torch.minimum(index, count - 1)                      # never past the last kept token
    return order.gather(-1, index).squeeze(-1)


def start_token_of(model, tokenizer) -> int:
    """The beginning-of-sequence token (the tokenizer's, else the model config's), else end-of-sequence."""
    config = getattr(model, "config", None)
    for token in (getattr(tokenizer, "bos_token_id", None), getattr(config, "bos_token_id", None),
                  getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(token, int):
            return token
    raise UserError("this model names no beginning- or end-of-sequence token, so it cannot write its own "
                    "calibration text: give a calibration file.")


@torch.no_grad()
def generate_ids(model, start_token: int, nsamples: int, seqlen: int, seed: int,
                 options: GenerationOptions = GenerationOptions(), job: Job | None = None) -> torch.Tensor:
    """[nsamples, seqlen] token ids: each row the start token then `seqlen - 1` sampled tokens."""
    job = as_job(job)
    options.validate()
    if nsamples < 1 or seqlen < 2:
        raise UserError(f"calibration needs at least 1 window of at least 2 tokens (got {nsamples} × {seqlen}).")
    if not -2**63 <= seed < 2**64:
        raise UserError(f"calibration seed {seed} is out of range: give a whole number from 0 to {2**63 - 1}.")
    parameter = next(model.parameters())
    if parameter.is_meta:
        raise UserError("a streamed model is never whole in memory, so it cannot write its own calibration text: "
                        "give a calibration file (--calib FILE).")
    generator = torch.Generator().manual_seed(seed)
    per_batch = options.windows_per_batch(nsamples, seqlen)
    batches = math.ceil(nsamples / per_batch)
    total, done, started = batches * (seqlen - 1), 0, time.perf_counter()
    out = torch.empty(nsamples, seqlen, dtype=torch.int64)
    out[:, 0] = start_token
    every = max(1, (seqlen - 1) // 50)
    keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    for b, first in enumerate(range(0, nsamples, per_batch)):
        rows = slice(first, min(nsamples, first + per_batch))
        ids = out[rows, :1].to(parameter.device)
        past = None
        for step in range(1, seqlen):
            job.check()
            output = model(input_ids=ids, use_cache=True, **({keyword: past} if past is not None else {}))
            past = _cache_of(output)
            logits = output.logits[:, -1, :].float().cpu()
            out[rows, step] = sample_next(logits, options.temperature(step), options.top_p, generator)
            ids = out[rows, step:step + 1].to(parameter.device)
            done += 1
            if step % every == 0 or step == seqlen - 1:
                eta = eta_seconds(started, done, total)
                job.phase("write calibration text", done, total,
                          f"batch {b + 1}/{batches}" + (f", about {eta:.0f} s left" if eta is not None else ""))
        del past
    return out


def generate_calibration(model, tokenizer, *, nsamples: int, seqlen: int, seed: int = 0,
                         options: GenerationOptions = GenerationOptions(), context_length: int | None = None,
                         job: Job | None = None) -> GeneratedCalibration:
    """`nsamples` windows of `seqlen` tokens that `model` samples from its start token (seeded)."""
    if context_length is not None and seqlen > context_length:
        raise UserError(f"the model reads at most {context_length} tokens: lower the sequence length "
                        f"({seqlen}) to {context_length} or less.")
    started = time.perf_counter()
    start = start_token_of(model, tokenizer)
    ids = generate_ids(model, start, nsamples, seqlen, seed, options, job)
    sample = _decode(tokenizer, ids[0])
    return GeneratedCalibration(ids, [], seed, text_field="", tokens_found=int(ids.numel()),
                                starts=[0] * nsamples, options=options, start_token=start,
                                sample=sample, seconds=time.perf_counter() - started)


def _cache_of(output):
    """The key/value cache a forward pass returned (transformers 5 calls it `cache`, earlier versions
    `past_key_values`)."""
    for key in ("cache", "past_key_values"):
        if output.get(key) is not None:
            return output[key]
    raise UserError("this model returned no key/value cache, so it cannot write its own calibration text "
                    "quickly: give a calibration file.")


def _decode(tokenizer, ids: torch.Tensor) -> str:
    if tokenizer is None:
        return ""
    return tokenizer.decode(ids.tolist(), skip_special_tokens=False)[:SAMPLE_CHARS]
