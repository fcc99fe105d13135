"""ALPS against SparseGPT on one random layer with correlated inputs: seconds and output error.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks.alps_layer --shapes 576x1536 --tokens 32768

Shapes are out x in (default: the demo model's four). The output error is ‖(W − Ŵ)Xᵀ‖², computed as
tr(E·XᵀX·Eᵀ); times are the best of `--repeats` and include each method's factorisation (a fresh
`LayerStats` per run, so nothing is shared through its cache); `alps_factor_s` is ALPS's rescaling and
eigendecomposition alone, which layers fed the same input (q/k/v, gate/up) pay once.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from core.patterns import Pattern, UNSTRUCTURED
from core.pruning.methods import alps, sparsegpt
from core.pruning.stats import LayerStats


def correlated_xtx(features: int, tokens: int, seed: int, chunk: int = 4096) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / features ** 0.5 + torch.eye(features)
    scales = torch.exp(torch.randn(features, generator=g))
    xtx = torch.zeros(features, features)
    for start in range(0, tokens, chunk):
        x = (torch.randn(min(chunk, tokens - start), features, generator=g) @ mixing) * scales
        xtx.addmm_(x.t(), x)
    return xtx


def output_error(weight, pruned, xtx) -> float:
    E = weight - pruned
    return float(((E @ xtx) * E).sum())


def timed(function, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def run(method, weight, xtx, tokens, sparsity, pattern, device):
    stats = LayerStats(tokens=tokens, xtx=xtx.clone())
    return timed(lambda: method.prune(weight, stats, sparsity, pattern), device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="576x576,192x576,1536x576,576x1536")
    parser.add_argument("--patterns", default="50%,2:4")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for shape in args.shapes.split(","):
        out_features, in_features = (int(v) for v in shape.split("x"))
        torch.manual_seed(args.seed)
        weight = (torch.randn(out_features, in_features) / in_features ** 0.5).to(device)
        xtx = correlated_xtx(in_features, args.tokens, args.seed).to(device)
        for label in args.patterns.split(","):
            pattern = UNSTRUCTURED if label.endswith("%") else Pattern(*(int(v) for v in label.split(":")))
            sparsity = float(label[:-1]) / 100 if label.endswith("%") else pattern.sparsity
            t_gpt = t_alps = t_factor = float("inf")
            for _ in range(args.repeats):        # interleaved: a busy machine slows both alike
                t, r_gpt = run(sparsegpt, weight, xtx, args.tokens, sparsity, pattern, device)
                t_gpt = min(t_gpt, t)
                t, r_alps = run(alps, weight, xtx, args.tokens, sparsity, pattern, device)
                t_alps = min(t_alps, t)
                stats = LayerStats(tokens=args.tokens, xtx=xtx.clone())
                t_factor = min(t_factor, timed(lambda: alps._factor(stats, device, alps.Options()), device)[0])
            e_gpt, e_alps = output_error(weight, r_gpt.weight, xtx), output_error(weight, r_alps.weight, xtx)
            print(json.dumps({"shape": [out_features, in_features], "pattern": label, "threads": torch.get_num_threads(),
                              "sparsegpt_s": round(t_gpt, 4), "alps_s": round(t_alps, 4),
                              "alps_factor_s": round(t_factor, 4), "time_ratio": round(t_alps / t_gpt, 2),
                              "sparsegpt_error": e_gpt, "alps_error": e_alps, "error_ratio": round(e_alps / e_gpt, 4),
                              "alps_notes": r_alps.notes}), flush=True)


if __name__ == "__main__":
    main()
