"""Finding lm-evaluation-harness tasks by name: the harness's own (read from the Hugging Face hub, or from
the datasets cache with HF_DATASETS_OFFLINE=1) and local ones, YAML task configs in a folder the user
names (`--tasks-dir`), in the harness's own format, whose data may be local files (`dataset_path: json`
with `dataset_kwargs: {data_files: ...}`). A local task of the same name as a built-in one replaces it.

Every YAML file in the folder is read first, and one that is not a task config the harness can use is
refused naming the file (the harness itself skips such files silently, and the task is then "unknown").
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

INSTALL = "zero-shot tasks need lm-evaluation-harness: pip install 'compression-studio[eval]'"
SCORED = ("multiple_choice", "loglikelihood")       # task types scored by log-likelihood of given answers
LOCAL_DATA = ("json", "csv", "parquet", "text", "arrow")
MC_FIELDS = ("doc_to_text", "doc_to_target", "doc_to_choice")
NAME_LINE = re.compile(r"""^(?:task|group):\s*["']?([^\s"'#]+)""", re.M)


def harness():
    """lm-eval's package, imported on first use: its import takes seconds, and most sessions never score a
    task (the optional extra `eval`)."""
    try:
        import lm_eval
        import lm_eval.api.model
        import lm_eval.evaluator
        import lm_eval.tasks
        import lm_eval.tasks._yaml_loader
    except ImportError:
        raise UserError(INSTALL) from None
    return lm_eval


def harness_version() -> str:
    return getattr(harness(), "__version__", "unknown")


def parse_task_names(text: str | list | tuple) -> tuple[str, ...]:
    """'arc_easy, piqa' (or a list of such) -> ('arc_easy', 'piqa'); duplicates dropped, order kept."""
    parts = text.split(",") if isinstance(text, str) else [p for item in text for p in str(item).split(",")]
    names = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not names:
        raise UserError("name at least one task, e.g. --tasks arc_easy,piqa (or a task of your --tasks-dir).")
    return names


@dataclass
class Tasks:
    """The harness's task objects for the names asked, their data loaded, and the manager that found them."""

    manager: object
    tasks: dict           # leaf task name -> lm_eval Task
    sources: dict         # leaf task name -> the YAML file it came from, or "lm-eval"


def check_tasks_dir(folder: str | Path) -> list[Path]:
    """Every YAML file under `folder`, each one checked to be a task config; UserError naming the first bad one."""
    harness()
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"--tasks-dir {folder}: no such folder (it holds lm-eval task configs, *.yaml).")
    files = sorted(p for p in root.rglob("*.yaml") if "__pycache__" not in p.parts)
    if not files:
        raise UserError(f"--tasks-dir {folder} holds no *.yaml task configs: write one per task (see the README, "
                        "'Zero-shot accuracy').")
    for path in files:
        _check_config(path)
    return files


def _check_config(path: Path) -> None:
    what = f"{path}: not an lm-eval task config"
    try:
        config = harness().tasks._yaml_loader.load_yaml(path, resolve_func=False, recursive=True)
    except Exception as exc:       # YAML syntax, a missing include: the user's file, said in one line
        raise UserError(f"{what} ({_first_line(exc)}): fix it or move it out of --tasks-dir.") from None
    if not isinstance(config, dict) or not any(key in config for key in ("task", "group", "class")):
        raise UserError(f"{what} (it needs a 'task: NAME' entry): fix it or move it out of --tasks-dir.")
    if "group" in config or "class" in config or not isinstance(config.get("task"), str):
        return
    kind = config.get("output_type", "generate_until")
    if kind not in SCORED:
        raise UserError(f"{path}: output_type {kind!r} is not scored here: use output_type: multiple_choice "
                        "(or loglikelihood).")
    missing = [key for key in (MC_FIELDS if kind == "multiple_choice" else MC_FIELDS[:2]) if key not in config]
    if "dataset_path" not in config:
        missing.insert(0, "dataset_path")
    if missing:
        raise UserError(f"{path}: a {kind} task needs {', '.join(missing)}: add them (see the README, "
                        "'Zero-shot accuracy').")
    if config["dataset_path"] in LOCAL_DATA:
        _check_data_files(path, (config.get("dataset_kwargs") or {}).get("data_files"))


