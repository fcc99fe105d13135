"""What a sparsity sweep is asked to do (its grid of points), what each point measured, and the saved results.

A sweep is a grid of methods × sparsities × patterns. Patterns that take a sparsity (unstructured, rows,
columns, blocks:HxW) are run at every sparsity of the grid; an N:M pattern fixes its own sparsity (2:4 removes
half of every group of four), so it adds one point per method at 1 − N/M whatever the sparsities say. When
the patterns are only N:M ones and sparsities are given too, the sparsities are run unstructured (the
`--sparsities 0.3 0.5 0.7 --patterns 2:4` of the issue: a curve and a 2:4 point per method). A grid with no
points, a sparsity outside [0, 1), an unknown method or pattern, or a point its method cannot run (ALPS
with whole rows) is refused before any work, in one line.

Results are saved as `sweep.json` (everything) and `sweep.csv` (one row per point, with the dense perplexity
and the model, calibration and evaluation beside every row), each written to a temporary file and renamed
into place, after every point: a cancelled or crashed sweep keeps the points it finished.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import UserError
from ..events import Event
from ..patterns import parse_pattern
from ..pruning.methods import METHODS
from ..pruning.methods.alps import Options as ALPSOptions
from ..pruning.methods.sparsegpt import Options as SparseGPTOptions
from ..pruning.plan import PrunePlan
from ..workbench import CalibrationRequest, EvaluationRequest, OpenRequest

JSON_NAME, CSV_NAME = "sweep.json", "sweep.csv"
SWEEP_METHODS = tuple(m for m in METHODS if m != "none")


@dataclass(frozen=True)
class SweepPoint:
    method: str
    pattern: str          # as typed back by `Pattern.__str__`: "unstructured", "2:4", "rows", "blocks:8x8"
    sparsity: float       # the target

    @property
    def label(self) -> str:
        return f"{self.method} {self.pattern} {self.sparsity:.0%}" if self.pattern != "unstructured" else \
            f"{self.method} {self.sparsity:.0%}"

    @property
    def curve(self) -> str:
        """The chart's curve this point belongs to: one per method and pattern."""
        return self.method if self.pattern == "unstructured" else f"{self.method} {self.pattern}"


@dataclass(frozen=True)
class MethodOptions:
    """The run options every point of the sweep shares."""

    sparsegpt: SparseGPTOptions = field(default_factory=SparseGPTOptions)
    alps: ALPSOptions = field(default_factory=ALPSOptions)
    device: str = "auto"
    batch_size: int = 0


@dataclass(frozen=True)
class SweepRequest:
    model: OpenRequest
    calibration: CalibrationRequest
    evaluation: EvaluationRequest
    methods: tuple[str, ...] = ("wanda",)
    sparsities: tuple[float, ...] = ()
    patterns: tuple[str, ...] = ("unstructured",)
    options: MethodOptions = field(default_factory=MethodOptions)
    out: str | None = None            # the folder sweep.json and sweep.csv are written to (None: not saved)

    def points(self) -> list[SweepPoint]:
        """The grid, in run order (method by method), each point checked; UserError for a grid that cannot run."""
        if not self.methods:
            raise UserError("the sweep has no methods: give at least one, e.g. --methods wanda sparsegpt.")
        for method in self.methods:
            if method not in SWEEP_METHODS:
                raise UserError(f"unknown method {method!r} for a sweep: choose from {', '.join(SWEEP_METHODS)}.")
        for value in self.sparsities:
            if not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value < 1:
                raise UserError(f"sparsity {value} is outside [0, 1): give fractions of weights to remove, "
                                "e.g. --sparsities 0.3 0.5 0.7.")
        patterns = [parse_pattern(p) for p in (self.patterns or ("unstructured",))]
        sparsities = list(dict.fromkeys(float(s) for s in self.sparsities))
        if sparsities and all(p.structured for p in patterns):
            patterns = [parse_pattern("unstructured"), *patterns]
        if not sparsities and not any(p.structured for p in patterns):
            raise UserError("the sweep has no points: give sparsities (e.g. --sparsities 0.3 0.5 0.7) or an N:M "
                            "pattern such as 2:4.")
        points = []
        for method in dict.fromkeys(self.methods):
            for pattern in dict.fromkeys(patterns):
                for sparsity in ([pattern.sparsity] if pattern.structured else sparsities):
                    point = SweepPoint(method, str(pattern), float(sparsity))
                    self.plan(point)          # refuses a point its method cannot run, before any work
                    points.append(point)
        return points

    def plan(self, point: SweepPoint) -> PrunePlan:
        o = self.options
        try:
            return PrunePlan.build(method=point.method, sparsity=point.sparsity, pattern=point.pattern,
                                   sparsegpt=o.sparsegpt, alps=o.alps, device=o.device, batch_size=o.batch_size)
        except UserError as exc:
            raise UserError(f"sweep point {point.label}: {exc}") from None

    def describe(self) -> dict:
        return {"model": asdict(self.model), "calibration": asdict(self.calibration),
                "evaluation": asdict(self.evaluation), "methods": list(self.methods),
                "sparsities": list(self.sparsities), "patterns": list(self.patterns),
                "options": {"sparsegpt": asdict(self.options.sparsegpt), "alps": asdict(self.options.alps),
                            "device": self.options.device, "batch_size": self.options.batch_size}}


