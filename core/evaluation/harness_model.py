"""The in-memory model as an lm-evaluation-harness language model (`lm_eval.api.model.TemplateLM`).

Why our own adapter and not the harness's `HFLM(pretrained=model)`, which does work on an existing model
with transformers 5: a job here must report progress and stop between batches when cancelled, and must not
move or re-tie the weights of the model the workbench holds. The scoring is HFLM's own: the tokenization
of a (context, continuation) pair is `TemplateLM`'s (trailing spaces of the context move to the
continuation, the whole string is encoded and the context's tokens cut off the front; an empty context
scores after the BOS token), `tok_encode` follows HFLM's (the tokenizer's own special tokens, none added
twice), and each request's answer is (sum of the log-softmax of the continuation's tokens given
everything before them, whether every continuation token is the greedy one). Inputs longer than the
model's context are cut from the left, as HFLM does. Log-softmax is taken in float32.

The class is made on first use (`in_memory_lm`), on the harness's base imported then: importing lm-eval
takes seconds, which a session that never scores a task should not pay at start.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..events import Job, as_job
from ..models.loaded import context_length
from .local_tasks import harness

TOKENS_PER_BATCH = 4096      # rows per forward pass: as many as fit this many tokens (the longest row's length)


def in_memory_lm(model, tokenizer, **options):
    """An lm-eval language model scoring on `model` in memory (`InMemoryScoring`'s options)."""
    return _harness_class()(model, tokenizer, **options)


@functools.cache
def _harness_class() -> type:
    base = harness().api.model.TemplateLM
    return type("InMemoryLM", (InMemoryScoring, base), {"__doc__": InMemoryScoring.__doc__})


class InMemoryScoring:
    """Scores loglikelihood requests on `model` (already on `device`) in batches, longest first; the
    harness's `TemplateLM` is the next base (`_harness_class`)."""

    def __init__(self, model, tokenizer, *, device: torch.device | str = "cpu", batch_size: int = 0,
                 job: Job | None = None, label: str = "zero-shot"):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self._device = torch.device(device)
        self.batch_rows = batch_size          # 0: by TOKENS_PER_BATCH
        self.job, self.label = as_job(job), label
        self.max_length = context_length(model.config)
        self.vocab_size = len(tokenizer)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        special = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        prefix = self.tokenizer.decode(self.prefix_token_id)
        if add_special_tokens is None and prefix and string.startswith(prefix):
            special = {"add_special_tokens": False}       # the string carries its BOS already
        return self.tokenizer.encode(string, **special)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood(requests, disable_tqdm=True)      # progress goes to the job's events

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _rows_for(self, longest: int) -> int:
        return self.batch_rows or max(1, TOKENS_PER_BATCH // max(1, longest))

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        order = sorted(range(len(requests)), key=lambda i: (-len(requests[i][1]) - len(requests[i][2]),
                                                             tuple(requests[i][1] + requests[i][2])))
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        done, total = 0, len(requests)
        self.job.phase(self.label, 0, total)
        while done < total:
            self.job.check()
            first = requests[order[done]]
            longest = min(len(first[1]) + len(first[2]) - 1, self.max_length)
            chunk = order[done:done + self._rows_for(longest)]
            for index, answer in zip(chunk, self._score([requests[i] for i in chunk])):
                answers[index] = answer
                if requests[index][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
            done += len(chunk)
            self.job.phase(self.label, done, total)
        return answers

    def _score(self, chunk) -> list[tuple[float, bool]]:
        inputs = []
        for _, context, continuation in chunk:
            if not context or not continuation:
                raise UserError("a task gave an empty context or answer after tokenization: check its "
                                "doc_to_text and doc_to_choice.")
            inputs.append((context + continuation)[-(self.max_length + 1):][:-1])
        width = max(len(row) for row in inputs)
        batch = torch.zeros(len(inputs), width, dtype=torch.long)      # right padding, as HFLM's
        for row, ids in enumerate(inputs):
            batch[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        logits = self.model(input_ids=batch.to(self._device), use_cache=False).logits
        logprobs = F.log_softmax(logits.float(), dim=-1)
        answers = []
        for row, ((_, _, continuation), ids) in enumerate(zip(chunk, inputs)):
            length = len(continuation)
            scored = logprobs[row, len(ids) - length:len(ids)]                 # [length, vocab]
            target = torch.tensor(continuation, dtype=torch.long, device=scored.device)
            greedy = bool((scored.argmax(-1) == target).all())
            answers.append((float(scored.gather(1, target[:, None]).sum()), greedy))
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise UserError("this task scores whole texts (loglikelihood_rolling): measure that with "
                        "`eval --data FILE` (perplexity); --tasks takes multiple-choice tasks.")

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise UserError("this task asks the model to generate text (generate_until), which is not supported "
                        "here: --tasks takes multiple-choice tasks scored by log-likelihood.")
