"""Zero-shot scoring through lm-evaluation-harness, offline: a tiny multiple-choice task written here in the
harness's YAML format with a local JSONL dataset, run on a tiny random model, against a hand computation
of every choice's log-likelihood (and against the harness's own HFLM on the same requests)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from core.evaluation.harness_model import in_memory_lm
from core.evaluation.local_tasks import load_tasks, parse_task_names
from core.evaluation.zero_shot import TaskRequest, evaluate_tasks, score_tasks
from core.events import CancelToken, Cancelled, Job, Phase, Recorder
from core.models.open import open_model

pytest.importorskip("lm_eval")     # the optional extra `eval` (installed with dev, so CI runs these)

DOCS = [   # choices of unequal lengths (acc and acc_norm can disagree), one with non-ASCII letters
    {"question": "What colour is the sky on a clear day?", "choices": ["blue", "green", "a deep red"], "label": 0},
    {"question": "Two plus two is", "choices": ["four", "five"], "label": 0},
    {"question": "Cats usually say", "choices": ["woof", "meow", "moo", "quack quack"], "label": 1},
    {"question": "A drink made with coffee:", "choices": ["café crème", "lemonade"], "label": 0},
    {"question": "Ice is water that is", "choices": ["frozen", "boiling hot"], "label": 0},
    {"question": "The opposite of up is", "choices": ["sideways", "down", "upward"], "label": 1},
]
TEXT = "Question: {{question}}\nAnswer:"


def write_task(folder: Path, name: str = "tiny_mc", docs=DOCS, **overrides) -> Path:
    """A multiple-choice task config (lm-eval YAML) and its JSONL data in `folder`; the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
              "test_split": "test", "output_type": "multiple_choice", "doc_to_text": TEXT,
              "doc_to_target": "{{label}}", "doc_to_choice": "{{choices}}",
              "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                              for m in ("acc", "acc_norm", "acc_bytes")], **overrides}
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(config, indent=1))           # JSON is YAML
    return path


@pytest.fixture(scope="module")
def loaded(tiny_llama_folder):
    return open_model(tiny_llama_folder)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    write_task(folder)
    return folder


@pytest.fixture(scope="module")
def tasks(tasks_dir):
    return load_tasks(("tiny_mc",), str(tasks_dir))


@torch.no_grad()
def hand_loglikelihood(loaded, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log-softmax of the continuation's tokens after the context, and whether each is the argmax."""
    tokenizer = loaded.tokenizer
    context_ids = tokenizer.encode(context)                     # with the tokenizer's BOS, as the harness
    whole = tokenizer.encode(context + continuation)
    assert whole[:len(context_ids)] == context_ids
    target = whole[len(context_ids):]
    logits = loaded.model(input_ids=torch.tensor([whole])).logits[0].double()
    logprobs = logits - logits.logsumexp(-1, keepdim=True)
    picked = [float(logprobs[len(context_ids) - 1 + i, t]) for i, t in enumerate(target)]
    greedy = all(int(logprobs[len(context_ids) - 1 + i].argmax()) == t for i, t in enumerate(target))
    return sum(picked), greedy


def hand_metrics(loaded, docs) -> dict:
    acc, acc_norm, acc_bytes = [], [], []
    for doc in docs:
        context = TEXT.replace("{{question}}", doc["question"])
        lls = np.array([hand_loglikelihood(loaded, context, " " + c)[0] for c in doc["choices"]])
        chars = np.array([len(c) for c in doc["choices"]], float)
        utf8 = np.array([len(c.encode()) for c in doc["choices"]], float)
        acc.append(float(np.argmax(lls) == doc["label"]))
        acc_norm.append(float(np.argmax(lls / chars) == doc["label"]))
        acc_bytes.append(float(np.argmax(lls / utf8) == doc["label"]))
    return {"acc": acc, "acc_norm": acc_norm, "acc_bytes": acc_bytes}


def test_acc_acc_norm_and_their_stderr_match_a_hand_computation(loaded, tasks):
    results = score_tasks(loaded.model, loaded.tokenizer, tasks, device="cpu")
    score = results.scores["tiny_mc"]
    expected = hand_metrics(loaded, DOCS)
    assert score.n == len(DOCS)
    for metric, values in expected.items():
        assert score.metrics[metric] == pytest.approx(np.mean(values)), metric
        stderr = math.sqrt(np.var(values, ddof=1) / len(values))       # the harness's mean_stderr
        assert score.stderr[metric] == pytest.approx(stderr), metric


def test_limit_scores_the_first_documents_only(loaded, tasks):
    score = score_tasks(loaded.model, loaded.tokenizer, tasks, limit=2, device="cpu").scores["tiny_mc"]
    assert score.n == 2
    assert score.acc_norm == pytest.approx(np.mean(hand_metrics(loaded, DOCS[:2])["acc_norm"]))


def test_each_request_scores_as_by_hand_and_as_the_harness_own_hflm(loaded):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    pairs = [(TEXT.replace("{{question}}", d["question"]), " " + c) for d in DOCS for c in d["choices"]]
    pairs.append(("Trailing spaces move to the answer:  ", "here"))
    pairs.append(("", "An empty context scores after BOS."))
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    recorder = Recorder()
    ours = in_memory_lm(loaded.model, loaded.tokenizer, job=Job(recorder), batch_size=3).loglikelihood(requests)
    one_by_one = in_memory_lm(loaded.model, loaded.tokenizer, batch_size=1).loglikelihood(requests)
    harness = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=4,
                   device="cpu").loglikelihood(requests)
    for (context, continuation), mine, single, theirs in zip(pairs, ours, one_by_one, harness):
        if context:
            stripped = context.rstrip()
            hand = hand_loglikelihood(loaded, stripped, context[len(stripped):] + continuation)
            assert mine[0] == pytest.approx(hand[0], abs=1e-4) and mine[1] == hand[1]
        assert mine[0] == pytest.approx(single[0], abs=1e-4) and mine[0] == pytest.approx(theirs[0], abs=1e-4)
        assert mine[1] == theirs[1]
    phases = recorder.of(Phase)
    assert phases[-1].done == phases[-1].total == len(pairs) and len(phases) == 1 + math.ceil(len(pairs) / 3)


