#!/usr/bin/env bash
# Each function's cold start: the release Lambda binaries, each started
# against a local Runtime API until it asks for its first invocation, with
# and without the embedding model. Prints the table docs/benchmarks.md keeps.
# Usage: scripts/bench-cold-start.sh [runs=10]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo build --quiet --release --locked -p keel-auth -p keel-tools -p keel-audit -p keel-retrieval -p keel-routing -p keel-tests --bins
target/release/keel-bench cold-start "${1:-10}"
