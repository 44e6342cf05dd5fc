#!/usr/bin/env bash
# The project's test command: fetches the default model, builds everything in
# release mode, runs every Rust test (unit, integration, end-to-end) and the
# Python tests that drive the server with the official `openai` client.
# Needs only a Rust toolchain, python3 and access to crates.io and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "default model"
bash models/fetch-default.sh

step "python environment (.venv: openai, pytest)"
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  rm -rf .venv
  if ! python3 -m venv .venv 2>/dev/null; then
    # Debian's python3 without the python3-venv package has no ensurepip:
    # use virtualenv from PyPI instead (a user install, outside the repository).
    rm -rf .venv
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --user virtualenv \
      || { echo "error: cannot create .venv (install python3-venv, or pip for virtualenv)" >&2; exit 1; }
    python3 -m virtualenv --quiet .venv
  fi
fi
"$PY" -m pip install --quiet --disable-pip-version-check openai pytest pyzmq msgpack

step "layering: no module cycles in any crate"
python3 scripts/check-module-cycles.py --self-test

step "format and lints (cargo fmt --check, cargo clippy -D warnings)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "build (release, all targets)"
cargo build --release --workspace --all-targets

step "cargo test (release)"
cargo test --release --workspace

step "pytest (official openai client)"
REPRISE_BIN="$PWD/target/release/reprise" "$PY" -m pytest -q tests/

# --- CUDA compile check -------------------------------------------------------
# scripts/check-cuda-build.sh (owned by the CUDA work) compiles the `cuda`
# feature and the kernels on a machine without a GPU. It runs last so that the
# CPU test results above come first.
if [ -f scripts/check-cuda-build.sh ]; then
  step "CUDA compile check"
  bash scripts/check-cuda-build.sh
fi
# -------------------------------------------------------------------------------

step "all tests passed"
