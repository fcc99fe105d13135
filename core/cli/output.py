"""A command's result dict printed for people (`--json` prints the dict itself)."""

from __future__ import annotations


def print_human(command: str, result: dict) -> None:
    if command == "inspect":
        print(f"{result['model']}: {result['family']} ({result['model_class']}), {len(result['blocks'])} blocks "
              f"at {result['blocks_path']}, context {result['context_length']}")
        print(f"prunable parameters {result['prunable_parameters']:,} of {result['total_parameters']:,}")
        for block in result["blocks"]:
            print(f"  {block['name']}")
            for layer in block["layers"]:
                print(f"    {layer['name']:<28} {layer['shape'][0]:>6} x {layer['shape'][1]:<6} {layer['parameters']:>12,}")
    elif command == "bench":
        print(result["markdown"], end="")
    elif command == "unpack":
        print(f"dense folder written to {result['out']}")
    elif command == "eval":
        print(f"perplexity {result['ppl']:.3f} over {result['windows']} windows of {result['seqlen']} tokens")
    elif result["method"] == "none":
        print(f"quantized in {result['seconds']:.1f} s, {len(result['skipped'])} layers left as they were")
        _print_run(result)
    else:
        print(f"{result['method']} {result['pattern']}: {result['sparsity']:.2%} of {result['layers']} layers "
              f"pruned in {result['seconds']:.1f} s, {len(result['skipped'])} skipped")
        _print_run(result)


def _print_run(result: dict) -> None:
    if True:
        if result.get("allocation"):
            print_allocation(result["allocation"])
        if result.get("recovery"):
            r = result["recovery"]
            what = "KL to the dense model" if r["mode"] == "e2e" else "relative output error, mean over blocks"
            before = sum(b["before"] for b in r["blocks"]) / len(r["blocks"])
            after = sum(b["after"] for b in r["blocks"]) / len(r["blocks"])
            print(f"recovery ({r['mode']}): {what} {before:.4g} -> {after:.4g} in {r['seconds']:.1f} s")
        if result.get("quantization"):
            q = result["quantization"]
            error = f", quantization's own output error {q['mean_quant_error']:.3g} (mean)" \
                if q["mean_quant_error"] is not None else ""
            print(f"quantized {q['layers']} layers to int{q['bits']} ({q['method']}, "
                  f"{'symmetric' if q['symmetric'] else 'asymmetric'}, groups of "
                  f"{'/'.join(map(str, q['group_sizes']))}){error}")
        if result["ppl"] is not None:
            print(f"perplexity: dense {result['ppl_dense']:.3f} -> compressed {result['ppl']:.3f}")
        if result.get("compact"):
            c = result["compact"]
            print(f"compact 2:4: {c['layers']} layers, {c['bytes'] / 2**20:.1f} MiB "
                  f"({c['ratio']:.0%} of the dense export's {c['dense_bytes'] / 2**20:.1f} MiB)")
        elif result.get("export"):
            print(result["export"]["description"])
        print(f"written to {result['out']}")


def print_allocation(allocation: dict) -> None:
    patterns = allocation.get("block_patterns")
    if allocation["kind"] != "owl":      # sensitivity or explicit: no outlier ratios
        scores = allocation.get("block_sensitivity") or [None] * len(allocation["block_sparsity"])
        bounds = f" in [{allocation['min_sparsity']:g}, {allocation['max_sparsity']:g}]" \
            if allocation.get("min_sparsity") is not None else ""
        print(f"allocation {allocation['kind']}{bounds}:")
        print("  block  sensitivity  sparsity" + ("  pattern" if patterns else ""))
        for i, (score, sparsity) in enumerate(zip(scores, allocation["block_sparsity"])):
            shown = f"{score:>11.4g}" if score is not None else f"{'':>11}"
            print(f"  {i:>5}  {shown}  {sparsity:>8.1%}" + (f"  {patterns[i]:>7}" if patterns else ""))
        return
    print(f"allocation {allocation['kind']} (λ {allocation['owl_lambda']:g}, outliers above "
          f"{allocation['owl_threshold']:g}× the block mean):")
    print("  block  outliers  sparsity" + ("  pattern" if patterns else ""))
    for i, (ratio, sparsity) in enumerate(zip(allocation["outlier_ratios"], allocation["block_sparsity"])):
        print(f"  {i:>5}  {ratio:>8.2%}  {sparsity:>8.1%}" + (f"  {patterns[i]:>7}" if patterns else ""))
