#!/usr/bin/env bash
# Syntax-check csrc/bindings.cpp against the installed (CPU) torch headers, without CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
T=$(python3 -c "import torch, os; print(os.path.dirname(torch.__file__))")
PYINC=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
STUB=$(mktemp -d)
mkdir -p "$STUB/c10/cuda/impl" && echo '#pragma once' > "$STUB/c10/cuda/impl/cuda_cmake_macros.h"
CUDA_INC=${CUDA_HOME:-/usr/local/cuda}/include
g++ -std=c++17 -w -fsyntax-only -I"$STUB" -I"$T/include" -I"$T/include/torch/csrc/api/include" \
  -Icsrc/include -I"$CUDA_INC" -I"$PYINC" csrc/bindings.cpp
echo "bindings.cpp: syntax ok"
