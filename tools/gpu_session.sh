#!/usr/bin/env bash
# One GPU session on the device machine: build the CUDA extension, then run the named steps.
# Usage: bash tools/gpu_session.sh <step>...
#   build                      pip install -e . (builds longlive_kernels._C)
#   test:<path>[::k-expr]      pytest on <path> incl. @gpu tests (HYPOTHESIS_PROFILE=gpu)
#   bench:<file.py>[,args]     python <file.py> args (commas become spaces)
#   py:<file.py>[,args]        any python script
#   torchrun:<N>,<file.py>[,args]  torchrun --nproc-per-node N <file.py> args (multi-GPU benches)
# Each step has a time limit (STEP_TIMEOUT, default 300 s). Everything goes to $OUT/session.log;
# the markdown tables each bench prints also go to $OUT/tables.md.
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG="$OUT/session.log"; TABLES="$OUT/tables.md"
T=${STEP_TIMEOUT:-300}
log() { echo "== $* ($(date +%T))" | tee -a "$LOG"; }
# run_script CMD...: time-limited, output to the log, markdown tables and result lines to $TABLES
run_script() {
  log "$*"
  timeout "$T" "$@" > "$OUT/step.tmp" 2>&1; local rc=$?
  cat "$OUT/step.tmp" >> "$LOG"; echo "rc=$rc" >> "$LOG"
  { echo "### $* (rc=$rc)"; grep -E "^\||^[A-Za-z#].*(GB/s|TFLOP|FPS|copy|device)" "$OUT/step.tmp"; echo; } >> "$TABLES"
  tail -25 "$OUT/step.tmp"; echo "rc=$rc"
}
for step in "$@"; do
  case "$step" in
    build)
      log build
      nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee -a "$LOG"
      python3 -m pip install -q --no-build-isolation --no-deps -e . >> "$LOG" 2>&1 \
        || { tail -40 "$LOG"; exit 1; }
      python3 -c "import torch, longlive_kernels._C; print('ext ok', torch.__version__)" 2>&1 | tee -a "$LOG" ;;
    test:*)
      spec=${step#test:}; path=${spec%%::*}; kexpr=""; [[ "$spec" == *::* ]] && kexpr=${spec#*::}
      log "pytest $path ${kexpr:+-k $kexpr}"
      HYPOTHESIS_PROFILE=gpu timeout "$T" python3 -m pytest -q -p no:cacheprovider -m "gpu or not gpu" \
        ${kexpr:+-k "$kexpr"} "$path" > "$OUT/pytest.tmp" 2>&1
      echo "rc=$?" >> "$OUT/pytest.tmp"
      cat "$OUT/pytest.tmp" >> "$LOG"; grep -E "passed|failed|error|rc=" "$OUT/pytest.tmp" | tail -4 ;;
    bench:*|py:*)
      spec=${step#*:}; f=${spec%%,*}; args=""; [[ "$spec" == *,* ]] && args=${spec#*,}
      run_script python3 "$f" ${args//,/ } ;;
    torchrun:*)
      spec=${step#torchrun:}; n=${spec%%,*}; rest=${spec#*,}; f=${rest%%,*}; args=""
      [[ "$rest" == *,* ]] && args=${rest#*,}
      run_script torchrun --nproc-per-node "$n" "$f" ${args//,/ } ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
rm -f "$OUT/pytest.tmp" "$OUT/step.tmp"
