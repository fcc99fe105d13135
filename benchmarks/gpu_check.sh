#!/usr/bin/env bash
# The whole GPU benchmark on the demo model, for a lent GPU (or any machine), in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh            # results under $OUT when set, else benchmarks/results/
#
# A lent machine is fresh and offline: this makes its own venv on top of the machine's python3
# (--system-site-packages, so the image's CUDA PyTorch and transformers are used; nothing is
# downloaded) and runs the project from the source tree. Steps: environment report, the CUDA tests,
# the benchmark in fp16 (+int8) then bf16. Without CUDA it runs the CPU fallback, shortened.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
LIMIT=${LIMIT:-470}                                    # seconds for the whole script
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu-check.log"
: >"$LOG"
log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG" >&2; }
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE
export COMPRESSION_STUDIO_CACHE=${COMPRESSION_STUDIO_CACHE:-$HOME/.cache/compression-studio}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# 1. Python: a venv of our own over the machine's packages; the project's .venv where one exists here.
if [ "${USE_PROJECT_VENV:-1}" = 1 ] && [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
  PY=.venv/bin/python
else
  VENV=${VENV:-/tmp/compression-studio-venv}
  [ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv --system-site-packages "$VENV"
  PY="$VENV/bin/python"
fi
if ! "$PY" -c "import torch, transformers, safetensors" 2>>"$LOG"; then
  log "no PyTorch/transformers/safetensors for $PY: run bash setup.sh first, or use a machine whose python3 has them"
  exit 1
fi
log "python: $PY"
"$PY" - <<'PYEOF' 2>&1 | tee -a "$LOG"
import importlib, torch
print("python", __import__("sys").version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "| capability", torch.cuda.get_device_capability(0), "| memory GiB",
          round(p.total_memory / 2**30), "| L2 MiB", getattr(p, "L2_cache_size", 0) >> 20)
    print("cuSPARSELt", torch.backends.cusparselt.is_available(), torch.backends.cusparselt.version())
for name in ("transformers", "safetensors", "psutil", "tqdm", "pynvml", "pytest"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "present"))
    except Exception as exc:
        print(name, "MISSING:", exc)
from core import sparse_rules
cap = sparse_rules.device_capability()
print("2:4 backends:", sparse_rules.available_backends(cap))
PYEOF
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
# The converted demo model when this machine has it; else its architecture with random weights (an offline
# machine would otherwise wait on pip's retries trying to download it).
MODEL=config
[ -f "$COMPRESSION_STUDIO_CACHE/demo/SmolLM2-135M-Instruct/config.json" ] && MODEL=demo
log "model: $MODEL"

# 2. The CUDA tests (they skip without CUDA; on the CPU the full suite is the CI's job, not this script's).
if [ "$CUDA" = 1 ]; then
  log "CUDA tests"
  timeout 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/core/test_bench.py tests/core/test_compact.py \
      -k "cuda or cutlass_tensor or semi_structured" 2>&1 | tee -a "$LOG" || log "CUDA tests failed or timed out (see above)"
fi

# 3. The benchmark: fp16 with int8 first, then bf16 if time is left.
if [ "$CUDA" = 1 ]; then
  log "benchmark fp16 (+int8), $(left) s left"
  timeout $(( $(left) - 150 )) "$PY" benchmarks/gpu_bench.py --model "$MODEL" --out "$RESULTS" --dtypes fp16 \
      2>&1 | tee -a "$LOG" || log "fp16 run failed or timed out (see above)"
  if [ "$(left)" -gt 120 ]; then
    log "benchmark bf16, $(left) s left"
    timeout $(( $(left) - 15 )) "$PY" benchmarks/gpu_bench.py --model "$MODEL" --out "$RESULTS" --dtypes bf16 --tokens 16,512,2048,8192 \
        2>&1 | tee -a "$LOG" || log "bf16 run stopped early"
  else
    log "no time left for bf16"
  fi
else
  log "no CUDA here: CPU fallback (dense / masked dense / CSR), shortened"
  timeout $(( $(left) - 10 )) "$PY" benchmarks/gpu_bench.py --model "$MODEL" --out "$RESULTS" --device cpu --tokens 1,16,128 \
      --budget 0.1 --prompt-tokens 32 --new-tokens 8 2>&1 | tee -a "$LOG"
fi
log "done; results:"
ls -la "$RESULTS" | tee -a "$LOG" >&2
