"""Argument groups more than one subcommand shares, and their conversion into engine options."""

from __future__ import annotations

import argparse

from ..compute import MODEL_DTYPES
from ..errors import UserError
from ..export.gguf import GGUF_TYPES
from ..export.writers import FORMATS
from ..quantization.scheme import METHODS as QUANT_METHODS, QuantScheme


def quantize_args(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument("--quantize", choices=["int4", "int8"], default=default,
                        help="quantize the kept weights (after pruning; every pruned zero stays zero)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="inputs per scale (default 128, or 64 or 32 where 128 does not divide a layer's "
                             "inputs; 0: one scale per output channel)")
    symmetry = parser.add_mutually_exclusive_group()
    symmetry.add_argument("--symmetric", dest="symmetric", action="store_true", default=True,
                          help="zero point 0 (the default)")
    symmetry.add_argument("--asymmetric", dest="symmetric", action="store_false", help="an integer zero point per group")
    parser.add_argument("--act-order", action="store_true",
                        help="GPTQ: columns by decreasing Hessian diagonal, scales fitted first (llm-compressor's "
                             "default; on the demo at int4 g64 it took perplexity 41.5 to 37.4)")
    parser.add_argument("--quant-method", default="gptq", choices=list(QUANT_METHODS),
                        help="gptq (error-compensating, the default) or rtn (round to nearest)")
    parser.add_argument("--joint", action="store_true",
                        help="with --method sparsegpt: quantize inside SparseGPT's own sweep (one pass)")
    parser.add_argument("--format", default="auto", choices=list(FORMATS),
                        help="export format (default: compressed-tensors when quantized, else hf)")
    parser.add_argument("--gguf-type", default=None, choices=list(GGUF_TYPES),
                        help="with --format gguf (default: q8_0 for int8, q4_0 for int4, f16 unquantized)")


def quant_scheme(args) -> QuantScheme | None:
    if args.quantize is None:
        if args.act_order or args.joint or args.group_size is not None:
            raise UserError("--group-size, --act-order and --joint set up quantization: add --quantize int4 or int8.")
        return None
    return QuantScheme(bits=int(args.quantize[3:]), symmetric=args.symmetric, group_size=args.group_size,
                       act_order=args.act_order, method=args.quant_method, dampening=args.dampening,
                       joint=args.joint)


def model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model folder, a .gguf file, a cached hub id, or 'demo'")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=list(MODEL_DTYPES))
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model authors' own code")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout at the end")
