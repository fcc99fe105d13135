"""How much memory a run will take, estimated before the model is loaded, and what to do when it will not fit.

The parts: the interpreter with torch and transformers; the weights (all of them in memory, or, streamed, the
embeddings and two blocks); the calibration activations at one block boundary, in and out (or one batch
each, spilled); one block's turn (a batch's intermediates and its layers' statistics, `working_bytes`); the
logits of one evaluation window; for end-to-end recovery, the dense teacher and Adam's two moments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import UserError
from ..data.calibration import default_seqlen
from ..models.architectures import Layout
from ..models.loaded import context_length
from .capture import auto_batch_size
from .methods import METHODS
from .plan import PrunePlan
from .quantize_step import needs as quantization_needs
from .stats import HESSIAN

RUNTIME_BYTES = 400 << 20     # python, torch, transformers and the CLI before any model (measured 254 MiB)
GIB = 1 << 30


@dataclass(frozen=True)
class RunShape:
    """What the estimate needs of a run besides its plan."""

    nsamples: int
    seqlen: int | None              # None: the calibration default for the model's context
    dtype: torch.dtype              # the weights' and activations' dtype in memory
    memory_budget: int | None = None
    evaluate: bool = False


@dataclass(frozen=True)
class Footprint:
    parts: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(size for _, size in self.parts)

    def describe(self) -> str:
        return " + ".join(f"{name} {gib(size)}" for name, size in self.parts if size >= 1 << 20)


def gib(count: int) -> str:
    return f"{count / GIB:,.1f} GiB"


def working_bytes(layout: Layout, per_store: int, batch_fraction: float, plan: PrunePlan) -> int:
    """Memory a block's turn needs besides its weights: a batch in and out (with ~8× for attention and MLP
    intermediates) and the statistics of its layers (a float32 Hessian per layer for SparseGPT). Block-wise
    recovery adds the dense targets, a micro-batch's autograd intermediates (~30× its hidden states, bounded
    here by a whole batch's) and Adam's two moments of the trained weights (bounded by the statistics' size)."""
    needs = METHODS[plan.method].needs | quantization_needs(plan)
    widest = max((l.in_features for b in layout.inventory for l in b.linears), default=0)
    count = max((len(b.linears) for b in layout.inventory), default=0)
    stats = count * widest * widest * 4 * 3 if HESSIAN in needs else count * widest * 4
    working = int(10 * per_store * batch_fraction) + stats
    if plan.recovery.mode == "blockwise":
        working += int(32 * per_store * batch_fraction) + count * widest * widest * 4 * 3
    return working


def estimate(model, layout: Layout, plan: PrunePlan, run: RunShape, streamed: bool) -> Footprint:
    """The peak resident memory of a run of `plan` on `model` (a meta-device skeleton will do)."""
    element, seqlen, per_store, batch = _sizes(model, plan, run)
    parameters = _unique_parameters(model)
    blocks = _block_parameters(layout)
    weights = (parameters - sum(blocks) + 2 * max(blocks)) if streamed else parameters
    spilled = run.memory_budget is not None and 2 * per_store > run.memory_budget
    activations = 2 * per_store * batch // run.nsamples if spilled else 2 * per_store
    parts = [("runtime", RUNTIME_BYTES), ("weights", weights * element), ("activations", activations),
             ("one block's turn", working_bytes(layout, per_store, batch / run.nsamples, plan))]
    if run.evaluate:
        parts.append(("evaluation logits", 3 * seqlen * model.config.vocab_size * 4))
    if plan.recovery.mode == "e2e":
        parts.append(("end-to-end recovery", 3 * parameters * element))
    return Footprint(tuple(parts))


def _sizes(model, plan: PrunePlan, run: RunShape) -> tuple[int, int, int, int]:
    """Bytes per element, tokens per window, bytes of one block boundary's activations, windows per batch."""
    element = torch.empty((), dtype=run.dtype).element_size()
    seqlen = run.seqlen or default_seqlen(context_length(model.config))
    per_store = run.nsamples * seqlen * model.config.hidden_size * element
    return element, seqlen, per_store, min(plan.batch_size or auto_batch_size(seqlen), run.nsamples)


def _block_parameters(layout: Layout) -> list[int]:
    return [sum(p.numel() for p in block.parameters()) for block in layout.blocks]


def _unique_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())      # parameters() yields tied weights once


