#!/usr/bin/env bash
# CI check that `--features cuda` compiles on a machine with no GPU and no CUDA:
# installs the CUDA 13.0 compiler from PyPI plus stub libraries (install-cuda-toolchain.sh),
# then builds the reprise binary and the GPU check's engine example with the feature.
# Needs python3 + pip (PyPI), cc, and cargo (crates.io). Set CHECK_ONLY=1 for `cargo check`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
eval "$(scripts/install-cuda-toolchain.sh --env)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
# One invocation for both artifacts: separate ones resolve dependency features differently
# (the example pulls dev-dependencies) and would compile candle's CUDA kernels twice.
FEATURES=reprise-server/cuda,reprise-engine/cuda
if [[ "${CHECK_ONLY:-0}" == 1 ]]; then
    cargo check --features "$FEATURES" -p reprise-server -p reprise-engine --bin reprise --example cuda_check
else
    cargo build --release --features "$FEATURES" -p reprise-server -p reprise-engine --bin reprise --example cuda_check
fi
echo "check-cuda-build: ok in $(( $(date +%s) - start ))s (binaries under $CARGO_TARGET_DIR/release)"
