"""Perplexity against a hand computation over the same non-overlapping windows."""

import math

import pytest
import torch

from core.calibration import tokenize
from core.errors import UserError
from core.evaluate import evaluation_windows, perplexity
from core.models import open_model
from core.texts import read_text


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
