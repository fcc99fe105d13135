"""Calibration text the model writes itself: seeded, the requested shape, the same tokens as a step-by-step
loop without the key/value cache (greedy and sampled), cancellable, and labelled wherever it is recorded."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from core import workbench as wb
from core.cli import main
from core.data.generated import GenerationOptions, generate_calibration, generate_ids, sample_next
from core.errors import UserError
from core.events import Cancelled, CancelToken, Job, Phase
from core.pruning.plan import PrunePlan


@pytest.fixture(scope="module")
def model(tiny_llama_folder):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_folder).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_folder):
    return AutoTokenizer.from_pretrained(tiny_llama_folder)


def reference_token(logits: torch.Tensor, temperature: float, top_p: float, uniform: float) -> int:
    """Nucleus sampling by hand: tokens by decreasing probability until their mass reaches top_p, then the
    token where `uniform` × that mass falls in their running sum."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.double() / temperature, dim=-1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])          # stable, like torch's sort
    kept, mass = [], 0.0
    for i in order:
        if kept and mass >= top_p:
            break
        kept.append(i)
        mass += probs[i]
    target, running = uniform * mass, 0.0
    for i in kept:
        running += probs[i]
        if target < running:
            return i
    return kept[-1]


@torch.no_grad()
def reference_ids(model, start, nsamples, seqlen, seed, options):
    """The whole prefix through the model at every step (no cache), one uniform number per window per step."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((nsamples, 1), start, dtype=torch.int64)
    for step in range(1, seqlen):
        logits = model(input_ids=ids, use_cache=False).logits[:, -1, :].float()
        uniform = torch.rand(nsamples, generator=generator, dtype=torch.float64)
        chosen = [reference_token(logits[r], options.temperature(step), options.top_p, float(uniform[r]))
                  for r in range(nsamples)]
        ids = torch.cat([ids, torch.tensor(chosen)[:, None]], dim=1)
    return ids


def test_greedy_is_step_by_step_argmax_without_the_cache(model):
    options = GenerationOptions(temperature_start=0, temperature_end=0)
    ids = generate_ids(model, 1, 2, 10, seed=0, options=options)
    assert torch.equal(ids, reference_ids(model, 1, 2, 10, 0, options))


def test_sampling_is_the_hand_written_nucleus_loop(model):
    options = GenerationOptions(temperature_start=1.5, temperature_end=0.8, schedule_tokens=6, top_p=0.9)
    ids = generate_ids(model, 1, 3, 10, seed=3, options=options)
    assert torch.equal(ids, reference_ids(model, 1, 3, 10, 3, options))


def test_a_seed_gives_the_same_ids_and_another_seed_others(model, tokenizer):
    a = generate_calibration(model, tokenizer, nsamples=3, seqlen=10, seed=7)
    b = generate_calibration(model, tokenizer, nsamples=3, seqlen=10, seed=7)
    c = generate_calibration(model, tokenizer, nsamples=3, seqlen=10, seed=8)
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert len({tuple(row.tolist()) for row in a.input_ids}) == 3          # the windows differ from each other


def test_windows_have_the_requested_shape_across_batches(model, tokenizer):
    options = GenerationOptions(batch_tokens=20)                             # 2 windows of 10 per batch
    calib = generate_calibration(model, tokenizer, nsamples=5, seqlen=10, seed=0, options=options)
    assert calib.input_ids.shape == (5, 10) and calib.input_ids.dtype == torch.int64
    assert calib.nsamples == 5 and calib.seqlen == 10
    assert (calib.input_ids[:, 0] == tokenizer.bos_token_id).all()
    assert int(calib.input_ids.min()) >= 0 and int(calib.input_ids.max()) < model.config.vocab_size
    described = calib.describe()
    assert described["source"] == "self-generated" and described["files"] == []
    assert described["generation"]["batch_tokens"] == 20 and described["seed"] == 0


def test_the_temperature_schedule_is_linear_then_constant():
    options = GenerationOptions(temperature_start=2.0, temperature_end=1.0, schedule_tokens=4)
    assert [options.temperature(i) for i in range(1, 7)] == [1.75, 1.5, 1.25, 1.0, 1.0, 1.0]


def test_top_p_never_draws_outside_the_nucleus_and_matches_its_probabilities():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(logits.expand(4000, 4), 1.0, 0.75, generator) for _ in range(5)])
    counts = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert counts[2] == 0 and counts[3] == 0                                 # 0.5 + 0.3 reach 0.75
    assert abs(counts[0] - 0.5 / 0.8) < 0.02 and abs(counts[1] - 0.3 / 0.8) < 0.02


def test_cancel_stops_between_steps_and_keeps_no_calibration(tiny_llama_folder):
    bench = wb.Workbench(remember=False)
    wb.open_model(bench, wb.OpenRequest(str(tiny_llama_folder)))
    token = CancelToken()
    steps = []

    def on_event(event):
        if isinstance(event, Phase) and event.name == "write calibration text":
            steps.append(event)
            token.cancel()

    with pytest.raises(Cancelled):
        wb.calibrate(bench, wb.CalibrationRequest((), 2, 200, generate=GenerationOptions()), Job(on_event, token))
    assert bench.calib is None and 0 < len(steps) == 1 and steps[0].done < steps[0].total
    assert "left" in steps[0].detail                                         # the ETA


def test_the_workbench_writes_with_the_dense_weights_while_a_run_is_applied(tiny_llama_folder):
    bench = wb.Workbench(remember=True)
    wb.open_model(bench, wb.OpenRequest(str(tiny_llama_folder)))
    dense = wb.calibrate(bench, wb.CalibrationRequest((), 2, 12, seed=1, generate=GenerationOptions()))
    record = wb.prune(bench, PrunePlan.build(method="magnitude", sparsity=0.5))
    pruned_weight = bench.loaded.model.model.layers[0].mlp.up_proj.weight.clone()
    again = wb.calibrate(bench, wb.CalibrationRequest((), 2, 12, seed=1, generate=GenerationOptions(top_p=0.99)))
    redo = wb.calibrate(bench, wb.CalibrationRequest((), 2, 12, seed=1, generate=GenerationOptions()))
    assert torch.equal(redo.input_ids, dense.input_ids)                      # written by the dense model
    assert again is not redo and bench.applied is record
    assert torch.equal(bench.loaded.model.model.layers[0].mlp.up_proj.weight, pruned_weight)  # run put back


def test_a_streamed_model_is_refused_with_a_line_saying_what_to_do(tiny_llama_folder):
    bench = wb.Workbench(remember=False)
    wb.open_model(bench, wb.OpenRequest(str(tiny_llama_folder), stream=True))
    with pytest.raises(UserError, match="give a calibration file"):
        wb.calibrate(bench, wb.CalibrationRequest((), 2, 12, generate=GenerationOptions()))


def test_cli_prune_without_calib_records_self_generated_text(tiny_llama_folder, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune", str(tiny_llama_folder), "--nsamples", "2", "--seqlen", "16", "--seed", "5",
                 "--method", "wanda", "--out", str(out), "--json", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "text the model writes itself" in captured.err                   # the one-line notice
    report = json.loads((out / "sparsity.json").read_text())
    assert report["calibration"]["source"] == "self-generated"
    assert report["calibration"]["nsamples"] == 2 and report["calibration"]["seed"] == 5
    saved = load_file(str(out / "calibration.safetensors"))["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_folder).eval()
    expected = generate_ids(model, 1, 2, 16, seed=5)
    assert torch.equal(saved, expected)                                      # the exact ids used are kept
    explicit = tmp_path / "explicit"
    assert main(["prune", str(tiny_llama_folder), "--calib", "generated", "--nsamples", "2", "--seqlen", "16",
                 "--seed", "5", "--out", str(explicit), "--device", "cpu"]) == 0
    assert torch.equal(load_file(str(explicit / "calibration.safetensors"))["input_ids"], expected)


def test_bad_generation_options_are_refused(model):
    with pytest.raises(UserError, match="top-p"):
        generate_ids(model, 1, 2, 8, 0, GenerationOptions(top_p=0))
    with pytest.raises(UserError, match="at most 256 tokens"):
        generate_calibration(model, None, nsamples=1, seqlen=300, context_length=256)
