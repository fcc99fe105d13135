"""Parsers of what users type, shared by the command line and the studio: per-layer overrides,
glob lists, token counts and sizes. Every bad input is a `UserError` naming it."""

from __future__ import annotations

import math
import re
from typing import Iterable

from .errors import UserError

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_overrides(items: Iterable[str]) -> tuple[tuple[str, float], ...]:
    """`GLOB=SPARSITY` items (blank ones skipped) as (glob, sparsity) pairs, in order."""
    parsed = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        glob, sep, value = item.rpartition("=")
        glob = glob.strip()
        try:
            parsed.append((glob, float(value)))
        except ValueError:
            sep = ""
        if not sep or not glob:
            raise UserError(f"override {item!r}: write GLOB=SPARSITY, e.g. '*.mlp.down_proj=0.3'.")
    return tuple(parsed)


def parse_globs(text: str) -> tuple[str, ...]:
    """Comma-separated name globs, e.g. '*.0.*, *o_proj'."""
    return tuple(g.strip() for g in text.split(",") if g.strip())


def parse_tokens(text: str, what: str = "--tokens") -> tuple[int, ...]:
    """Comma-separated positive token counts, e.g. '1,16,128'."""
    try:
        tokens = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        tokens = ()
    if not tokens or min(tokens) < 1:
        raise UserError(f"{what} {text}: give positive token counts separated by commas, e.g. 1,16,128.")
    return tokens


def parse_bytes(text: str) -> int:
    """'4GB' -> 4e9, '512MiB' -> 512·2^20, '1000000' -> 1e6."""
    match = _SIZE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"{text!r} is not a positive size: write e.g. 4GB, 512MB or 2GiB")
    unit = (match.group(2) or "").lower().rstrip("b")
    size = float(match.group(1)) * _UNITS[unit]
    if not 1 <= size < math.inf:
        raise UserError(f"{text!r} is {'under one byte' if size < 1 else 'too large'}: write e.g. 4GB, 512MB or 2GiB")
    return int(size)


def parse_structure(text: str) -> dict[str, float]:
    """'mlp=0.3,heads=0.25' (either part may be left out) as {'mlp': 0.3, 'heads': 0.25}; fractions in [0, 1)."""
    parts = {}
    for item in (i.strip() for i in text.split(",")):
        key, _, value = item.partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = math.nan
        if key.strip() not in ("mlp", "heads") or key.strip() in parts or not 0 <= fraction < 1:
            raise UserError(f"--structure {text}: write mlp=FRACTION and/or heads=FRACTION, each at least 0 "
                            f"and below 1, e.g. mlp=0.3,heads=0.25.")
        parts[key.strip()] = fraction
    return {"mlp": parts.get("mlp", 0.0), "heads": parts.get("heads", 0.0)}
