#!/usr/bin/env bash
# The request path on AWS, simulated: every route's real Lambda handler
# against moto server (started here on 127.0.0.1, stopped on exit), each AWS
# call a set latency away. Prints the table docs/benchmarks.md keeps.
# Usage: scripts/bench-aws.sh [requests=40] [latencies_ms=1,5,10]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-models.sh
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
source scripts/moto.sh
trap 'kill ${MOTO_PID:-} 2>/dev/null || true' EXIT
start_moto "$PORT" .tools/moto-bench.log '{"stepfunctions": {"execute_state_machine": true}, "lambda": {"use_docker": false}}'
KEEL_MOTO_ENDPOINT="http://127.0.0.1:$PORT" cargo run --quiet --release --locked -p keel-tests --bin keel-bench -- aws "${1:-40}" "${2:-1,5,10}"
