"""A sensitivity profile as data: one entry per pruned unit, the model it was measured on, and its JSON file.

The file records the model's identity (architecture, every prunable layer's name and shape), so that a
profile measured on one model is refused, with one line, when it is used with another. `block_scores`
aggregates the entries per decoder block: what `core.pruning.allocation`'s sensitivity allocation reads
(it sits below this wing, so it reads that list, in the file or from the object, and nothing else).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..pruning.allocation import read_profile_json

FORMAT = "compression-studio sensitivity profile"
VERSION = 1
UNITS = ("layer", "block", "kind")


@dataclass(frozen=True)
class UnitEntry:
    """One unit pruned alone: a layer, a whole block, or every layer of one kind (e.g. mlp.down_proj)."""

    name: str                    # the layer's full name, the block's name, or the kind
    kind: str                    # e.g. "mlp.down_proj"; "block" for a block, the kind itself for a kind
    block: int | None            # decoder block index (None for a kind, which spans every block)
    params: int                  # weights in the unit's layers
    layers: tuple[str, ...]      # full names of the unit's layers
    error: float                 # the method's relative output error ‖(W−Ŵ)X‖²/‖WX‖² on the calibration
                                 # inputs (mean over the unit's layers)
    delta_ppl: float | None      # perplexity with the unit pruned minus dense (None in fast mode)
    ppl: float | None = None
    seconds: float = 0.0

    @property
    def score(self) -> float:
        """How sensitive the unit is: Δperplexity when measured, else the output error."""
        return self.delta_ppl if self.delta_ppl is not None else self.error


@dataclass
class Profile:
    unit: str
    method: str
    sparsity: float
    pattern: str
    fast: bool
    model: dict                          # identity: source, family, model_class, layers [[name, out, in], ...]
    entries: list[UnitEntry] = field(default_factory=list)
    dense_ppl: float | None = None
    eval_windows: int = 0
    eval_seqlen: int = 0
    calibration: dict = field(default_factory=dict)
    seconds: float = 0.0                 # wall time of the whole profile
    spearman: float | None = None        # fast ranking against the measured one (measured mode only)
    stats_seconds: float = 0.0           # of which the one dense pass over the calibration data

    def ranked(self) -> list[UnitEntry]:
        """The entries, most sensitive first."""
        return sorted(self.entries, key=lambda e: -_finite(e.score))

    def block_scores(self) -> list[dict]:
        """Per decoder block: its prunable parameters and sensitivity (the sum over the block's units: pruning
        two layers at once costs about what each costs alone, added). Refused for a profile by kind."""
        if self.unit == "kind":
            raise UserError("a profile by layer kind has no per-block sensitivity: profile by layer or by block "
                            "to allocate sparsity from it.")
        blocks = len(self.model.get("blocks", []))
        scores = [{"block": b, "params": 0, "score": 0.0} for b in range(blocks)]
        for entry in self.entries:
            scores[entry.block]["params"] += entry.params
            scores[entry.block]["score"] += max(0.0, _finite(entry.score))
        return scores

    def check_matches(self, identity: dict) -> None:
        """Refuse a profile measured on another model (other layers or shapes)."""
        theirs, ours = self.model.get("layers") or [], identity.get("layers") or []
        if theirs == ours and self.model.get("family") == identity.get("family"):
            return
        if self.model.get("family") != identity.get("family") or len(theirs) != len(ours):
            why = f"{self.model.get('family')} with {len(theirs)} layers there, {identity.get('family')} with " \
                  f"{len(ours)} here"
        else:
            a, b = next((a, b) for a, b in zip(theirs, ours) if a != b)
            why = f"{a[0]} is {a[1]}x{a[2]} there, {b[0]} {b[1]}x{b[2]} here"
        raise UserError(f"the profile was measured on {self.model.get('source')}, which does not match this model "
                        f"({why}): profile this model first.")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["entries"] = [{**asdict(e), "layers": list(e.layers), "score": e.score} for e in self.entries]
        data["block_scores"] = None if self.unit == "kind" else self.block_scores()
        return {"format": FORMAT, "version": VERSION, **data}


def model_identity(loaded) -> dict:
    """What a profile must match: the architecture and every prunable layer's name and shape, block by block."""
    layout = loaded.layout
    return {
        "source": loaded.source, "family": layout.family, "model_class": layout.model_class,
        "blocks": [b.name for b in layout.inventory],
        "layers": [[info.full_name, info.out_features, info.in_features]
                   for block in layout.inventory for info in block.linears],
    }


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write the profile as JSON, atomically (a failed write leaves no half-written file)."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist.")
    text = json.dumps(profile.to_dict(), indent=2, default=str) + "\n"
    handle, temporary = tempfile.mkstemp(prefix=".profile-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_profile(path: str | Path, identity: dict | None = None) -> Profile:
    """Read a profile; with `identity` (`model_identity(loaded)`), refuse one measured on another model."""
    path = Path(path).expanduser()
    data = read_profile_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a sensitivity profile: give a file written by `compression-studio profile`.")
    try:
        entries = [UnitEntry(e["name"], e["kind"], e["block"], int(e["params"]), tuple(e["layers"]), float(e["error"]),
                             None if e["delta_ppl"] is None else float(e["delta_ppl"]), e.get("ppl"),
                             float(e.get("seconds", 0.0))) for e in data["entries"]]
        profile = Profile(data["unit"], data["method"], float(data["sparsity"]), data["pattern"], bool(data["fast"]),
                          data["model"], entries, data.get("dense_ppl"), int(data.get("eval_windows", 0)),
                          int(data.get("eval_seqlen", 0)), data.get("calibration") or {},
                          float(data.get("seconds", 0.0)), data.get("spearman"),
                          float(data.get("stats_seconds", 0.0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"profile {path} is damaged ({type(exc).__name__}: {exc}): profile the model again.") from None
    if profile.unit not in UNITS:
        raise UserError(f"profile {path} has an unknown unit {profile.unit!r}: profile the model again.")
    if identity is not None:
        profile.check_matches(identity)
    return profile


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 1e30
