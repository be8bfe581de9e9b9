#!/usr/bin/env bash
# Runs every test: unit tests, the contract suite against the embedded
# adapters and against moto server (started here on 127.0.0.1, stopped on
# exit), end-to-end tests against the local stack, clippy, a bounded fuzzing
# run, cfn-lint and `sam validate --lint`. Set-up (a venv in .tools/) is done on first run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=.tools/venv

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
source scripts/moto.sh
trap 'kill ${MOTO_PID:-} 2>/dev/null || true' EXIT
start_moto "$PORT" .tools/moto.log '{"stepfunctions": {"execute_state_machine": true}, "lambda": {"use_docker": false}}'
export KEEL_MOTO_ENDPOINT="http://127.0.0.1:$PORT" KEEL_REQUIRE_MOTO=1
# setup.sh installed chromium and playwright-core: the console's browser tests must run.
export KEEL_REQUIRE_BROWSER=1

cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked 2>&1 | tee .tools/cargo-test.log

# The API against its OpenAPI document: schemathesis, bounded in time, on a fresh keel-local.
cargo build --quiet --locked -p keel-emulator
scripts/api-property-test.sh

# Fuzzing of what a stranger reaches, 90 s in all (fuzz/README.md); a crash
# fails the run and its input is kept under fuzz/regressions/.
cargo run --quiet --locked -p keel-fuzz -- --seconds 90

"$VENV/bin/cfn-lint" template.yaml
SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 "$VENV/bin/sam" validate --lint
echo "cfn-lint and sam validate: template.yaml is valid"

# One closing line with the totals of every cargo test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' .tools/cargo-test.log
