"""Fixtures shared by tests/core and tests/studio; the builders themselves live in tests/tiny_models.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

from tests.tiny_models import WIKI, sample_text, tiny_model_folder  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory) -> Path:
    """A tiny random Llama (2 blocks, hidden 64) with a byte-level tokenizer; do not modify it in place."""
    return tiny_model_folder("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """About 20,000 characters of English-like text (one token per byte with the tiny tokenizer)."""
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(sample_text())
    return path


@pytest.fixture(scope="session")
def wiki_dir() -> Path:
    if not (WIKI / "wiki.test.raw").is_file():
        pytest.fail(f"WikiText-2 raw files are missing from {WIKI}")
    return WIKI
