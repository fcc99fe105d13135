"""Memory is checked before the model loads: a run that would not fit is streamed from disk or spilled, saying
so, or refused with the numbers; a GPU run whose largest block would not fit gets the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from core import workbench as wb
from core.cli import main
from core.cli import memory as cli_memory
from core.errors import UserError
from core.models.streaming import open_skeleton
from core.pruning import footprint
from core.pruning.footprint import RunShape, check_gpu, estimate, plan_memory
from core.pruning.plan import PrunePlan

from tests.tiny_models import tiny_model_folder


@pytest.fixture(scope="module")
def four_blocks(tmp_path_factory) -> Path:
    """A tiny Llama with four blocks, so that streaming (two blocks in memory) holds less than the whole."""
    return tiny_model_folder("llama", tmp_path_factory.mktemp("four-blocks"), num_hidden_layers=4)


def _args(model, texts, out, *extra):
    return ["prune", str(model), "--calib", str(texts), "--nsamples", "4", "--seqlen", "32", "--device", "cpu",
            "--out", str(out), *extra]


def _footprints(folder: Path, plan: PrunePlan, run: RunShape) -> dict[str, int]:
    model, layout, _ = open_skeleton(folder)
    return {"memory": estimate(model, layout, plan, run, streamed=False).total,
            "streamed": estimate(model, layout, plan, run, streamed=True).total}


def test_the_estimate_adds_up_its_parts_from_the_models_shapes(tiny_llama_folder):
    model, layout, _ = open_skeleton(tiny_llama_folder)
    run = RunShape(nsamples=4, seqlen=32, dtype=torch.float32)
    found = dict(estimate(model, layout, PrunePlan.build(method="wanda"), run, streamed=False).parts)
    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama_folder).parameters())
    assert found["weights"] == parameters * 4
    assert found["activations"] == 2 * 4 * 32 * model.config.hidden_size * 4
    half = dict(estimate(model, layout, PrunePlan.build(method="wanda"),
                         RunShape(4, 32, torch.bfloat16), streamed=False).parts)
    assert half["weights"] == parameters * 2 and half["activations"] == found["activations"] // 2
    hessian = dict(estimate(model, layout, PrunePlan.build(method="sparsegpt"), run, streamed=False).parts)
    assert hessian["one block's turn"] > found["one block's turn"]


def test_a_run_that_does_not_fit_in_memory_is_streamed_saying_so(four_blocks, text_file, tmp_path,
                                                                 monkeypatch, capsys):
    sizes = _footprints(four_blocks, PrunePlan.build(method="wanda"), RunShape(4, 32, torch.float32))
    assert sizes["streamed"] < sizes["memory"]
    monkeypatch.setattr(cli_memory, "available_memory", lambda: (sizes["streamed"] + sizes["memory"]) // 2)
    streamed = []
    real_open = wb.open_model
    monkeypatch.setattr(wb, "open_model", lambda bench, request, job: streamed.append(request.stream) or
                        real_open(bench, request, job))
    out = tmp_path / "out"
    assert main(_args(four_blocks, text_file, out, "--json")) == 0
    captured = capsys.readouterr()
    assert streamed == [True]
    assert "streaming the model from disk one block at a time" in captured.err
    assert json.loads(captured.out)["out"] == str(out.resolve())
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_a_run_that_cannot_stream_is_refused_with_the_reason_and_numbers(tiny_llama_folder, text_file, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.setattr(cli_memory, "available_memory", lambda: 100 << 20)
    monkeypatch.setattr(wb, "open_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(_args(tiny_llama_folder, text_file, tmp_path / "out", "--eval", str(text_file))) == 2
    err = capsys.readouterr().err
    line = [l for l in err.splitlines() if l.startswith("error:")][0]
    assert "--eval needs the whole model in memory" in line and "100.0 MiB" not in line
    assert "0.1 GiB is available" in line and "runtime" in line and "--no-memory-check" in line
    assert not (tmp_path / "out").exists()


def test_no_memory_check_runs_as_asked(tiny_llama_folder, text_file, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_memory, "available_memory", lambda: 100 << 20)
    assert main(_args(tiny_llama_folder, text_file, tmp_path / "out", "--no-memory-check")) == 0


def test_spilling_is_chosen_before_streaming_when_it_is_enough(tiny_llama_folder):
    plan = PrunePlan.build(method="wanda")
    model, layout, _ = open_skeleton(tiny_llama_folder)
    run = RunShape(4096, 32, torch.float32)                # activations dominate: 2 × 4096 × 32 × 64 × 4 bytes
    asked = estimate(model, layout, plan, run, streamed=False).total
    chosen = plan_memory(model, layout, plan, run, stream=False, can_stream=None, available=asked - (8 << 20))
    assert not chosen.stream and chosen.memory_budget is not None
    assert "spilling calibration activations to disk" in chosen.notes[0]
    as_asked = plan_memory(model, layout, plan, run, stream=False, can_stream=None, available=asked)
    assert as_asked == footprint.MemoryPlan(False, None)


def test_a_gpu_run_whose_largest_block_does_not_fit_gets_the_numbers(tiny_llama_folder):
    model, layout, _ = open_skeleton(tiny_llama_folder)
    run = RunShape(4, 32, torch.float16)
    with pytest.raises(UserError, match=r"one block's turn needs about .* on cuda:0 .* is free there"):
        check_gpu(model, layout, PrunePlan.build(method="sparsegpt"), run, "cuda:0", free=1 << 10)
    check_gpu(model, layout, PrunePlan.build(method="sparsegpt"), run, "cuda:0", free=1 << 30)


def test_available_memory_is_at_most_this_machines_memory():
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    assert 0 < footprint.available_memory() <= total
