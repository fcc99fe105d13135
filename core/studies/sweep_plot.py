"""The one renderer of a sweep's chart, for files: perplexity against sparsity, log y, the dense model as a
horizontal line, one curve per method (and pattern); PNG or SVG by the file's suffix. The CLI's --plot and
the studio's 'Export chart…' both call `plot_sweep`. Matplotlib is an optional extra (`plot`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .sweep_points import SweepResult

FORMATS = (".png", ".svg")


def curves(result: SweepResult) -> dict[str, list[tuple[float, float]]]:
    """Curve name -> [(achieved sparsity, perplexity)] by increasing sparsity, in the grid's order of curves."""
    found: dict[str, list[tuple[float, float]]] = {}
    for p in result.points:
        found.setdefault(p.point.curve, []).append((p.sparsity, p.ppl))
    return {name: sorted(values) for name, values in found.items()}


def _figure_class():
    """matplotlib's Figure, imported on first use (a second at start that most sessions never need)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("drawing the chart to a file needs matplotlib: pip install 'compression-studio[plot]'.") \
            from None
    return Figure


def plot_sweep(result: SweepResult, path: str | Path, title: str | None = None) -> Path:
    """Draw the sweep to `path` (.png or .svg), atomically; the path."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"{path.name}: the chart is written as PNG or SVG; name the file .png or .svg.")
    if not path.expanduser().resolve().parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist.")
    Figure = _figure_class()
    if not result.points and result.ppl_dense is None:
        raise UserError("the sweep has no finished point to draw yet.")
    figure = Figure(figsize=(7, 4.5), dpi=120, layout="constrained")
    axes = figure.add_subplot()
    for name, values in curves(result).items():
        xs, ys = zip(*values)
        axes.plot([100 * x for x in xs], ys, marker="o", markersize=4, linewidth=1.6, label=name)
    if result.ppl_dense is not None:
        axes.axhline(result.ppl_dense, color="0.35", linestyle="--", linewidth=1.2,
                     label=f"dense ({result.ppl_dense:.2f})")
    axes.set_yscale("log")
    axes.set_xlabel("sparsity (%)")
    axes.set_ylabel("perplexity (log scale)")
    axes.set_title(title or _title(result), fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left", frameon=False)
    suffix = path.suffix.lower()[1:]
    tmp = path.with_name(f".{path.name}.partial")
    try:
        figure.savefig(tmp, format=suffix)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _title(result: SweepResult) -> str:
    calib, evaluation = result.calibration, result.evaluation
    name = result.model.get("name", "model")
    files = " + ".join(Path(f["path"]).name for f in calib.get("files", []))
    what = f"calibration {files} {calib.get('nsamples')}×{calib.get('seqlen')}" if calib else ""
    on = f"eval {Path(evaluation.get('path', '')).name} {evaluation.get('windows')}×{evaluation.get('seqlen')}" \
        if evaluation.get("windows") else ""
    return f"{name}: perplexity vs sparsity" + (f"\n{what}; {on}" if what or on else "")
