#!/usr/bin/env bash
# The CPU yardstick: builds llama.cpp's llama-bench and llama-quantize from the source
# vendored in PyPI's llama-cpp-python (once per ISA, into $YARDSTICK_DIR/<isa>, default
# ~/.cache/reprise/llama.cpp), so our figures can be quoted beside llama.cpp's on the
# same machine, GGUF and threads.
#
# usage: scripts/llama-cpp-yardstick.sh build [native|avx2]   # prints the bin directory
#        scripts/llama-cpp-yardstick.sh quantize ISA IN.gguf OUT.gguf TYPE   # e.g. Q4_K_M
#        scripts/llama-cpp-yardstick.sh bench ISA MODEL.gguf THREADS [llama-bench args]
#
# `native` is -march=native without AMX (VMs here list AMX but do not grant it);
# `avx2` is AVX2 + FMA + F16C only, what an AMD Zen 2/3 or an Intel desktop has, so
# llama.cpp and `REPRISE_CPU_ISA=avx2` compare like for like on an AVX-512 machine.
# Needs python3 with pip (PyPI), a C++ compiler.
set -euo pipefail
cmd=${1:?usage: llama-cpp-yardstick.sh build|quantize|bench ...}; shift
isa=${1:-native}; [ $# -gt 0 ] && shift
case "$isa" in
  native) flags=(-DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
                 "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16") ;;
  avx2) flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
               -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF) ;;
  *) echo "llama-cpp-yardstick: unknown ISA '$isa' (native or avx2)" >&2; exit 2 ;;
esac
dir=${YARDSTICK_DIR:-$HOME/.cache/reprise/llama.cpp}/$isa
bin="$dir/bin"
if [ ! -x "$bin/llama-bench" ]; then
  echo "building llama.cpp for $isa (llama-cpp-python 0.3.36's vendored source; ~10 min on 2 cores)..." >&2
  work=$(mktemp -d)
  python3 -m pip install --quiet --user scikit-build-core cmake ninja >&2 \
    || PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --user scikit-build-core cmake ninja >&2
  export PATH="$HOME/.local/bin:$PATH"
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python --no-build-isolation \
    -d "$work" llama-cpp-python==0.3.36 >&2
  tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
  cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF "${flags[@]}" >&2
  cmake --build "$work/build" --target llama-bench llama-quantize -j"$(nproc)" >&2
  mkdir -p "$dir" && cp -a "$work/build/bin" "$dir/" && rm -rf "$work"
fi
case "$cmd" in
  build) echo "$bin" ;;
  quantize) exec "$bin/llama-quantize" --allow-requantize "$@" ;;
  bench) gguf=${1:?MODEL.gguf}; threads=${2:-2}; shift 2 || shift $#
         args=("$@"); [ ${#args[@]} -gt 0 ] || args=(-p 512 -n 128 -r 3)
         exec "$bin/llama-bench" -m "$gguf" -t "$threads" "${args[@]}" ;;
  *) echo "llama-cpp-yardstick: unknown command '$cmd' (build, quantize, bench)" >&2; exit 2 ;;
esac
