"""Digest of every exported weight for a fixed set of CLI prune runs on the demo model.

Used to show that a change which should not alter pruning results (a refactor) leaves masks and weights
bit-identical: run it before and after and compare the two JSON files.

    .venv/bin/python benchmarks/weights_digest.py --save before.json
    .venv/bin/python benchmarks/weights_digest.py --save after.json --compare before.json

Each run goes through the command line (`compression-studio prune demo ...`), so the whole workflow is
covered: open, calibrate, prune, export. Calibration is small (8 × 256 tokens of WikiText-2 valid) to keep
the whole set to a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VALID = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.valid.raw"

RUNS = {
    "magnitude-50": ["--method", "magnitude", "--sparsity", "0.5"],
    "magnitude-2:4": ["--method", "magnitude", "--pattern", "2:4"],
    "wanda-50": ["--method", "wanda", "--sparsity", "0.5"],
    "wanda-2:4": ["--method", "wanda", "--pattern", "2:4"],
    "sparsegpt-50": ["--method", "sparsegpt", "--sparsity", "0.5"],
    "sparsegpt-2:4": ["--method", "sparsegpt", "--pattern", "2:4"],
    "wanda-50-stream": ["--method", "wanda", "--sparsity", "0.5", "--stream"],
    "sparsegpt-2:4-compact": ["--method", "sparsegpt", "--pattern", "2:4", "--compact"],
    "wanda-50-recover": ["--method", "wanda", "--sparsity", "0.5", "--recover", "blockwise", "--recover-steps", "4"],
    "shrink-recover": ["--structure", "mlp=0.25", "--recover", "blockwise", "--recover-steps", "4"],
}


def digest_folder(folder: Path) -> dict[str, str]:
    """sha256 of every tensor in the folder's weight files (calibration windows included), by name."""
    from safetensors import safe_open

    digests = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as reader:
            for name in sorted(reader.keys()):
                tensor = reader.get_tensor(name).contiguous()
                raw = tensor.view(-1).view(__import__("torch").uint8) if tensor.numel() else tensor
                digests[f"{file.name.split('-')[0]}::{name}"] = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
    return digests


def run(name: str, extra: list[str], python: str, tmp: Path) -> dict[str, str]:
    out = tmp / name.replace(":", "_")
    command = [python, "-m", "core.cli", "prune", "demo", "--calib", str(VALID), "--nsamples", "8", "--seqlen", "256",
               "--device", "cpu", "--out", str(out), *extra]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return digest_folder(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", required=True)
    parser.add_argument("--compare")
    parser.add_argument("--runs", nargs="*", default=list(RUNS))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            results[name] = run(name, RUNS[name], sys.executable, Path(tmp))
            print(f"{name}: {len(results[name])} tensors", file=sys.stderr)
    Path(args.save).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    differing = 0
    for name in args.runs:
        a, b = before.get(name, {}), results[name]
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        differing += len(diff)
        print(f"{name}: {'identical' if not diff else f'{len(diff)} tensors differ, e.g. {diff[:3]}'} "
              f"({len(b)} tensors)")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
