#!/usr/bin/env bash
# The CPU engine at a real size against llama.cpp, in one run: a random-weight GGUF of
# Llama-3.2-1B's shape (SmolLM2's tokenizer) quantized by llama.cpp's own llama-quantize
# to Q4_K_M and Q4_0, then for each ISA (`avx512` where the CPU has it, `avx2`) reprise's
# engine_bench --short (prefill 512, batch-1 decode) followed by llama-bench on the same
# file, built for the same ISA (scripts/llama-cpp-yardstick.sh), 2 threads each; then
# reprise with --numerics fast. Takes ~30 min on 2 cores, plus the llama.cpp builds.
# Needs the gguf and numpy packages for the GGUF (GGUF_PYTHON names a python with them).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${BENCH_DIR:-$HOME/.cache/reprise/bench-1b}
py=${GGUF_PYTHON:-python3}
threads=${THREADS:-2}
mkdir -p "$dir"
bash models/fetch-default.sh >/dev/null
tok=$(ls "${REPRISE_MODELS_DIR:-$HOME/.cache/reprise/models}"/SmolLM2-135M-Instruct.Q4_1.gguf)
[ -f "$dir/llama1b-f16.gguf" ] ||
  "$py" scripts/make-random-gguf.py --shape llama-3.2-1b --tokenizer "$tok" --out "$dir/llama1b-f16.gguf"
isas=(avx2)
grep -qw avx512bw /proc/cpuinfo && isas=(native avx2)
for isa in "${isas[@]}"; do bash scripts/llama-cpp-yardstick.sh build "$isa" >/dev/null; done
for q in Q4_K_M Q4_0; do
  [ -f "$dir/llama1b-$q.gguf" ] ||
    bash scripts/llama-cpp-yardstick.sh quantize "${isas[0]}" "$dir/llama1b-f16.gguf" "$dir/llama1b-$q.gguf" "$q" >/dev/null 2>&1
done
cargo build --release -p reprise-engine --example engine_bench >/dev/null 2>&1
bench=target/release/examples/engine_bench
grep -m1 'model name' /proc/cpuinfo
for q in Q4_K_M Q4_0; do
  for isa in "${isas[@]}"; do
    ours=$([ "$isa" = native ] && echo avx512 || echo "$isa")
    bin=$(bash scripts/llama-cpp-yardstick.sh build "$isa")
    echo "== $q, reprise on $ours, llama.cpp built $isa"
    REPRISE_CPU_ISA=$ours RAYON_NUM_THREADS=$threads "$bench" --model "$dir/llama1b-$q.gguf" --short \
      --llama-bench "$bin/llama-bench" | grep -E '^\||^model|^yardsticks'
  done
  for isa in "${isas[@]}"; do
    ours=$([ "$isa" = native ] && echo avx512 || echo "$isa")
    echo "== $q, reprise on $ours, --numerics fast"
    REPRISE_CPU_ISA=$ours RAYON_NUM_THREADS=$threads "$bench" --model "$dir/llama1b-$q.gguf" --short \
      --numerics fast | grep -E '^\||^model'
  done
done
