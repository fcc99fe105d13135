"""Perplexity against a hand computation over the same non-overlapping windows."""

import math

import pytest
import torch

from core.data.calibration import tokenize
from core.errors import UserError
from core.evaluation.perplexity import evaluation_windows, perplexity
from core.models.open import open_model
from core.data.texts import read_text


@pytest.fixture(scope="module")
def loaded(tiny_llama_folder):
    return open_model(tiny_llama_folder)


def test_windows_are_consecutive_and_non_overlapping(loaded, text_file):
    stream = tokenize(loaded.tokenizer, read_text(text_file))
    windows = evaluation_windows(loaded.tokenizer, text_file, seqlen=100)
    assert windows.shape == (stream.numel() // 100, 100)
    assert torch.equal(windows.flatten(), stream[: windows.numel()])
    assert evaluation_windows(loaded.tokenizer, text_file, seqlen=100, max_windows=3).shape == (3, 100)


def test_perplexity_is_exp_of_the_mean_token_nll(loaded, text_file):
    windows = evaluation_windows(loaded.tokenizer, text_file, seqlen=64, max_windows=5)
    nll_sum, count = 0.0, 0
    with torch.no_grad():
        for window in windows:                                # one window at a time, log-softmax by hand
            logits = loaded.model(input_ids=window[None]).logits[0].double()
            log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)
            for t in range(window.numel() - 1):
                nll_sum -= float(log_probs[t, window[t + 1]])
                count += 1
    result = perplexity(loaded.model, windows, device="cpu", batch_size=2)   # batches of 2, 2 and 1
    assert result.tokens == count == 5 * 63 and result.windows == 5 and result.seqlen == 64
    assert result.nll == pytest.approx(nll_sum / count, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(nll_sum / count), rel=1e-5)
    assert 1 < result.ppl < 2 * loaded.model.config.vocab_size


def test_text_shorter_than_one_window(loaded, tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("short")
    with pytest.raises(UserError, match="6 tokens, fewer than one window of 64"):
        evaluation_windows(loaded.tokenizer, path, seqlen=64)


def test_windows_longer_than_the_context_are_refused_before_anything_runs(tmp_path):
    """GPT-2 and OPT learn one position embedding per place: past the context they would fail deep inside."""
    from core.pruning import pipeline
    from core.pruning.plan import PrunePlan
    from tests.tiny_models import CONTEXT, tiny_calibration, tiny_model_folder

    loaded = open_model(tiny_model_folder("gpt2", tmp_path / "gpt2"))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    calib = tiny_calibration(loaded.tokenizer, nsamples=2, seqlen=CONTEXT + 1)
    message = f"windows of {CONTEXT + 1} tokens are longer than the model's context length \\({CONTEXT}\\)"
    with pytest.raises(UserError, match=message):
        pipeline.prune(loaded, calib, PrunePlan.build(method="wanda"))
    with pytest.raises(UserError, match=message):
        perplexity(loaded.model, calib.input_ids, device="cpu")
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())
    assert perplexity(loaded.model, calib.input_ids[:, :CONTEXT], device="cpu").tokens == 2 * (CONTEXT - 1)