@dataclass(frozen=True)
class PointFinished(Event):
    """One point of a sweep is measured (the model is dense again). `done` of `total` points are finished;
    `eta_seconds` is the time the remaining ones should take (None when nothing is left or known)."""

    index: int                    # its place in the grid
    method: str
    pattern: str
    target_sparsity: float
    sparsity: float               # achieved, over the pruned layers
    ppl: float
    nll: float
    prune_seconds: float
    eval_seconds: float
    seconds: float                # the whole point: prune, evaluate, restore
    parameters: dict              # the run's plan (`PrunePlan.describe` plus the device)
    done: int = field(default=0, compare=False)          # progress, not part of what the point measured
    total: int = field(default=0, compare=False)
    eta_seconds: float | None = field(default=None, compare=False)

    @property
    def point(self) -> SweepPoint:
        return SweepPoint(self.method, self.pattern, self.target_sparsity)

    def row(self) -> dict:
        """What is saved for the point (the progress fields left out)."""
        row = asdict(self)
        for key in ("done", "total", "eta_seconds"):
            row.pop(key)
        return row

    @classmethod
    def from_row(cls, row: dict) -> "PointFinished":
        return cls(**row)


@dataclass(frozen=True)
class DensePerplexity(Event):
    """The dense model's perplexity on the sweep's evaluation text, measured once before the first point."""

    ppl: float
    nll: float
    seconds: float


@dataclass
class SweepResult:
    """A sweep so far: every finished point, the dense perplexity, and what model, calibration and text they
    were measured with. `status` is running, finished, cancelled or failed."""

    request: dict
    model: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    dense: dict | None = None                  # {"ppl", "nll", "seconds"}
    points: list[PointFinished] = field(default_factory=list)
    planned: list[dict] = field(default_factory=list)   # every point of the grid, finished or not
    status: str = "running"
    seconds: float = 0.0
    ray: str | None = None                     # the cluster's address, when the points ran on Ray

    @property
    def ppl_dense(self) -> float | None:
        return self.dense["ppl"] if self.dense else None

    def to_dict(self) -> dict:
        return {"kind": "compression-studio sparsity sweep", "version": 1, "status": self.status,
                "seconds": self.seconds, "ray": self.ray, "model": self.model, "calibration": self.calibration,
                "evaluation": self.evaluation, "dense": self.dense, "request": self.request,
                "planned": self.planned, "points": [p.row() for p in self.points]}

    @classmethod
    def from_dict(cls, data: dict) -> "SweepResult":
        if data.get("kind") != "compression-studio sparsity sweep":
            raise UserError("this file is not a sweep written by compression-studio (no sweep kind in it).")
        return cls(request=data["request"], model=data["model"], calibration=data["calibration"],
                   evaluation=data["evaluation"], dense=data["dense"], planned=data.get("planned", []),
                   points=[PointFinished.from_row(p) for p in data["points"]], status=data["status"],
                   seconds=data["seconds"], ray=data.get("ray"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    CSV_FIELDS = ("index", "method", "pattern", "target_sparsity", "sparsity", "ppl", "nll", "ppl_dense",
                  "prune_seconds", "eval_seconds", "seconds", "model", "model_source", "calibration",
                  "calibration_sha256", "evaluation", "evaluation_sha256", "parameters")

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        calib, evaluation = self.calibration, self.evaluation
        shared = {
            "ppl_dense": repr(self.ppl_dense) if self.ppl_dense is not None else "",
            "model": self.model.get("name", ""), "model_source": self.model.get("source", ""),
            "calibration": f"{' + '.join(Path(f['path']).name for f in calib.get('files', []))} "
                           f"{calib.get('nsamples')}x{calib.get('seqlen')} seed {calib.get('seed')}",
            "calibration_sha256": " ".join(f["sha256"] for f in calib.get("files", [])),
            "evaluation": f"{Path(evaluation.get('path', '')).name} {evaluation.get('windows')}x"
                          f"{evaluation.get('seqlen')}",
            "evaluation_sha256": evaluation.get("sha256", ""),
        }
        for p in self.points:
            row = p.row()
            writer.writerow({**{k: repr(v) if isinstance(v, float) else v for k, v in row.items()
                                if k in self.CSV_FIELDS}, **shared,
                             "parameters": json.dumps(row["parameters"], sort_keys=True)})
        return out.getvalue()

    def save(self, folder: str | Path) -> None:
        """sweep.json and sweep.csv in `folder`, each replaced atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / JSON_NAME, self.to_json())
        write_atomic(folder / CSV_NAME, self.to_csv())

    def with_status(self, status: str, seconds: float) -> "SweepResult":
        return replace(self, status=status, seconds=seconds)


def load_sweep(path: str | Path) -> SweepResult:
    """A saved sweep: its folder or its sweep.json."""
    path = Path(path)
    if path.is_dir():
        path = path / JSON_NAME
    try:
        return SweepResult.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give a sweep folder or its {JSON_NAME}.") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a readable sweep ({exc}): run the sweep again.") from None


def write_atomic(path: Path, text: str) -> None:
    """Write `text` beside `path` and rename it into place: a reader sees the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_table(result: SweepResult, path: str | Path) -> Path:
    """The results as one file: JSON for a .json path, CSV for any other (the studio's 'Save results…')."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist.")
    write_atomic(path, result.to_json() if path.suffix.lower() == ".json" else result.to_csv())
    return path
