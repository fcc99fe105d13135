"""Tiny random models of every supported family, saved as ordinary Hugging Face folders.

Each folder holds a randomly initialised model (hidden size 64, 2 blocks, every linear layer's input
dimension a multiple of 4 and 8) and a byte-level tokenizer built here, so nothing needs the network.
`tiny_model_folder(family, folder)` builds one anywhere; tests/conftest.py turns them into fixtures.
"""

from __future__ import annotations

from pathlib import Path

import torch

WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw"

# Byte-level tokenizer: 256 byte symbols + 3 specials, no merges, so any text gives one token per byte.
SPECIALS = ["<unk>", "<s>", "</s>"]
TINY_VOCAB = 256 + len(SPECIALS)
HIDDEN, INTERMEDIATE, HEADS, LAYERS, CONTEXT = 64, 128, 4, 2, 256


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):  # alphabet() comes in random order
        vocab.setdefault(symbol, len(vocab))
    assert len(vocab) == TINY_VOCAB
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def tiny_config(family: str, **overrides):
    """A transformers config for `family` (a model_type) sized for tests."""
    import transformers as tf

    common = dict(vocab_size=TINY_VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    llama_like = dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=CONTEXT)
    configs = {
        "llama": lambda: tf.LlamaConfig(**llama_like, **common),
        "mistral": lambda: tf.MistralConfig(**llama_like, sliding_window=None, **common),
        "qwen2": lambda: tf.Qwen2Config(**llama_like, **common),
        "gemma": lambda: tf.GemmaConfig(**llama_like, head_dim=HIDDEN // HEADS, **common),
        "phi3": lambda: tf.Phi3Config(**llama_like, **common),
        "opt": lambda: tf.OPTConfig(hidden_size=HIDDEN, ffn_dim=INTERMEDIATE, num_hidden_layers=LAYERS,
                                    num_attention_heads=HEADS, word_embed_proj_dim=HIDDEN,
                                    max_position_embeddings=CONTEXT, **common),
        "gpt2": lambda: tf.GPT2Config(n_embd=HIDDEN, n_inner=INTERMEDIATE, n_layer=LAYERS, n_head=HEADS,
                                      n_positions=CONTEXT, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                             num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                             max_position_embeddings=CONTEXT, **common),
        "bloom": lambda: tf.BloomConfig(hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, **common),
    }
    config = configs[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_model(family: str, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=torch.float32)
    # Random init with std 0.02 makes every block nearly the identity; larger weights make pruning matter.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0, 0.1)
    return model.eval()


def tiny_model_folder(family: str, folder: Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random `family` model and the byte-level tokenizer into `folder`; return it."""
    folder = Path(folder)
    tiny_model(family, seed, **overrides).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def sample_text(words: int = 4000, seed: int = 0) -> str:
    """Deterministic English-like text, for calibration and evaluation files."""
    import random

    rng = random.Random(seed)
    lexicon = ("the model prunes weights of every layer while the calibration text flows through blocks and "
               "each column keeps its norm so that sparse matrices stay close to dense ones").split()
    return " ".join(rng.choice(lexicon) for _ in range(words)) + "\n"


def tiny_calibration(tokenizer, nsamples: int = 8, seqlen: int = 32, seed: int = 0):
    """A CalibrationSet of `nsamples` windows drawn from `sample_text()` the way the engine draws them."""
    from core.data.calibration import CalibrationSet, draw_windows, tokenize

    windows, starts = draw_windows(tokenize(tokenizer, sample_text(seed=seed)), nsamples, seqlen, seed)
    return CalibrationSet(windows, [], seed, starts=starts)
