"""`compression-studio bench`, `unpack` and `prune --compact` from the command line, in process."""

import csv
import json
import random

import pytest
import torch
from safetensors.torch import load_file

from tests.bench_fixtures import tiny_llama
from core.cli import main


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    loaded = tiny_llama()
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    text = folder.parent / "calib.txt"
    rng = random.Random(0)
    text.write_text("\n".join(" ".join(f"w{rng.randrange(1, 128)}" for _ in range(40)) for _ in range(20)))
    return folder, text


def test_bench_json_and_csv(tiny_folder, tmp_path, capsys):
    folder, _ = tiny_folder
    table = tmp_path / "bench.csv"
    code = main(["bench", str(folder), "--device", "cpu", "--tokens", "1,8", "--prompt-tokens", "8",
                 "--new-tokens", "3", "--json", "--csv", str(table)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["note"].startswith("CPU: no sparse tensor cores")
    assert {k["tokens"] for k in report["kernels"]} == {1, 8} and all(k["status"] == "ok" for k in report["kernels"])
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == len(report["kernels"]) + len(report["end_to_end"])
    assert "benchmark" in captured.err                       # progress goes to stderr


@pytest.mark.parametrize("argv,needle", [
    (["--tokens", "1,x"], "--tokens"),
    (["--dtype", "fp32"], "invalid choice"),
    (["--csv", "/no/such/folder/x.csv"], "does not exist"),
])
def test_bench_bad_inputs_exit_2_with_one_line(tiny_folder, capsys, argv, needle):
    folder, _ = tiny_folder
    assert main(["bench", str(folder), "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_prune_compact_then_unpack_restores_the_dense_export(tiny_folder, tmp_path, capsys):
    folder, text = tiny_folder
    common = ["prune", str(folder), "--calib", str(text), "--method", "magnitude", "--pattern", "2:4",
              "--nsamples", "4", "--seqlen", "16", "--device", "cpu", "--json"]
    assert main([*common, "--out", str(tmp_path / "dense")]) == 0
    assert main([*common, "--compact", "--out", str(tmp_path / "compact")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["compact"]["layers"] == 14 and result["compact"]["ratio"] < 0.9
    assert main(["unpack", str(tmp_path / "compact"), "--out", str(tmp_path / "restored")]) == 0
    dense, restored = load_file(tmp_path / "dense" / "model.safetensors"), load_file(tmp_path / "restored" / "model.safetensors")
    assert dense.keys() == restored.keys() and all(torch.equal(dense[k], restored[k]) for k in dense)


def test_compact_needs_two_four_and_unpack_needs_a_compact_folder(tiny_folder, tmp_path, capsys):
    folder, text = tiny_folder
    code = main(["prune", str(folder), "--calib", str(text), "--pattern", "4:8", "--compact", "--out",
                 str(tmp_path / "x")])
    assert code == 2 and "--pattern 2:4" in capsys.readouterr().err
    assert main(["unpack", str(folder), "--out", str(tmp_path / "y")]) == 2
    assert "not a compact" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
