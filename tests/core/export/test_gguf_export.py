"""GGUF export: files transformers' GGUF reader turns back into the same model, zeros kept exactly zero."""

import json

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import UserError
from core.events import CancelToken, Cancelled, Job, Message, Phase, Recorder
from core.export.gguf import GGUF_TYPES, check_gguf, export_gguf, gguf_bytes, write_gguf_file
from core.formats.names import REPORT
from core.models.demo import ensure_demo
from core.models.open import open_model
from core.patterns import Pattern
from core.pruning.masks import nm_mask
from tests.tiny_models import SPECIALS, sample_text, tiny_model, tiny_model_folder

SAMPLES = ["Hello world!", "  two  spaces,\n\nnew lines and 12345 digits", "ünïcödé 日本語 😀 ",
           "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"]
REPORT_IN = {"tool": {"name": "compression-studio"}, "pruning": None}


BPE_VOCAB = 320


def bpe_tokenizer(split_regex=None):
    """A small byte-level BPE trained on the sample text (llama.cpp needs merges), adding <s> like Llama 2;
    with `split_regex`, text is split by it first, the way Llama 3 and Qwen2 tokenizers do."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_regex:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split_regex), "isolated"),
                                                         pre_tokenizers.ByteLevel(False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator([sample_text()], trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def tiny_folder(family, folder, **overrides):
    """A tiny random `family` model (hidden 64, 2 blocks) with the BPE tokenizer above."""
    tiny_model(family, vocab_size=BPE_VOCAB, **overrides).save_pretrained(folder)
    bpe_tokenizer().save_pretrained(folder)
    return folder


def logits(model, length=24):
    ids = torch.randint(0, BPE_VOCAB, (1, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids).logits


def read_back(folder, qtype):
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=f"model-{qtype}.gguf", dtype=torch.float32).eval()


def prune_two_four(model):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name and "lm_head" not in name:
                param.masked_fill_(nm_mask(param.abs(), Pattern(2, 4)), 0)
    return model


def as_stored(model, qtype):
    """The model with every matrix rounded the way the GGUF file stores it (rows of 32 weights quantized)."""
    kind = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
            "q4_0": gguf.GGMLQuantizationType.Q4_0}[qtype]
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                w = param.numpy()
                param.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w, kind), kind)))
    return model


def nothing_written(out):
    return not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*"))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return tiny_folder("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def tiny(tiny_llama):
    return open_model(tiny_llama)


@pytest.fixture(scope="module")
def demo_vocab_model(tmp_path_factory):
    """A tiny random Llama with the demo's real tokenizer (49,152 byte-level BPE tokens) and its chat template."""
    folder = tmp_path_factory.mktemp("demo-vocab")
    tiny_model("llama", vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(ensure_demo()).save_pretrained(folder)
    return open_model(folder)


@pytest.fixture(scope="module")
def demo_vocab_file(demo_vocab_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("demo-vocab-gguf") / "model-q8_0.gguf"
    return path, write_gguf_file(demo_vocab_model, path, "q8_0")


def test_f16_reads_back_as_the_same_llama(tiny, tmp_path):
    recorder = Recorder()
    out = export_gguf(tiny, tmp_path / "out", REPORT_IN, "f16", job=Job(recorder))
    assert sorted(p.name for p in out.iterdir()) == ["model-f16.gguf", REPORT]
    back = read_back(out, "f16")
    source, config = tiny.model.config, back.config
    assert type(back).__name__ == "LlamaForCausalLM"
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "max_position_embeddings", "vocab_size", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(config, key) == pytest.approx(getattr(source, key)), key
    assert config.rope_parameters["rope_theta"] == source.rope_parameters["rope_theta"]

    # The file holds the model with its matrices rounded to f16 and nothing else: against that rounding the logits
    # agree to the last bit (measured 0; 1e-6 leaves room for thread-dependent summation order). Against the f32
    # model the rounding shows: F16 keeps 11 significant bits, measured max |diff| 3e-3 on logits of size ~3.
    expected = logits(as_stored(open_model(tiny.path).model, "f16"))
    assert torch.allclose(logits(back), expected, atol=1e-6, rtol=0)
    assert torch.allclose(logits(back), logits(tiny.model), atol=2e-2, rtol=0)
    assert not torch.allclose(logits(back), logits(tiny.model), atol=1e-6, rtol=0)  # it really is f16

    phases = [e for e in recorder.of(Phase) if e.name == "export gguf"]
    assert [e.done for e in phases] == list(range(len(phases))) and phases[-1].done == phases[-1].total == 21
    report = json.loads((out / REPORT).read_text())
    assert report["tool"] == REPORT_IN["tool"] and report["gguf"]["file"] == "model-f16.gguf"
    assert report["gguf"]["bytes"] == (out / "model-f16.gguf").stat().st_size and report["gguf"]["kept_f16"] == []


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_pruned_weights_stay_exactly_zero(tiny, tmp_path, qtype):
    model = prune_two_four(tiny.model)
    out = export_gguf(tiny, tmp_path / "out", REPORT_IN, qtype)
    back = read_back(out, qtype)
    stored = as_stored(prune_two_four(open_model(tiny.path).model), qtype)
    for name, weight in model.named_parameters():
        if weight.dim() == 2 and "embed" not in name and "lm_head" not in name:
            got = back.state_dict()[name]
            assert torch.all(got[weight == 0] == 0), name
            assert (got == 0).float().mean() >= 0.5, name
            # Whatever rounding the type does, it is the gguf package's, bit for bit, and the Q/K rows are
            # back in Hugging Face order.
            assert torch.equal(got, stored.state_dict()[name]), name
    assert torch.allclose(logits(back), logits(stored), atol=1e-6, rtol=0)  # measured 0
    # Against the unquantized model only a loose bound, since the exact check is the one above: measured max |diff|
    # 2.4e-3 (f16), 5.6e-2 (q8_0), 0.97 (q4_0: 16 levels per block of 32 weights) on logits of size ~3.
    tolerance = {"f16": 2e-2, "q8_0": 0.3, "q4_0": 2.5}[qtype]
    assert (logits(back) - logits(model)).abs().max() < tolerance


def test_matrices_are_quantized_norms_stay_f32_and_odd_rows_stay_f16(tmp_path):
    loaded = open_model(tiny_folder("llama", tmp_path / "odd", intermediate_size=72))  # 72 % 32 != 0
    recorder = Recorder()
    out = export_gguf(loaded, tmp_path / "out", REPORT_IN, "q4_0", job=Job(recorder))
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out / "model-q4_0.gguf").tensors}
    assert types["blk.0.ffn_down.weight"] == types["blk.1.ffn_down.weight"] == "F16"
    matrices = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up")
    assert {types[f"blk.{block}.{name}.weight"] for block in (0, 1) for name in matrices} == {"Q4_0"}
    assert types["token_embd.weight"] == types["output.weight"] == "Q4_0"
    assert types["output_norm.weight"] == types["blk.0.attn_norm.weight"] == types["blk.1.ffn_norm.weight"] == "F32"
    warnings = [e.text for e in recorder.of(Message) if e.level == "warning"]
    assert len(warnings) == 1 and "blk.0.ffn_down.weight" in warnings[0] and "2 matrices stay F16" in warnings[0]
    report = json.loads((out / REPORT).read_text())
    assert report["gguf"]["kept_f16"] == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]


