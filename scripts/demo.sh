#!/usr/bin/env bash
# Builds the local stack and walks the demo flow (no AWS account needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo build --locked -p keel-emulator
# The demo's connector listens on loopback, which Keel refuses to call unless opened.
export KEEL_EGRESS_ALLOW="${KEEL_EGRESS_ALLOW:-127.0.0.0/8}"
# Ends by printing the console's URL with keys to sign in, and serves until Ctrl-C (--exit: stop).
exec target/debug/keel-local demo --data-dir "${KEEL_DATA_DIR:-.keel}" "$@"
