#!/usr/bin/env bash
# Testing one function with cargo lambda, against moto server on loopback:
# starts moto, creates every resource template.yaml declares for the data
# path (the same code the sample-event tests use), seeds what events/ expects,
# writes the environment to .tools/dev.env, and runs `cargo lambda watch`
# with it (install it with `pip install cargo-lambda` if it is missing).
# Then, from another shell: cargo lambda invoke keel-auth --data-file events/auth/create-tenant.json
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PORT="${KEEL_DEV_MOTO_PORT:-5000}"
source scripts/moto.sh
trap 'kill ${MOTO_PID:-} 2>/dev/null || true' EXIT
start_moto "$PORT" .tools/dev-moto.log
cargo build --quiet --locked -p keel-cli
target/debug/keel dev --endpoint "http://127.0.0.1:$PORT" > .tools/dev.env
echo "moto on 127.0.0.1:$PORT; the functions' environment (also in .tools/dev.env):"
cat .tools/dev.env
# shellcheck disable=SC1091
source .tools/dev.env
if command -v cargo-lambda >/dev/null 2>&1; then
  cargo lambda watch -a 127.0.0.1
else
  echo "cargo-lambda is not installed (pip install cargo-lambda); moto keeps running until Ctrl-C."
  wait "$MOTO_PID"
fi
