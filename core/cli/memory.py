"""Before a CLI run loads its model: will it fit in memory? If not, stream it, spill its activations, or refuse."""

from __future__ import annotations

from pathlib import Path

import torch

from ..compute import resolve_device, resolve_dtype
from ..errors import UserError
from ..events import Job
from ..export.writers import ExportRequest
from ..models.demo import ensure_demo
from ..models.streaming import open_skeleton
from ..pruning.footprint import RunShape, available_memory, check_gpu, plan_memory
from ..pruning.plan import PrunePlan


def fit_memory(args, plan: PrunePlan, export: ExportRequest, job: Job) -> None:
    """Stream, spill or refuse a run that would not fit in memory, before the model is loaded (a folder's
    shapes come from its config and safetensors headers); refuse a GPU run whose largest block would not fit."""
    folder = ensure_demo(job) if args.model == "demo" else Path(args.model).expanduser()
    if not (folder / "config.json").is_file():
        return
    try:
        model, layout, _ = open_skeleton(folder, args.trust_remote_code)
    except UserError:
        return                  # opening the model proper says what is wrong with it
    run = RunShape(args.nsamples, args.seqlen, resolve_dtype(args.dtype), args.memory_budget, bool(args.eval))
    memory = plan_memory(model, layout, plan, run, stream=args.stream,
                         can_stream=_why_not_streamed(args, export, plan), available=available_memory())
    for note in memory.notes:
        job.message(note)
    args.stream, args.memory_budget = memory.stream, memory.memory_budget
    device = resolve_device(args.device)
    if device.type == "cuda":
        check_gpu(model, layout, plan, run, str(device), torch.cuda.mem_get_info(device)[0])


def _why_not_streamed(args, export: ExportRequest, plan: PrunePlan) -> str | None:
    fmt = export.resolved(plan.quantizing)
    if args.eval:
        return "--eval needs the whole model in memory"
    if fmt != "hf":
        return f"the {fmt} format is written from a model in memory"
    if plan.recovery.mode == "e2e":
        return "end-to-end recovery trains the whole model at once"
    if plan.quantizing:
        return "quantized runs are not streamed yet"
    return None
