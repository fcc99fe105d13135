"""Zero-shot task options of `eval` (--tasks) and `prune`/`quantize` (--eval-tasks), and their table."""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..evaluation.zero_shot import TaskRequest
from .output import print_human

TASKS_DIR_HELP = ("a folder of lm-eval task configs (*.yaml; local data via dataset_path: json and "
                  "dataset_kwargs.data_files), read before the harness's own tasks")


def eval_task_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", metavar="T1,T2", help="zero-shot multiple-choice tasks (lm-eval names, e.g. "
                        "arc_easy,piqa, or tasks of --tasks-dir): acc and acc_norm")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="at most N documents per task")
    parser.add_argument("--tasks-dir", metavar="DIR", help=TASKS_DIR_HELP)
    parser.add_argument("--task-batch", type=int, default=0, metavar="ROWS",
                        help="choices scored per forward pass (default: as many as fit ~4096 tokens)")


def prune_task_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-tasks", metavar="T1,T2", help="zero-shot tasks scored before and after (acc, "
                        "acc_norm, %% of dense retained; recorded in sparsity.json)")
    parser.add_argument("--eval-limit", type=int, default=None, metavar="N", help="at most N documents per task")
    parser.add_argument("--tasks-dir", metavar="DIR", help=TASKS_DIR_HELP)


TASK_SHARES = {"eval_tasks", "eval_limit", "tasks_dir"}       # prune's task options quantize takes too


def eval_request(args) -> TaskRequest | None:
    """`eval`'s task request; refuses a run that asks for neither perplexity nor tasks."""
    if not args.data and not args.tasks:
        raise UserError("say what to measure: --data FILE (perplexity), --tasks T1,T2 (zero-shot accuracy), or both.")
    if not args.tasks:
        _unused(args.limit, "--limit", "--tasks")
        _unused(args.tasks_dir, "--tasks-dir", "--tasks")
        return None
    return TaskRequest.build(args.tasks, args.limit, args.tasks_dir, args.device, args.task_batch)


def prune_request(args) -> TaskRequest | None:
    if not getattr(args, "eval_tasks", None):
        _unused(getattr(args, "eval_limit", None), "--eval-limit", "--eval-tasks")
        _unused(getattr(args, "tasks_dir", None), "--tasks-dir", "--eval-tasks")
        return None
    if args.stream:
        raise UserError("--eval-tasks scores the whole model in memory, which --stream avoids: drop --eval-tasks "
                        f"and run `compression-studio eval {args.out} --tasks {args.eval_tasks}` afterwards.")
    return TaskRequest.build(args.eval_tasks, args.eval_limit, args.tasks_dir, args.device)


def _unused(value, option: str, needs: str) -> None:
    if value:
        raise UserError(f"{option} goes with {needs}: add {needs} T1,T2 or drop {option}.")


def print_zero_shot(described: dict) -> None:
    """The per-task table: dense, pruned (when there is a run) and % of dense retained."""
    pruned = any(row["pruned"] is not None for row in described["tasks"].values())
    limit = f", at most {described['limit']} documents per task" if described.get("limit") else ""
    print(f"zero-shot ({described['harness']}{limit}):")
    print(f"  {'task':<24} {'n':>6}  {'metric':<9} {'dense':>14}" + (f" {'pruned':>14} {'retained':>9}" if pruned else ""))
    for task, row in described["tasks"].items():
        for metric in [m for m in row["dense"] if not m.endswith("_stderr")]:
            line = f"  {task:<24} {row['n']:>6}  {metric:<9} {_cell(row['dense'], metric):>14}"
            if row["pruned"] is not None:
                kept = (row["retained"] or {}).get(metric)
                line += f" {_cell(row['pruned'], metric):>14} {f'{kept:.1%}' if kept is not None else '-':>9}"
            print(line)


def _cell(values: dict, metric: str) -> str:
    stderr = values.get(f"{metric}_stderr")
    return f"{values[metric]:.4f}" + (f" ±{stderr:.4f}" if stderr is not None else "")


def show_with_tasks(command: str):
    """A command's human output (`print_human`), then the zero-shot table when tasks were scored."""
    def show(result: dict) -> None:
        if command != "eval" or result.get("ppl") is not None:
            print_human(command, result)
        if result.get("zero_shot"):
            print_zero_shot(result["zero_shot"])
    return show