@pytest.mark.parametrize("family, overrides", [
    ("mistral", {}),                            # written as a llama, as llama.cpp does
    ("qwen2", {"tie_word_embeddings": True}),   # q/k/v biases, no row permutation, no output tensor
    ("llama", {"head_dim": 32}),                # heads wider than hidden size / heads
])
def test_other_families_and_shapes_read_back_the_same(family, overrides, tmp_path):
    loaded = open_model(tiny_folder(family, tmp_path / family, **overrides))
    out = export_gguf(loaded, tmp_path / "out", REPORT_IN, "q8_0")
    names = {t.name for t in gguf.GGUFReader(out / "model-q8_0.gguf").tensors}
    assert ("output.weight" in names) == (family != "qwen2")
    assert ("blk.0.attn_q.bias" in names) == (family == "qwen2")
    back = read_back(out, "q8_0")
    assert family == "qwen2" or back.config.head_dim == loaded.model.config.head_dim
    expected = logits(as_stored(open_model(loaded.path).model, "q8_0"))
    assert torch.allclose(logits(back), expected, atol=1e-6, rtol=0)


def test_the_tokenizer_survives(demo_vocab_model, demo_vocab_file):
    path, _ = demo_vocab_file
    original = demo_vocab_model.tokenizer
    back = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in SAMPLES:
        assert back(text)["input_ids"] == original(text)["input_ids"], text
    assert back.decode(original(SAMPLES[2])["input_ids"]) == SAMPLES[2]
    for special in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(back, special) == getattr(original, special), special
    assert back.chat_template == original.chat_template and "<|im_start|>" in back.chat_template
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.ggml.pre"].contents() == "gpt2"
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False


