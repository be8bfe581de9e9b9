#!/usr/bin/env bash
# The embedding model fed several ways, from Keel (Rust, `keel-eval embed-feed`)
# and from Python's onnxruntime (scripts/embed-bench.py) with the same model,
# tokenizer, passages and feeding, alternating the two in each round. Prints
# passages per second on one thread, each round's and the medians. Needs
# ../shared/evaldata (SciFact). Python's onnxruntime and tokenizers go into
# .tools/bench-venv on first run.
# Usage: scripts/bench-embedder.sh [passages=256] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/.."
PASSAGES=${1:-256} ROUNDS=${2:-3}
CORPUS=../shared/evaldata/beir-scifact/corpus.jsonl
if [ ! -f "$CORPUS" ]; then
  echo "bench-embedder: $CORPUS not found (the evaluation data lives in ../shared)"; exit 0
fi
scripts/fetch-models.sh
VENV=.tools/bench-venv
if [ ! -f "$VENV/.stamp-v1" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check onnxruntime==1.31.1 tokenizers numpy
  touch "$VENV/.stamp-v1"
fi
cargo build --quiet --release --locked -p keel-tests --bin keel-eval
FEEDINGS="1:0 8:0 32:0 8:1 32:1"
declare -A RUST PY
for round in $(seq "$ROUNDS"); do
  for feeding in $FEEDINGS; do
    batch=${feeding%:*} by_length=${feeding#*:}
    r=$(target/release/keel-eval embed-feed "$PASSAGES" "$batch" "$by_length")
    p=$("$VENV/bin/python3" scripts/embed-bench.py .models/minilm "$CORPUS" "$PASSAGES" "$batch" "$by_length")
    echo "round $round, batch $batch, by length $by_length: keel $r, onnxruntime (Python) $p passages/s"
    RUST[$feeding]="${RUST[$feeding]:-} $r" PY[$feeding]="${PY[$feeding]:-} $p"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo
echo "| batch | grouped by length | keel (Rust) | onnxruntime (Python) |"
echo "|---|---|---|---|"
for feeding in $FEEDINGS; do
  batch=${feeding%:*} by_length=${feeding#*:}
  echo "| $batch | $([ "$by_length" = 1 ] && echo yes || echo no) | $(echo "${RUST[$feeding]}" | median) | $(echo "${PY[$feeding]}" | median) |"
done