def available_memory() -> int | None:
    """Bytes this process can still take: the kernel's MemAvailable, lowered by a cgroup limit if there is one."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    available = next((int(line.split()[1]) * 1024 for line in meminfo.splitlines()
                      if line.startswith("MemAvailable:")), None)
    limit = _cgroup_room()
    return limit if available is None else min(available, limit) if limit is not None else available


def _cgroup_room() -> int | None:
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            return max(int(limit) - usage, 0)
    return None


@dataclass(frozen=True)
class MemoryPlan:
    stream: bool
    memory_budget: int | None
    notes: tuple[str, ...] = ()


def plan_memory(model, layout: Layout, plan: PrunePlan, run: RunShape, *, stream: bool, can_stream: str | None,
                available: int | None) -> MemoryPlan:
    """`model`: the run's model, a meta-device skeleton will do (`core.models.streaming.open_skeleton`).
    Keep the run as asked where it fits in `available` bytes; else take the least intrusive change that
    fits (spill the activations to disk; stream the weights from disk, when `can_stream` is None, otherwise it
    says why not; both), saying so; else refuse with the numbers."""
    if available is None:
        return MemoryPlan(stream, run.memory_budget)
    asked = estimate(model, layout, plan, run, streamed=stream)
    if asked.total <= available:
        return MemoryPlan(stream, run.memory_budget)
    others = asked.total - dict(asked.parts)["activations"]
    spill = run.memory_budget if run.memory_budget is not None else max(available - others, 0)
    choices = [(stream, spill)] + ([(True, run.memory_budget), (True, spill)] if not stream and can_stream is None else [])
    for streamed, budget in choices:
        footprint = estimate(model, layout, plan, replace(run, memory_budget=budget), streamed)
        if footprint.total <= available:
            changes = (["streaming the model from disk one block at a time (--stream)"] if streamed and not stream
                       else []) + ([f"spilling calibration activations to disk beyond {gib(budget)} (--memory-budget)"]
                                   if budget != run.memory_budget else [])
            note = (f"the run as asked needs about {gib(asked.total)} of memory ({asked.describe()}) and "
                    f"{gib(available)} is available: " + ", and ".join(changes))
            return MemoryPlan(streamed, budget, (note,))
    raise UserError(_refusal(footprint, available, choices[-1][0], can_stream))


def _refusal(footprint: Footprint, available: int, stream: bool, can_stream: str | None) -> str:
    advice = ("use fewer or shorter calibration windows (--nsamples, --seqlen)" if stream else
              f"--stream is not possible here ({can_stream}); use fewer or shorter calibration windows "
              "(--nsamples, --seqlen), a smaller --dtype, or a machine with more memory")
    return (f"even at its leanest the run needs about {gib(footprint.total)} of memory ({footprint.describe()}) "
            f"and {gib(available)} is available: {advice}; or pass --no-memory-check to try anyway.")


def check_gpu(model, layout: Layout, plan: PrunePlan, run: RunShape, device: str, free: int) -> None:
    """Refuse a GPU run whose largest block's turn (its weights in `run.dtype` and `working_bytes`) exceeds
    the `free` bytes of `device`."""
    element, _, per_store, batch = _sizes(model, plan, run)
    block = max(_block_parameters(layout)) * element
    need = block + working_bytes(layout, per_store, batch / run.nsamples, plan)
    if need > free:
        raise UserError(f"one block's turn needs about {gib(need)} on {device} (its weights {gib(block)}, the rest "
                        f"a batch's intermediates and its statistics) and {gib(free)} is free there: lower "
                        "--batch-size, free the GPU, or run on the CPU (--device cpu).")