def test_a_tokenizer_that_adds_bos_keeps_adding_it(tiny, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf_file(tiny, path, "f16")
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ("hello", "abc def"):
        ids = tiny.tokenizer(text)["input_ids"]
        assert ids[0] == tiny.tokenizer.bos_token_id and back(text)["input_ids"] == ids


def test_a_split_rule_is_named_for_llama_cpp(tiny, tmp_path):
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tiny.tokenizer = bpe_tokenizer(PRETOKENIZE_REGEX)
    path = tmp_path / "qwen2-split.gguf"
    write_gguf_file(tiny, path, "f16")
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == "qwen2"
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in SAMPLES:
        assert back(text)["input_ids"] == tiny.tokenizer(text)["input_ids"], text


def test_gguf_bytes_predicts_the_file_size(demo_vocab_model, demo_vocab_file, tiny, tmp_path):
    path, written = demo_vocab_file
    assert written == path.stat().st_size
    # 1.6 MB of the 2.4 MB file is tokenizer metadata here, so this checks the metadata is counted too.
    assert abs(gguf_bytes(demo_vocab_model, "q8_0") - written) <= 64
    for qtype in GGUF_TYPES:
        size = write_gguf_file(tiny, tmp_path / f"{qtype}.gguf", qtype)
        assert abs(gguf_bytes(tiny, qtype) - size) <= 64
    assert gguf_bytes(tiny, "q4_0") < gguf_bytes(tiny, "q8_0") < gguf_bytes(tiny, "f16")


def test_unknown_type_writes_nothing(tiny, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="q4_0"):
        export_gguf(tiny, out, REPORT_IN, "q5_k")
    assert nothing_written(out)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_unsupported_architecture_writes_nothing(family, tmp_path):
    loaded = open_model(tiny_model_folder(family, tmp_path / family))
    out = tmp_path / "out"
    with pytest.raises(UserError, match="Llama, Mistral and Qwen2"):
        export_gguf(loaded, out, REPORT_IN, "f16")
    assert nothing_written(out)
    with pytest.raises(UserError):
        gguf_bytes(loaded, "f16")


def test_missing_or_mergeless_tokenizer_and_rope_scaling_are_refused(tiny, tiny_llama_folder):
    tokenizer = tiny.tokenizer
    tiny.tokenizer = None
    with pytest.raises(UserError, match="no fast tokenizer"):
        check_gguf(tiny, "f16")
    tiny.tokenizer = tokenizer
    check_gguf(tiny, "f16")
    with pytest.raises(UserError, match="no BPE merges"):  # the shared tiny models' byte tokenizer
        check_gguf(open_model(tiny_llama_folder), "f16")
    tiny.model.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(UserError, match="linear rope scaling"):
        check_gguf(tiny, "f16")


def test_an_existing_folder_needs_overwrite(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        export_gguf(tiny, out, REPORT_IN, "q8_0")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export_gguf(tiny, out, REPORT_IN, "q8_0", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["model-q8_0.gguf", REPORT]


def test_cancelling_leaves_nothing_behind(tiny, tmp_path):
    token = CancelToken()

    def cancel_at_third_tensor(event):
        if isinstance(event, Phase) and event.name == "export gguf" and event.done == 2:
            token.cancel()

    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        export_gguf(tiny, out, REPORT_IN, "f16", job=Job(cancel_at_third_tensor, token))
    assert nothing_written(out) and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_demo_model_at_q8_0_reads_back_close(tmp_path):
    demo = open_model("demo")
    out = export_gguf(demo, tmp_path / "demo", REPORT_IN, "q8_0")
    assert abs(gguf_bytes(demo, "q8_0") - (out / "model-q8_0.gguf").stat().st_size) <= 64
    back = read_back(out, "q8_0")
    assert back.config.tie_word_embeddings and back.config.num_hidden_layers == 30  # no output.weight written
    ids = demo.tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = demo.model(ids).logits, back(ids).logits
    # Q8_0 keeps 8 bits per weight (one f16 scale per 32): measured max |diff| 0.87 on logits spanning -27..27,
    # and the next-token choice agrees at every position.
    assert (got - expected).abs().max() < 2.0
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_llama_cpp_runs_the_file(demo_vocab_model, demo_vocab_file):
    llama_cpp = pytest.importorskip("llama_cpp")
    path, _ = demo_vocab_file
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    text = SAMPLES[1]
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == demo_vocab_model.tokenizer(text)["input_ids"]
    result = llm("Hello", max_tokens=4, temperature=0.0)
    assert result["usage"]["completion_tokens"] >= 1
