"""Every export format behind one request: what each needs, checked before any work, and the writer it calls.

`hf` is the ordinary Hugging Face folder (pruned zeros stored densely; a quantized run stores its dequantized
weights); `compressed-tensors` the quantized folder vLLM, SGLang and transformers load; `gguf` one file for
llama.cpp, LM Studio and Ollama; `compact` this tool's own 2:4 layout (with int4/int8 codes when quantized).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..events import Job
from ..formats.compact24 import weight_files
from ..patterns import is_two_four
from . import compressed_tensors, gguf
from .compact import CompactSummary, export_compact
from .destination import check_output, check_room, clean_leftovers
from .folder import write_export
from .sizes import planned_export_bytes

FORMATS = ("auto", "hf", "compressed-tensors", "gguf", "compact")
AUTO = "auto"       # compressed-tensors for a quantized run, the ordinary folder otherwise


@dataclass(frozen=True)
class ExportRequest:
    out: str
    overwrite: bool = False
    format: str = AUTO
    gguf_type: str | None = None    # f16, q8_0 or q4_0; None: by the run's quantization (int8 q8_0, int4 q4_0)

    def resolved(self, quantized: bool) -> str:
        if self.format == AUTO:
            return "compressed-tensors" if quantized else "hf"
        return self.format

    def gguf_type_for(self, plan) -> str:
        if self.gguf_type is not None:
            return self.gguf_type
        scheme = plan.quantization
        return "f16" if scheme is None else {8: "q8_0", 4: "q4_0"}[scheme.bits]

    def check(self, plan, streamed: bool = False, loaded=None, job: Job | None = None) -> Path:
        """Refuse, before any work, what this export cannot do for `plan` (written while a streamed model is
        pruned, if `streamed`; `loaded`: the model, once open, for the checks that need it, such as the disk's
        room). Leftovers of killed exports to the same folder are cleaned first. The target folder."""
        self.check_format(plan, streamed, loaded)
        out = Path(self.out).expanduser().resolve()
        clean_leftovers(out, job)
        out = check_output(out, self.overwrite)
        if loaded is not None:
            fmt = self.resolved(plan.quantizing)
            check_room(out, planned_export_bytes(loaded, plan, fmt, self.gguf_type_for(plan)))
        return out

    def check_format(self, plan, streamed: bool = False, loaded=None) -> None:
        if self.format not in FORMATS:
            raise UserError(f"unknown export format {self.format!r}: choose one of {', '.join(FORMATS[1:])}.")
        fmt = self.resolved(plan.quantizing)
        if streamed and fmt != "hf":
            raise UserError(f"the {fmt} format is not available for streamed runs yet (--stream): prune with "
                            "streaming into an ordinary folder, or prune in memory.")
        if fmt == "compact" and not is_two_four(plan.served_pattern):
            raise UserError(f"the compact format stores 2:4 weights only and this run is {plan.served_pattern}: "
                            "prune with pattern 2:4 (--pattern 2:4), or export in another format.")
        if fmt == "compressed-tensors":
            if not plan.quantizing:
                raise UserError("compressed-tensors stores quantized weights and this run is not quantized: add "
                                "--quantize int4 or int8, or export the ordinary folder (--format hf).")
            compressed_tensors.require_compressed_tensors()
        if fmt == "gguf":
            qtype = self.gguf_type_for(plan)
            if qtype not in gguf.GGUF_TYPES:
                raise UserError(f"unknown GGUF type {qtype!r}: choose one of {', '.join(gguf.GGUF_TYPES)}.")
            if loaded is not None:
                gguf.check_gguf(loaded, qtype)


@dataclass(frozen=True)
class Exported:
    path: Path
    description: str                # a sentence on what was written and its size
    compact: CompactSummary | None = None
    format: str = "hf"
    weight_bytes: int = 0


def write(loaded, request: ExportRequest, report: dict, calib, result, job: Job) -> Exported:
    """Write the model as `request` asks, atomically; `result` is the run's `PruneResult`."""
    plan = result.plan
    fmt = request.resolved(plan.quantizing)
    request.check(plan, loaded=loaded, job=job)
    kwargs = {"overwrite": request.overwrite, "job": job}
    if fmt == "compact":
        summary = export_compact(loaded, request.out, report, calib, quantized=result.quantized or None, **kwargs)
        return Exported(summary.out, describe_compact(summary), summary, fmt, summary.compact_bytes)
    if fmt == "compressed-tensors":
        folder = compressed_tensors.export_compressed(loaded, request.out, report, result.quantized, calib, **kwargs)
    elif fmt == "gguf":
        folder = gguf.export_gguf(loaded, request.out, report, request.gguf_type_for(plan), **kwargs)
    else:
        folder = write_export(loaded, request.out, report, calib, **kwargs)
    size = folder_weight_bytes(folder)
    return Exported(folder, describe(fmt, size, plan, request.gguf_type_for(plan)), None, fmt, size)


def folder_weight_bytes(folder: Path) -> int:
    files = list(Path(folder).glob("*.gguf")) or weight_files(Path(folder), compact=False)
    return sum(f.stat().st_size for f in files)


def describe(fmt: str, size: int, plan, gguf_type: str = "f16") -> str:
    mib = f"{size / 2**20:,.1f} MiB"
    if fmt == "hf":
        stored = "quantized weights stored dequantized" if plan.quantizing else "pruned weights are stored as zeros"
        return f"weights {mib}, the same size as the dense model: {stored}"
    if fmt == "compressed-tensors":
        return f"compressed-tensors ({plan.quantization.name}): weights {mib}; vLLM, SGLang and transformers load it"
    return f"GGUF {gguf_type}: {mib}; llama.cpp, LM Studio and Ollama load it"


def describe_compact(summary: CompactSummary) -> str:
    return (f"compact 2:4: {summary.layers} layers packed, weights {summary.compact_bytes / 2**20:,.1f} MiB, "
            f"{summary.ratio:.0%} of the dense export's {summary.dense_bytes / 2**20:,.1f} MiB; "
            "load it with compression-studio or unpack it first")
