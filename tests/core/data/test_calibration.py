"""Calibration: tokenizing the user's files and drawing seeded windows that are saved with the run."""

import hashlib

import pytest
import torch

from core.data.calibration import load_calibration, load_saved_calibration, save_calibration, tokenize
from core.errors import UserError
from core.events import Job, Phase, Recorder
from core.models.open import open_model
from core.data.texts import read_text
from tests.tiny_models import sample_text


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_folder):
    return open_model(tiny_llama_folder).tokenizer


def test_windows_are_slices_of_the_token_stream_at_the_reported_starts(tokenizer, text_file):
    events = Recorder()
    calib = load_calibration([text_file], tokenizer, nsamples=10, seqlen=50, seed=3, job=Job(events))
    stream = tokenize(tokenizer, read_text(text_file))
    assert calib.input_ids.shape == (10, 50) and calib.input_ids.dtype == torch.long
    assert calib.tokens_found == stream.numel() == len(text_file.read_bytes()) + 1   # one token per byte, plus BOS
    assert len(calib.starts) == 10
    for row, start in zip(calib.input_ids, calib.starts):
        assert 0 <= start <= stream.numel() - 50
        assert torch.equal(row, stream[start:start + 50])
    assert calib.files[0].sha256 == hashlib.sha256(text_file.read_bytes()).hexdigest()
    assert calib.files[0].tokens == stream.numel()
    assert [e.done for e in events.of(Phase)] == [0, 1]
    assert calib.describe() == {"files": [vars(calib.files[0])], "text_field": "text", "tokens_found": stream.numel(),
                                "nsamples": 10, "seqlen": 50, "seed": 3}


def test_windows_are_reproducible_for_a_seed_and_differ_for_another(tokenizer, text_file):
    draw = lambda seed: load_calibration([text_file], tokenizer, nsamples=8, seqlen=32, seed=seed)
    first, again, other = draw(0), draw(0), draw(1)
    assert torch.equal(first.input_ids, again.input_ids) and first.starts == again.starts
    assert not torch.equal(first.input_ids, other.input_ids) and first.starts != other.starts


def test_several_files_at_once(tokenizer, tmp_path, text_file):
    second = tmp_path / "more.md"
    second.write_text(sample_text(500, seed=5))
    calib = load_calibration([text_file, second], tokenizer, nsamples=4, seqlen=16)
    assert [f.path for f in calib.files] == [str(text_file.resolve()), str(second.resolve())]
    assert calib.tokens_found == sum(f.tokens for f in calib.files)
    assert calib.files[1].tokens == tokenize(tokenizer, second.read_text()).numel()


def test_text_shorter_than_one_window_says_how_many_tokens_are_needed(tokenizer, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("only a few words here")
    with pytest.raises(UserError) as info:
        load_calibration([path], tokenizer, nsamples=4, seqlen=512)
    message = str(info.value)
    assert "22 tokens" in message and "at least 512 tokens" in message     # 21 bytes + BOS


@pytest.mark.parametrize("name,content,expected", [
    ("empty.txt", b"", "holds no text"),
    ("blank.txt", b"  \n\n \t\n", "holds no text"),
    ("binary.raw", b"\x7fELF\x02\x01\x01\x00\x00\x00", "looks binary"),
    ("latin1.md", "Ærø ø".encode("latin-1"), "not UTF-8"),
])
def test_unusable_files_raise_a_user_error(tokenizer, tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected):
        load_calibration([path], tokenizer, nsamples=1, seqlen=8)


def test_bad_window_counts_and_no_files(tokenizer, text_file):
    with pytest.raises(UserError, match="no calibration files"):
        load_calibration([], tokenizer, seqlen=8)
    with pytest.raises(UserError, match="at least 1 window"):
        load_calibration([text_file], tokenizer, nsamples=0, seqlen=8)


def test_save_calibration_round_trips(tokenizer, text_file, tmp_path):
    from safetensors import safe_open

    calib = load_calibration([text_file], tokenizer, nsamples=5, seqlen=40, seed=7)
    path = tmp_path / "calibration.safetensors"
    save_calibration(calib, path)
    loaded = load_saved_calibration(path)
    assert loaded.dtype == torch.long and torch.equal(loaded, calib.input_ids)
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["input_ids"] and f.metadata()["seed"] == "7"
