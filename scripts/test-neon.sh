#!/usr/bin/env bash
# The aarch64 NEON side of the ISA seam, on an x86 machine: cross-compiles the
# engine's kernel tests for aarch64-unknown-linux-gnu and runs them under qemu-user
# (every kernel on `neon` and `scalar`, checked against plain Rust as on x86).
# Needs the Rust target (`rustup target add aarch64-unknown-linux-gnu`) and Debian's
# `gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user`. Not part of CI (the
# target is not on a fresh machine); takes ~15 min on 2 cores the first time.
# Usage: bash scripts/test-neon.sh [TEST-FILTER...]   (default: simd:: cpu::)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=(simd:: cpu::)
for f in "${filters[@]}"; do
  cargo test --release --target aarch64-unknown-linux-gnu -p reprise-engine --lib -- "$f"
done
