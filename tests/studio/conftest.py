"""Fixtures for the studio tests: a tiny random Llama saved with a tiny offline tokenizer, calibration
text, settings in a temporary file, and a window that is closed (and checked for leaks) after each test."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

WORDS = ("the model prunes weights of every layer while the studio draws histograms and masks for each "
         "block so users see what sparsity does to attention and feed forward projections in language models").split()


def _text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    while n_words > 0:
        count = min(n_words, rng.randint(8, 20))
        lines.append(" ".join(rng.choice(WORDS) for _ in range(count)) + ".")
        n_words -= count
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def studio_tiny_llama(tmp_path_factory):
    """A 2-block Llama (hidden 64, MLP 128) with a byte-level BPE tokenizer, saved as safetensors."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("studio_tiny_llama")
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_text(400, 1)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=0, eos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def studio_calib_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("studio_text") / "calib.txt"
    path.write_text(_text(3000, 2))
    return path


@pytest.fixture
def studio_settings(tmp_path):
    from PySide6.QtCore import QSettings

    return QSettings(str(tmp_path / "studio.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def studio_window(qtbot, studio_settings):
    from PySide6.QtWidgets import QApplication

    from studio.main_window import MainWindow

    before = set(QApplication.topLevelWidgets())
    window = MainWindow(studio_settings)
    qtbot.addWidget(window)
    window.show()
    yield window
    window.close()
    window.deleteLater()
    qtbot.wait(10)
    leaked = [w for w in QApplication.topLevelWidgets() if w not in before and w.isVisible()]
    assert leaked == [], f"top-level windows left open: {leaked}"
