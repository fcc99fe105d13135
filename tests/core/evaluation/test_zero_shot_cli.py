"""`eval --tasks` and `prune --eval-tasks` on a tiny model folder with a tiny local task: the results in the
JSON and in sparsity.json, and bad input ending with exit status 2 and one line."""

from __future__ import annotations

import json

import pytest

from core.cli import main

from test_zero_shot import DOCS, write_task  # the task written by the scorer tests (same folder)

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-tasks")
    write_task(folder)
    return folder


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_prune_with_eval_tasks_records_dense_pruned_and_retained_in_sparsity_json(tiny_llama_folder, text_file,
                                                                                   tasks_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    code, stdout, err = _run(["prune", str(tiny_llama_folder), "--calib", str(text_file), "--nsamples", "4",
                              "--seqlen", "64", "--sparsity", "0.7", "--method", "magnitude", "--eval-tasks",
                              "tiny_mc", "--eval-limit", "5", "--tasks-dir", str(tasks_dir), "--out", str(out),
                              "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    printed = json.loads(stdout)["zero_shot"]
    report = json.loads((out / "sparsity.json").read_text())["zero_shot"]
    assert report["tasks"] == printed["tasks"] and report["limit"] == 5
    row = report["tasks"]["tiny_mc"]
    assert row["n"] == 5 and row["source"] == str(tasks_dir / "tiny_mc.yaml")
    for metric in ("acc", "acc_norm"):
        assert {metric, f"{metric}_stderr"} <= row["dense"].keys() and {metric, f"{metric}_stderr"} <= row["pruned"].keys()
        dense, pruned = row["dense"][metric], row["pruned"][metric]
        assert row["retained"][metric] == (pytest.approx(pruned / dense) if dense else None)
        for value in (dense, pruned):       # a mean of 0/1 over 5 documents
            assert round(value * 5, 6) == int(round(value * 5))


def test_eval_tasks_alone_prints_the_table(tiny_llama_folder, tasks_dir, capsys):
    code, stdout, err = _run(["eval", str(tiny_llama_folder), "--tasks", "tiny_mc", "--tasks-dir", str(tasks_dir),
                              "--device", "cpu"], capsys)
    assert code == 0, err
    rows = [line.split() for line in stdout.splitlines() if line.strip().startswith("tiny_mc")]
    assert [row[2] for row in rows] == ["acc", "acc_norm", "acc_bytes"] and {row[1] for row in rows} == {str(len(DOCS))}


@pytest.mark.parametrize("extra, expected", [
    (["--tasks", "no_such_task"], "unknown task 'no_such_task'"),
    ([], "--data FILE (perplexity), --tasks"),
    (["--tasks", "tiny_mc", "--limit", "-3"], "--limit -3"),
    (["--data", "x.txt", "--limit", "3"], "--limit goes with --tasks"),
])
def test_bad_task_options_exit_2_with_one_line(tiny_llama_folder, tasks_dir, capsys, extra, expected):
    code, _, err = _run(["eval", str(tiny_llama_folder), "--tasks-dir", str(tasks_dir), *extra]
                        if "--tasks" in extra else ["eval", str(tiny_llama_folder), *extra], capsys)
    assert code == 2 and expected in _error_line(err)


def test_a_malformed_task_file_exits_2_naming_it(tiny_llama_folder, tmp_path, capsys):
    path = write_task(tmp_path / "tasks")
    path.write_text("task: [unclosed\n")
    code, _, err = _run(["eval", str(tiny_llama_folder), "--tasks", "tiny_mc", "--tasks-dir", str(tmp_path / "tasks")],
                        capsys)
    assert code == 2 and str(path) in _error_line(err)
