"""Zero-shot accuracy of the demo model, dense and Wanda 50 % pruned, on a local multiple-choice task built
from WikiText-2 *test* (no hub here, so no ARC or PIQA).

The task, "wikitext_next_sentence" (made here, not a published benchmark): each document is one sentence of
a WikiText-2 test paragraph; the choices are the sentence that really follows it in that paragraph and
`--choices - 1` sentences drawn from other paragraphs (seeded), in a random order. It is written in
lm-eval's own task format (a YAML config with `dataset_path: json` + a JSONL file) and scored through
the harness (`core.evaluation.zero_shot`), acc and acc_norm as the papers report them; chance is
1 / choices. Calibration: `--nsamples` windows × 512 tokens of WikiText-2 *validation*, seed 0.

    nice .venv/bin/python benchmarks/zero_shot.py                      # 100 documents, 4 choices
    nice .venv/bin/python benchmarks/zero_shot.py --docs 40 --nsamples 16
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"
RESULTS = ROOT / "benchmarks" / "results" / "zero_shot.jsonl"
sys.path.insert(0, str(ROOT))

from core import workbench as wb  # noqa: E402
from core.evaluation.zero_shot import TaskRequest, evaluate_tasks  # noqa: E402
from core.pruning.plan import PrunePlan  # noqa: E402

TASK = "wikitext_next_sentence"


def sentences(paragraph: str) -> list[str]:
    parts = re.split(r"(?<= \.) (?=[A-Z])", paragraph.strip())
    return [p.strip() for p in parts if 40 <= len(p.strip()) <= 200]


def build_docs(count: int, choices: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    paragraphs = [line for line in (DATA / "wiki.test.raw").read_text().splitlines()
                  if line.strip() and not line.strip().startswith("=")]
    split = [sentences(p) for p in paragraphs]
    pool = [(i, s) for i, ss in enumerate(split) for s in ss]
    candidates = [(i, ss[k], ss[k + 1]) for i, ss in enumerate(split) for k in range(len(ss) - 1)]
    docs = []
    for i, context, true in rng.sample(candidates, count):
        others = [s for j, s in rng.sample(pool, 4 * choices) if j != i][: choices - 1]
        options = [true, *others]
        rng.shuffle(options)
        docs.append({"context": context, "choices": options, "label": options.index(true)})
    return docs


def write_task(folder: Path, docs: list[dict]) -> None:
    data = folder / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{TASK}.yaml").write_text(json.dumps({
        "task": TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{context}}",
        "doc_to_target": "{{label}}", "doc_to_choice": "{{choices}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparsity", type=float, default=0.5)
    args = parser.parse_args()
    docs = build_docs(args.docs, args.choices, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        write_task(Path(folder), docs)
        bench = wb.Workbench(remember=False)
        started = time.perf_counter()
        wb.open_model(bench, wb.OpenRequest("demo"))
        request = TaskRequest.build(TASK, tasks_dir=folder, device="cpu")
        evaluate_tasks(bench, request)
        wb.calibrate(bench, wb.CalibrationRequest((str(DATA / "wiki.valid.raw"),), args.nsamples, 512, 0))
        wb.prune(bench, PrunePlan.build(method="wanda", sparsity=args.sparsity, device="cpu"))
        result = evaluate_tasks(bench, request)
    row = {"task": TASK, "docs": len(docs), "choices": args.choices, "chance": 1 / args.choices,
           "mean_context_chars": sum(len(d["context"]) for d in docs) / len(docs),
           "model": "demo (SmolLM2-135M-Instruct, float32, CPU)", "method": "wanda", "sparsity": args.sparsity,
           "calibration": f"{args.nsamples} x 512 tokens of wiki.valid.raw, seed 0", **result.describe(),
           "wall_seconds": time.perf_counter() - started, "machine": platform.machine(),
           "note": "a local task made from WikiText-2 test sentences, not a published benchmark; timings on a "
                   "shared, heavily loaded 2-core machine",
           "command": "nice .venv/bin/python benchmarks/zero_shot.py " + " ".join(sys.argv[1:])}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    for metric in ("acc", "acc_norm"):
        t = row["tasks"][TASK]
        print(f"{metric}: dense {t['dense'][metric]:.3f} ± {t['dense'][metric + '_stderr']:.3f}, "
              f"pruned {t['pruned'][metric]:.3f} ± {t['pruned'][metric + '_stderr']:.3f}, "
              f"retained {t['retained'][metric]:.1%} (chance {row['chance']:.2f}, n {t['n']})")


if __name__ == "__main__":
    main()
