"""`compression-studio profile` and `prune --allocation sensitivity --profile` on a tiny model folder."""

from __future__ import annotations

import json

import pytest

from core.cli.main import main as cli_main
from core.formats.names import REPORT
from core.studies.profile_file import load_profile
from tests.tiny_models import tiny_model_folder

COMMON = ["--nsamples", "4", "--seqlen", "32", "--device", "cpu"]


def error_lines(err: str) -> list[str]:
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]


def run(argv, capsys):
    code = cli_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_profile_then_prune_from_it_records_the_allocation(tiny_llama_folder, text_file, tmp_path, capsys):
    out = tmp_path / "profile.json"
    code, stdout, _ = run(["profile", str(tiny_llama_folder), "--calib", str(text_file), "--eval", str(text_file),
                           "--unit", "layer", "--eval-windows", "2", "--out", str(out), *COMMON], capsys)
    assert code == 0 and "most sensitive" in stdout and "Spearman" in stdout
    profile = load_profile(out)
    assert profile.unit == "layer" and len(profile.entries) == 14 and profile.dense_ppl > 1
    top = profile.ranked()[0].name
    assert top in stdout.split("most sensitive")[1].splitlines()[1]

    code, stdout, _ = run(["prune", str(tiny_llama_folder), "--calib", str(text_file), "--allocation", "sensitivity",
                           "--profile", str(out), "--min-sparsity", "0.3", "--max-sparsity", "0.7",
                           "--out", str(tmp_path / "pruned"), *COMMON], capsys)
    assert code == 0 and "allocation sensitivity" in stdout
    recorded = json.loads((tmp_path / "pruned" / REPORT).read_text())["pruning"]["allocation"]
    blocks = [b["score"] for b in profile.block_scores()]
    assert recorded["kind"] == "sensitivity" and recorded["block_sensitivity"] == pytest.approx(blocks)
    assert sum(recorded["block_sparsity"]) / 2 == pytest.approx(0.5, rel=0.005)
    assert all(0.3 - 1e-9 <= s <= 0.7 + 1e-9 for s in recorded["block_sparsity"])
    more, less = sorted(range(2), key=lambda i: -blocks[i])
    assert recorded["block_sparsity"][more] <= recorded["block_sparsity"][less]

    other = tiny_model_folder("llama", tmp_path / "other", intermediate_size=96)
    code, _, err = run(["prune", str(other), "--calib", str(text_file), "--allocation", "sensitivity",
                        "--profile", str(out), "--out", str(tmp_path / "refused"), *COMMON], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "does not match this model" in error_lines(err)[0]
    assert "mlp.gate_proj is 128x64 there" in err
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("extra, message", [
    (["--unit", "head"], "invalid choice"),
    (["--sparsity", "1.2"], "outside [0, 1)"),
    (["--eval-windows", "0"], "at least one"),
])
def test_bad_profile_input_exits_2_with_one_line(extra, message, tiny_llama_folder, text_file, tmp_path, capsys):
    code, _, err = run(["profile", str(tiny_llama_folder), "--calib", str(text_file), "--eval", str(text_file),
                        "--out", str(tmp_path / "p.json"), *COMMON, *extra], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and message in error_lines(err)[0]
    assert not (tmp_path / "p.json").exists()
