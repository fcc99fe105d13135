"""The command line: every bad input ends with exit status 2, one line on stderr and nothing written;
a good run writes a folder transformers loads and prints the JSON issue 2 asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.cli import main

from tests.tiny_models import HIDDEN, INTERMEDIATE


@pytest.fixture
def tiny_model(tiny_llama_folder) -> Path:
    return tiny_llama_folder


@pytest.fixture
def texts(text_file) -> Path:
    return text_file


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_prune_writes_a_loadable_folder_and_the_promised_json(tiny_model, texts, tmp_path, capsys):
    out = tmp_path / "pruned"
    code, stdout, _ = _run(["prune", str(tiny_model), "--calib", str(texts), "--nsamples", "4", "--seqlen", "64",
                            "--method", "wanda", "--pattern", "2:4", "--eval", str(texts), "--eval-windows", "2",
                            "--out", str(out), "--json", "--device", "cpu"], capsys)
    assert code == 0
    result = json.loads(stdout)
    for key in ("method", "pattern", "target_sparsity", "sparsity", "layers", "skipped", "seconds", "ppl_dense", "ppl", "out"):
        assert key in result
    assert result["pattern"] == "2:4" and result["layers"] == 14 and abs(result["sparsity"] - 0.5) < 1e-3
    assert result["ppl"] > 1 and result["ppl_dense"] > 1
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    down = reloaded.model.layers[1].mlp.down_proj.weight
    assert (down.reshape(down.shape[0], -1, 4) != 0).sum(-1).max() <= 2
    report = json.loads((out / "sparsity.json").read_text())
    assert report["pruning"]["method"] == "wanda" and report["calibration"]["nsamples"] == 4


def test_alps_owl_and_recovery_are_printed_and_recorded_in_sparsity_json(tiny_model, texts, tmp_path, capsys):
    out = tmp_path / "pruned"
    code, stdout, _ = _run(["prune", str(tiny_model), "--calib", str(texts), "--nsamples", "4", "--seqlen", "64",
                            "--method", "alps", "--alps-iterations", "40", "--sparsity", "0.6", "--allocation", "owl",
                            "--recover", "--recover-steps", "3", "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0
    assert "allocation owl" in stdout and "recovery (blockwise)" in stdout
    table = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [int(row[0]) for row in table] == [0, 1]       # one line per block
    report = json.loads((out / "sparsity.json").read_text())["pruning"]
    assert report["alps"]["max_iterations"] == 40 and report["alps"]["rho"] == 0.1
    allocation = report["allocation"]
    assert allocation["kind"] == "owl" and allocation["owl_lambda"] == 0.08
    assert sum(allocation["block_sparsity"]) / 2 == pytest.approx(0.6)
    assert [f"{s:.1%}" for s in allocation["block_sparsity"]] == [row[2] for row in table]
    assert report["recovery"]["mode"] == "blockwise" and report["recovery"]["steps"] == 3
    assert [b["block"] for b in report["recovery_blocks"]] == [0, 1]


def test_inspect_lists_every_linear_layer(tiny_model, capsys):
    code, stdout, _ = _run(["inspect", str(tiny_model), "--json"], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert [len(b["layers"]) for b in result["blocks"]] == [7, 7]
    assert result["blocks"][0]["layers"][-1] == {"name": "mlp.down_proj", "shape": [HIDDEN, INTERMEDIATE],
                                                 "parameters": HIDDEN * INTERMEDIATE}


def test_eval_prints_perplexity(tiny_model, texts, capsys):
    code, stdout, _ = _run(["eval", str(tiny_model), "--data", str(texts), "--seqlen", "64", "--eval-windows", "2",
                            "--json"], capsys)
    assert code == 0 and json.loads(stdout)["windows"] == 2


def _bad_inputs(tiny_model, texts, tmp_path):
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 10)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((tiny_model / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file at all")
    existing = tmp_path / "exists"
    existing.mkdir()
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    base = ["prune", str(tiny_model), "--calib", str(texts), "--seqlen", "64", "--nsamples", "2"]
    out = ["--out", str(tmp_path / "out")]
    return {
        "missing model": (["prune", str(tmp_path / "nope"), "--calib", str(texts)] + out, "no such file or folder"),
        "corrupt model": (["prune", str(corrupt), "--calib", str(texts)] + out, "could not read the model"),
        "binary calibration": (["prune", str(tiny_model), "--calib", str(binary)] + out, "binary"),
        "empty calibration": (["prune", str(tiny_model), "--calib", str(empty)] + out, "no text"),
        "short calibration": (["prune", str(tiny_model), "--calib", str(short), "--seqlen", "64"] + out, "fewer than one window of 64"),
        "missing calibration": (["prune", str(tiny_model), "--calib", str(tmp_path / "nope.txt")] + out, "no such file"),
        "sparsity 1": (base + ["--sparsity", "1"] + out, "outside [0, 1)"),
        "sparsity negative": (base + ["--sparsity", "-0.1"] + out, "outside [0, 1)"),
        "N >= M": (base + ["--pattern", "4:4"] + out, "0 < N < M"),
        "bad pattern": (base + ["--pattern", "half"] + out, "unknown pattern"),
        "output exists": (base + ["--out", str(existing)], "already exists"),
        "output not writable": (base + ["--out", str(readonly / "sub")], "cannot write"),
        "unknown method": (base + ["--method", "obs"] + out, "invalid choice"),
        "cuda without a gpu": (base + ["--device", "cuda"] + out, "no CUDA GPU") if not torch.cuda.is_available() else None,
        "recovery steps negative": (base + ["--recover", "--recover-steps", "-1"] + out, "positive number of steps"),
        "recovery epochs zero": (base + ["--recover", "--recover-epochs", "0"] + out, "positive number of steps"),
        "recovery rate zero": (base + ["--recover", "e2e", "--recover-lr", "0"] + out, "learning rate 0 must be positive"),
        "recovery batch zero": (base + ["--recover", "--recover-batch", "0"] + out, "at least 1"),
        "owl beyond the range": (base + ["--allocation", "owl", "--sparsity", "0.95"] + out, "cannot allow"),
        "owl lambda too large": (base + ["--allocation", "owl", "--owl-lambda", "0.7"] + out, "must be in [0, 0.5]"),
        "alps rho zero": (base + ["--method", "alps", "--alps-rho", "0"] + out, "ρ must be positive"),
    }


@pytest.mark.parametrize("case", ["missing model", "corrupt model", "binary calibration", "empty calibration",
                                  "short calibration", "missing calibration", "sparsity 1", "sparsity negative",
                                  "N >= M", "bad pattern", "output exists", "output not writable", "unknown method",
                                  "cuda without a gpu", "recovery steps negative", "recovery epochs zero",
                                  "recovery rate zero", "recovery batch zero", "owl beyond the range",
                                  "owl lambda too large", "alps rho zero"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tiny_model, texts, tmp_path, capsys):
    import os

    spec = _bad_inputs(tiny_model, texts, tmp_path)[case]
    if spec is None:
        pytest.skip("this machine has CUDA")
    if case == "output not writable" and os.geteuid() == 0:
        # root writes anywhere; make the parent a file instead, which nobody can write into
        blocker = tmp_path / "blocker"
        blocker.write_text("a file, not a folder")
        spec = (spec[0][:-1] + [str(blocker / "sub")], "not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = _run(spec[0], capsys)
    assert code == 2
    assert spec[1] in _one_line_error(err)
    assert stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_console_script_reports_errors_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "core.cli", "inspect", str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "Traceback" not in done.stderr


def test_stream_writes_the_same_weights_as_the_in_memory_prune(tiny_model, texts, tmp_path, capsys):
    from safetensors.torch import load_file

    common = ["prune", str(tiny_model), "--calib", str(texts), "--nsamples", "4", "--seqlen", "64",
              "--method", "sparsegpt", "--device", "cpu", "--json"]
    assert _run(common + ["--out", str(tmp_path / "memory")], capsys)[0] == 0
    code, stdout, _ = _run(common + ["--stream", "--memory-budget", "1KB", "--out", str(tmp_path / "stream")], capsys)
    assert code == 0 and json.loads(stdout)["layers"] == 14

    def tensors(folder):
        found = {}
        for file in sorted(folder.glob("*.safetensors")):
            if file.name != "calibration.safetensors":
                found.update(load_file(file))
        return found

    memory, stream = tensors(tmp_path / "memory"), tensors(tmp_path / "stream")
    assert memory.keys() == stream.keys()
    assert all(torch.equal(memory[k], stream[k]) for k in memory)


@pytest.mark.parametrize("extra, message", [
    (["--stream", "--eval", "EVAL"], "run `compression-studio eval"),
    (["--memory-budget", "lots"], "not a positive size"),
    (["--stream", "--recover", "e2e"], "needs the whole model in memory twice"),
])
def test_streaming_options_refuse_what_they_cannot_do(extra, message, tiny_model, texts, tmp_path, capsys):
    extra = [str(texts) if e == "EVAL" else e for e in extra]
    code, _, err = _run(["prune", str(tiny_model), "--calib", str(texts), "--out", str(tmp_path / "o")] + extra, capsys)
    assert code == 2 and message in _one_line_error(err)
    assert not (tmp_path / "o").exists()
