#!/usr/bin/env bash
# One GPU session on the device machine: build the CUDA extension, then run the named steps.
# Usage: bash tools/gpu_session.sh <step>...   (steps: build, test-fp4, bench-quantize, ...)
# Logs land in $OUT (fetched back); the last lines printed are a summary table.
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "== $* ($(date +%T))"; }
for step in "$@"; do
  case "$step" in
    build)
      log build
      nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
      python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
        || { tail -40 "$OUT/build.log"; exit 1; }
      python3 -c "import torch, longlive_kernels._C; print('ext ok', torch.__version__)" ;;
    py:*)
      f=${step#py:}; log "python $f"
      python3 "$f" 2>&1 | tee "$OUT/$(basename "$f" .py).log" | tail -40 ;;
    test-*)
      area=${step#test-}; log "pytest $area"
      HYPOTHESIS_PROFILE=gpu python3 -m pytest -q -x tests/$area -m "gpu or not gpu" -p no:cacheprovider \
        2>&1 | tee "$OUT/test-$area.log" | tail -15 ;;
    bench-*)
      name=${step#bench-}; f=$(ls bench/*/bench_$name.py | head -1); log "bench $f"
      python3 "$f" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench-$name.log" | tail -40 ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
