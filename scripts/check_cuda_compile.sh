#!/usr/bin/env bash
# Compile-check the CUDA backend without a GPU or a CUDA build of torch:
#  1. every csrc/cuda/*.cu with nvcc -c -std=c++17 -Icsrc for sm_80 and sm_90, with the flags
#     torch's build adds, warnings as errors;
#  2. when torch's headers and CUDA's headers are both found, a host-compiler syntax check of the
#     torch binding csrc/cuda/*.cpp (a CPU wheel lacks one generated CUDA header; an empty stand-in
#     is supplied for it in the temp dir).
# Objects go to a temp dir that is removed on exit. Exits 0 with "skipped: nvcc not found" when
# there is no nvcc, nonzero on any compile error. NVCC and CXX override the compilers.
# The kernels' results are checked without a GPU by tests/cuda_emulation/check_emulated.py (a few
# minutes); FRKD_CUDA_EMULATE=1 runs it at the end of this script.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [ -z "$NVCC" ]; then
  echo "check_cuda_compile: skipped: nvcc not found"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
shopt -s nullglob
sources=(csrc/cuda/*.cu)
bindings=(csrc/cuda/*.cpp)
if [ ${#sources[@]} -eq 0 ]; then
  echo "check_cuda_compile: no csrc/cuda/*.cu sources"
  exit 1
fi

# The flags torch.utils.cpp_extension adds to every nvcc call of the real build.
torch_nvcc_flags=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
  -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr -Xcompiler -fPIC)
failed=0
for arch in sm_80 sm_90; do
  for src in "${sources[@]}"; do
    obj="$tmp/$(basename "$src" .cu).$arch.o"
    if "$NVCC" -c -std=c++17 -arch="$arch" -Icsrc "${torch_nvcc_flags[@]}" -Werror all-warnings \
        -Xcompiler -Wall,-Wextra "$src" -o "$obj"; then
      echo "check_cuda_compile: ok   $src ($arch)"
    else
      echo "check_cuda_compile: FAIL $src ($arch)"
      failed=1
    fi
  done
done

# Binding: needs torch's include dir (from the active python) and CUDA's headers (next to nvcc).
cuda_include=""
for dir in "${CUDA_HOME:-}" "$(dirname "$(readlink -f "$NVCC")")/.." /usr/local/cuda; do
  if [ -n "$dir" ] && [ -f "$dir/include/cuda_runtime_api.h" ]; then
    cuda_include="$(cd "$dir/include" && pwd)"
    break
  fi
done
python=${PYTHON:-$(command -v python || command -v python3 || true)}
torch_include=""
if [ -n "$python" ]; then
  torch_include=$("$python" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))" \
    2>/dev/null || true)
fi
CXX=${CXX:-$(command -v g++ || command -v c++ || true)}
if [ ${#bindings[@]} -eq 0 ]; then
  echo "check_cuda_compile: no csrc/cuda/*.cpp binding to check"
elif [ -z "$torch_include" ] || [ ! -f "$torch_include/c10/cuda/CUDAStream.h" ] || \
     [ -z "$cuda_include" ] || [ -z "$CXX" ]; then
  echo "check_cuda_compile: binding check skipped (needs torch's c10/cuda headers, CUDA's include dir and a C++ compiler)"
else
  mkdir -p "$tmp/stub/c10/cuda/impl"
  if [ ! -f "$torch_include/c10/cuda/impl/cuda_cmake_macros.h" ]; then
    : > "$tmp/stub/c10/cuda/impl/cuda_cmake_macros.h"
  fi
  for src in "${bindings[@]}"; do
    if "$CXX" -std=c++17 -fsyntax-only -Wall -Wextra -Werror -Icsrc -isystem "$torch_include" \
        -isystem "$torch_include/torch/csrc/api/include" -isystem "$cuda_include" -isystem "$tmp/stub" "$src"; then
      echo "check_cuda_compile: ok   $src (host syntax)"
    else
      echo "check_cuda_compile: FAIL $src (host syntax)"
      failed=1
    fi
  done
fi

if [ "$failed" -ne 0 ]; then
  echo "check_cuda_compile: compile errors above"
  exit 1
fi
echo "check_cuda_compile: all CUDA sources compile"

if [ "${FRKD_CUDA_EMULATE:-0}" = "1" ]; then
  "${python:-python3}" tests/cuda_emulation/check_emulated.py
fi
