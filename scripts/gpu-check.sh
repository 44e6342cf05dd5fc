#!/usr/bin/env bash
# The whole GPU check of issue 7, run ON the GPU machine (CUDA 13.0 driver, PyTorch,
# transformers; no Rust). Build here first (scripts/check-cuda-build.sh), copy the two
# x86-64 binaries into .gpu/ (ignored by git) and carry it:
#   mkdir -p .gpu && cp target/cuda/release/reprise target/cuda/release/examples/cuda_check .gpu/
#   device run (carry .gpu):  bash scripts/gpu-check.sh
# Prints one table at the end; full JSON under $OUT (or ./gpu-check-out).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${GPU_BIN_DIR:-.gpu}"
OUTDIR="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUTDIR"
# The binary links libcublas/libcublasLt/libcurand/libnvrtc/libcudart dynamically: take
# them from PyTorch's nvidia-* wheels; libcuda.so.1 comes from the driver.
NV="$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)"
LIBS=$(find "$NV/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBS}/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
chmod +x "$BIN"/reprise "$BIN"/cuda_check 2>/dev/null || true
ldd "$BIN/cuda_check" | grep -E "not found" && { echo "missing CUDA libraries (see above)"; exit 1; }
export PYTHONUNBUFFERED=1
python3 scripts/gpu_check.py --bin "$BIN" --out "$OUTDIR" "$@"