def test_a_cancelled_job_stops_between_batches(loaded, tasks):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        score_tasks(loaded.model, loaded.tokenizer, tasks, device="cpu", job=Job(cancel=token))


def test_the_workbench_job_measures_dense_and_the_applied_run_and_keeps_the_run(tiny_llama_folder, tasks_dir,
                                                                                text_file):
    from core import workbench as wb
    from core.pruning.plan import PrunePlan

    bench = wb.Workbench(remember=True)
    wb.open_model(bench, wb.OpenRequest(str(tiny_llama_folder)))
    request = TaskRequest.build("tiny_mc", tasks_dir=str(tasks_dir), device="cpu")
    alone = evaluate_tasks(bench, request)
    assert alone.pruned is None and alone.record is None
    wb.calibrate(bench, wb.CalibrationRequest((str(text_file),), nsamples=4, seqlen=64))
    record = wb.prune(bench, PrunePlan.build(method="magnitude", sparsity=0.7, device="cpu"))
    pruned_weights = {k: v.clone() for k, v in bench.loaded.model.state_dict().items()}
    bench.dense_tasks.clear()                     # measure dense again, from the stash, with the run applied
    both = evaluate_tasks(bench, request)
    assert both.dense.scores["tiny_mc"].metrics == alone.dense.scores["tiny_mc"].metrics
    assert both.record is record and record.zero_shot is both
    assert all(torch.equal(v, pruned_weights[k]) for k, v in bench.loaded.model.state_dict().items())
    expected = hand_metrics(bench.loaded, DOCS)              # the model holds the pruned weights
    assert both.pruned.scores["tiny_mc"].acc == pytest.approx(np.mean(expected["acc"]))
    described = both.describe()["tasks"]["tiny_mc"]
    dense_acc, pruned_acc = described["dense"]["acc"], described["pruned"]["acc"]
    assert described["retained"]["acc"] == (pytest.approx(pruned_acc / dense_acc) if dense_acc else None)
    assert wb.report_of(bench, record)["zero_shot"]["tasks"]["tiny_mc"]["pruned"]["acc"] == pruned_acc


def test_an_unknown_task_is_refused_naming_it_and_the_closest_names(tasks_dir):
    with pytest.raises(UserError, match=r"unknown task 'tiny_mcq'.*did you mean tiny_mc"):
        load_tasks(("tiny_mcq",), str(tasks_dir))
    with pytest.raises(UserError, match="at least one task"):
        parse_task_names(" , ")
    with pytest.raises(UserError, match="--limit 0"):
        TaskRequest.build("tiny_mc", limit=0)


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_text("task: broken\n  doc_to_text: [unclosed\n"), "not an lm-eval task config"),
    (lambda path: path.write_text("just: a mapping\n"), "needs a 'task: NAME' entry"),
    (lambda path: path.write_text(path.read_text().replace('"doc_to_choice"', '"choices_are"')),
     "needs doc_to_choice"),
    (lambda path: path.write_text(path.read_text().replace('"multiple_choice"', '"generate_until"')),
     "output_type 'generate_until' is not scored here"),
    (lambda path: path.with_suffix(".jsonl").unlink(), "data file .* not found"),
])
def test_a_task_file_in_the_wrong_format_is_refused_naming_the_file(tmp_path, damage, message):
    path = write_task(tmp_path / "tasks")
    damage(path)
    with pytest.raises(UserError, match=message) as caught:
        load_tasks(("tiny_mc",), str(tmp_path / "tasks"))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_task_whose_data_does_not_fit_its_templates_is_refused_naming_the_task(tmp_path):
    write_task(tmp_path / "tasks", docs=[{"prompt": "no question field", "label": 0}])
    with pytest.raises(UserError, match=r"task tiny_mc \(.*tiny_mc.yaml\) could not be loaded"):
        load_tasks(("tiny_mc",), str(tmp_path / "tasks"))
