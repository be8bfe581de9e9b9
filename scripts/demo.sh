#!/usr/bin/env bash
# Builds the local stack and walks the demo flow (no AWS account needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo build --locked -p keel-emulator
exec target/debug/keel-local demo --data-dir "${KEEL_DATA_DIR:-.keel}"
