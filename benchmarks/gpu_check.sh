#!/usr/bin/env bash
# The whole GPU check, for a lent GPU (or any machine), in under 9 minutes.
#
#   bash benchmarks/gpu_check.sh            # results under $OUT when set, else benchmarks/results/
#   TOKENIZER=dir CALIB_TEXT=wiki.valid.raw bash benchmarks/gpu_check.sh   # also prune on the GPU
#
# A lent machine is fresh and offline: this makes its own venv on top of the machine's python3
# (--system-site-packages, so the image's CUDA PyTorch and transformers are used; nothing is
# downloaded) and runs the project from the source tree. Steps: environment report, the CUDA tests,
# the kernel benchmark in fp16 (+int8); with a tokenizer and calibration text, pruning on the GPU
# (benchmarks/gpu_prune.py) and the streamed 1.1B scale benchmark on the GPU; then kernels in bf16.
# Each step has its own time cap, so a slow one cannot starve the rest. Without CUDA it runs the
# CPU kernel fallback, shortened.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
LIMIT=${LIMIT:-520}                                    # seconds for the whole script
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu-check.log"
: >"$LOG"
log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG" >&2; }
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE
export COMPRESSION_STUDIO_CACHE=${COMPRESSION_STUDIO_CACHE:-$HOME/.cache/compression-studio}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# 1. Python: the project's .venv where one exists here; else the machine's python3 when it has what the
# engine needs (the project runs from the source tree); else a venv over it.
if [ "${USE_PROJECT_VENV:-1}" = 1 ] && [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
  PY=.venv/bin/python
elif "${PYTHON:-python3}" -c "import torch, transformers, safetensors" 2>/dev/null; then
  PY=$(command -v "${PYTHON:-python3}")
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
  timeout 100 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/core/test_bench.py tests/core/test_compact.py \
      tests/core/test_pipeline.py -k "cuda or cutlass_tensor or semi_structured" 2>&1 | tee -a "$LOG" || log "CUDA tests failed or timed out (see above)"
fi

# 3. Kernels: fp16 with int8 first; bf16 at the end if time is left.
if [ "$CUDA" = 1 ]; then
  log "kernel benchmark fp16 (+int8), $(left) s left"
  timeout 130 "$PY" benchmarks/gpu_bench.py --model "$MODEL" --out "$RESULTS" --dtypes fp16 --budget 0.25 \
      2>&1 | tee -a "$LOG" || log "fp16 run failed or timed out (see above)"
  # 4. Pruning on the GPU: the demo architecture at the reference protocol, and CPU against GPU.
  if [ -n "${TOKENIZER:-}" ] && [ -n "${CALIB_TEXT:-}" ]; then
    log "pruning on the GPU, $(left) s left"
    timeout 130 "$PY" benchmarks/gpu_prune.py --tokenizer "$TOKENIZER" --calib "$CALIB_TEXT" --check-cpu \
        --out "$RESULTS" 2>&1 | tee -a "$LOG" || log "GPU pruning failed or timed out (see above)"
    # 5. The scale benchmark (1.1B random Llama, streamed from disk) with the GPU doing the work.
    log "scale benchmark on the GPU, $(left) s left"
    timeout 100 "$PY" benchmarks/scale.py --device cuda --tokenizer "$TOKENIZER" --calib-text "$CALIB_TEXT" \
        2>&1 | tee -a "$LOG" || log "scale benchmark failed or timed out (see above)"
  else
    log "TOKENIZER / CALIB_TEXT not set: no pruning on the GPU"
  fi
  # 6. The engine's CPU suite with a GPU present ("auto" now means CUDA); the demo-model tests need files this
  # machine may not have. Informative: CI on the CPU is what gates a change.
  if [ "$(left)" -gt 80 ]; then
    log "tests/core with CUDA present, $(left) s left"
    timeout $(( $(left) - 50 )) "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/core -m "not slow" \
        --ignore tests/core/test_gguf.py --tb=line 2>&1 | tail -40 | tee -a "$LOG" || log "tests/core stopped (see above)"
  fi
  if [ "$(left)" -gt 45 ]; then
    log "kernel benchmark bf16, $(left) s left"
    timeout $(( $(left) - 10 )) "$PY" benchmarks/gpu_bench.py --model "$MODEL" --out "$RESULTS" --dtypes bf16 --tokens 16,2048,8192 --budget 0.15 \
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
