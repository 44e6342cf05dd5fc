#!/usr/bin/env bash
# The long run of the API fuzz test (tests/fuzz_api.rs): 10,000 cases generated from
# the server's /openapi.json against a real `reprise serve`, by default; CI runs 300.
#   bash scripts/fuzz-api.sh [CASES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export REPRISE_FUZZ_CASES="${1:-10000}"
export REPRISE_FUZZ_SEED="${2:-$(date +%s)}"
echo "fuzz-api: $REPRISE_FUZZ_CASES cases, seed $REPRISE_FUZZ_SEED"
cargo test --release -p reprise-server --test fuzz_api -- --nocapture