def _check_data_files(path: Path, data_files) -> None:
    if not data_files:
        raise UserError(f"{path}: dataset_path is a local format but dataset_kwargs has no data_files: "
                        "name the JSONL/CSV files there.")
    values = data_files.values() if isinstance(data_files, dict) else [data_files]
    for value in values:
        for name in ([value] if isinstance(value, str) else value):
            if not Path(name).expanduser().is_file():
                raise UserError(f"{path}: data file {name} not found (relative paths are read from the current "
                                "folder: write absolute paths).")


def task_manager(names: tuple[str, ...], tasks_dir: str | None):
    """A TaskManager that knows every name in `names`: the local folder alone when it has them all (fast:
    the harness's index of its own thousands of configs takes seconds), otherwise with the built-in tasks."""
    TaskManager = harness().tasks.TaskManager
    known: list[str] = []
    if tasks_dir:
        check_tasks_dir(tasks_dir)
        local = TaskManager(include_path=str(Path(tasks_dir).expanduser()), include_defaults=False)
        if all(name in local.all_tasks for name in names):
            return local
        known = list(local.all_tasks)
    for name in names:              # refused in a second, before the harness parses its thousands of files
        if name not in known and not _in_builtin_files(name):
            raise UserError(_unknown(name, known + sorted(_builtin_names()), tasks_dir))
    manager = TaskManager(include_path=str(Path(tasks_dir).expanduser()) if tasks_dir else None)
    for name in names:
        if name not in manager.all_tasks:
            raise UserError(_unknown(name, manager.all_tasks, tasks_dir))
    return manager


def _builtin_files() -> list[Path]:
    return sorted(Path(harness().__file__).parent.joinpath("tasks").rglob("*.yaml"))


def _in_builtin_files(name: str) -> bool:
    """Whether `name` appears anywhere in the text of the harness's own task configs (every task, group and
    tag name does: a name found nowhere is unknown without building the index)."""
    return any(name in path.read_text(errors="replace") for path in _builtin_files())


@functools.lru_cache(maxsize=1)
def _builtin_names() -> frozenset[str]:
    """The task and group names the harness's configs declare on a line of their own (for suggestions)."""
    found = set()
    for path in _builtin_files():
        found.update(NAME_LINE.findall(path.read_text(errors="replace")))
    return frozenset(found)


def _unknown(name: str, known: list[str], tasks_dir: str | None) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    where = f"neither in {tasks_dir} nor among lm-eval's tasks" if tasks_dir else "not among lm-eval's tasks"
    return (f"unknown task '{name}': {where}{hint}; `lm-eval ls tasks` lists them, and a local task is a YAML "
            "file in --tasks-dir.")


def load_tasks(names: tuple[str, ...], tasks_dir: str | None = None) -> Tasks:
    """The task objects for `names` (groups and tags expand to their tasks), each task's data read."""
    manager = task_manager(names, tasks_dir)
    tasks, sources = {}, {}
    for name in names:
        entry = manager.task_index.get(name)
        source = str(entry.yaml_path) if entry is not None and entry.yaml_path else "lm-eval"
        try:
            loaded = manager.load([name])["tasks"]
        except Exception as exc:   # the task's data or templates: the user's files or the network
            raise UserError(f"task {name} ({source}) could not be loaded: {_first_line(exc)}; "
                            + ("check its config and data files." if source != "lm-eval" and
                               "/lm_eval/tasks/" not in source else
                               "with no network, point --tasks-dir at local copies of its data (see the README, "
                               "'Zero-shot accuracy').")) from None
        for leaf, task in loaded.items():
            if task.OUTPUT_TYPE not in SCORED:
                raise UserError(f"task {leaf} is a {task.OUTPUT_TYPE} task: only multiple-choice tasks scored by "
                                "log-likelihood are supported (arc_easy, piqa, hellaswag, winogrande, boolq...).")
            tasks[leaf], sources[leaf] = task, source
    return Tasks(manager, tasks, sources)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
