"""Issue 14's targets on Hopper, judged from result rows, and the tables `benchmarks/hopper_24.py` writes.

Targets (H200, Llama-8B MLP shapes 14336×4096 and 4096×14336, ≥ 2048 tokens): 2:4 bf16 ≥ 1.3× dense
bf16; fp8 + 2:4 ≥ 1.2× dense fp8. A target is PASS or MISS on measured, checked-correct rows only;
without them it is NOT RUN with the reason the rows give.
"""

from __future__ import annotations

from dataclasses import dataclass

from .results import CSLT_DIRECT, DENSE, FP8_CSLT, FP8_DENSE, FP8_TORCHAO, EndToEndResult, KernelResult

TARGET_SHAPES = ((14336, 4096), (4096, 14336))
TARGET_TOKENS = 2048


@dataclass(frozen=True)
class Target:
    name: str
    baseline: str            # backend
    dtype: str
    candidates: tuple[str, ...]
    threshold: float


TARGETS = (
    Target("2:4 bf16 vs dense bf16", DENSE, "bf16", (CSLT_DIRECT, "cusparselt"), 1.3),
    Target("fp8+2:4 vs dense fp8", FP8_DENSE, "fp8", (FP8_CSLT, FP8_TORCHAO), 1.2),
)


@dataclass
class Verdict:
    target: str
    shape: tuple[int, int]
    tokens: int
    verdict: str             # PASS | MISS | NOT RUN
    speedup: float | None
    backend: str
    detail: str


def judge(rows: list[KernelResult], targets=TARGETS, shapes=TARGET_SHAPES, min_tokens=TARGET_TOKENS) -> list[Verdict]:
    """One verdict per target, target shape and token count ≥ `min_tokens` present in `rows`."""
    verdicts = []
    token_counts = sorted({r.tokens for r in rows if r.tokens >= min_tokens})
    for target in targets:
        for shape in shapes:
            for tokens in token_counts:
                here = [r for r in rows if tuple(r.shape) == shape and r.tokens == tokens]
                verdicts.append(_verdict(target, shape, tokens, here))
    return verdicts


def _verdict(target: Target, shape, tokens, rows) -> Verdict:
    base = next((r for r in rows if r.backend == target.baseline and r.dtype == target.dtype), None)
    tries = [r for r in rows if r.backend in target.candidates and r.dtype == target.dtype]
    if base is None or base.status != "ok":
        why = base.reason if base is not None else "no baseline row"
        return Verdict(target.name, shape, tokens, "NOT RUN", None, target.baseline, f"{target.baseline}: {why}")
    good = [r for r in tries if r.status == "ok" and r.checked is not False and r.median_ms]
    if not good:
        why = "; ".join(f"{r.backend}: {r.status} {r.reason}".strip() for r in tries) or "no candidate rows"
        return Verdict(target.name, shape, tokens, "NOT RUN", None, "", why)
    best = min(good, key=lambda r: r.median_ms)
    speedup = base.median_ms / best.median_ms
    verdict = "PASS" if speedup >= target.threshold else "MISS"
    limit = f", limited by {best.limited_by}" if best.limited_by else ""
    return Verdict(target.name, shape, tokens, verdict, speedup, best.backend,
                   f"{best.median_ms:.3f} ms vs {base.median_ms:.3f} ms (need ≥ {target.threshold}×{limit})")


def kernel_table(rows: list[KernelResult]) -> str:
    lines = ["| shape | tokens | dtype | backend | status | median ms | kernel ms | host ms | limit | × | "
             "rel. error | checked | plan / reason |", "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r.shape[0]}x{r.shape[1]} | {r.tokens} | {r.dtype} | {r.backend} | {r.status} | "
                     f"{_f(r.median_ms, 3)} | {_f(r.kernel_ms, 3)} | {_f(r.host_ms, 3)} | {r.limited_by or '–'} | "
                     f"{_f(r.speedup)} | {_e(r.rel_error)} | {_yes(r.checked)} | {_cell(r.plan, r.reason)} |")
    return "\n".join(lines) + "\n"


def serving_table(rows: list[EndToEndResult]) -> str:
    lines = ["| model | variant | phase | tokens | batch | graphed | status | TTFT ms | ITL ms | tokens/s | "
             "$/M tokens | peak MiB | rel. error | checked | reason |", "|" + "---|" * 15]
    for r in rows:
        lines.append(f"| {r.model} | {r.variant} | {r.phase} | {r.prompt_tokens} | {r.batch} | "
                     f"{'yes' if r.graphed else 'no'} | {r.status} | {_f(r.ttft_ms)} | {_f(r.itl_ms, 3)} | "
                     f"{_f(r.tokens_per_s, 0)} | {_f(r.cost_per_million, 4)} | "
                     f"{_f(None if r.peak_bytes is None else r.peak_bytes / 2**20, 0)} | {_e(r.rel_error)} | "
                     f"{_yes(r.checked)} | {_cell('', r.reason)} |")
    return "\n".join(lines) + "\n"


def verdict_table(verdicts: list[Verdict]) -> str:
    lines = ["| target | shape | tokens | verdict | × | backend | detail |", "|" + "---|" * 7]
    for v in verdicts:
        lines.append(f"| {v.target} | {v.shape[0]}x{v.shape[1]} | {v.tokens} | **{v.verdict}** | {_f(v.speedup)} | "
                     f"{v.backend or '–'} | {_cell('', v.detail)} |")
    return "\n".join(lines) + "\n"


def _f(value, digits=2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _e(value) -> str:
    return "–" if value is None else f"{value:.1e}"


def _yes(value) -> str:
    return "–" if value is None else ("yes" if value else "NO")


def _cell(plan: str, reason: str) -> str:
    return "; ".join(t for t in (plan, reason) if t).replace("|", "/")[:160] or "–"


def add_bench_arguments(bench) -> None:
    """The `bench` subcommand's options for issue 14's paths (registered by core/cli/main.py)."""
    bench.add_argument("--gpu-price", type=float, default=0.0, metavar="USD",
                       help="$ per GPU-hour: end-to-end rows get the cost per million tokens")
    bench.add_argument("--no-direct", action="store_true", help="skip cuSPARSELt called directly (CUDA)")
    bench.add_argument("--no-fp8", action="store_true", help="skip the fp8 and fp8 + 2:4 cases (CUDA)")


def bench_choices(args) -> dict:
    """BenchOptions fields from `add_bench_arguments`' options."""
    return {"gpu_price": args.gpu_price, "direct": not args.no_direct, "fp8": not args.no_fp8}
