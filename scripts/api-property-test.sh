#!/usr/bin/env bash
# Property-based API test: schemathesis (from PyPI, in .tools/venv) generates
# requests from docs/openapi.json against a fresh keel-local on loopback, as a
# tenant admin, for a bounded time, and fails on any server error or any
# response that contradicts the document. Run by scripts/test.sh after the
# cargo tests (it uses the debug keel-local they built).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tools/venv
SECONDS_BUDGET="${KEEL_API_TEST_SECONDS:-120}"
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export KEEL_ADMIN_KEY="keel_admin_property_test_$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
export KEEL_DEFAULT_RATE_LIMIT=1000000
target/debug/keel-local serve --port "$PORT" --data-dir "$DATA" > .tools/api-property-test.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
KEY=$(python3 - "$PORT" <<'PY'
import json, os, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
admin = {"Authorization": f"Bearer {os.environ['KEEL_ADMIN_KEY']}", "Content-Type": "application/json"}
def call(method, path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), admin, method=method)
    return json.load(urllib.request.urlopen(req, timeout=10))
for _ in range(150):
    try:
        urllib.request.urlopen(base + "/openapi.json", timeout=1)
        break
    except Exception:
        time.sleep(0.2)
else:
    sys.exit("keel-local did not start; see .tools/api-property-test.log")
call("POST", "/v1/tenants", {"id": "acme", "name": "Acme"})
key = call("POST", "/v1/tenants/acme/keys", {"principal": "prop", "roles": ["admin", "approver", "member", "auditor"]})["key"]
# Something to read back: a document and a decision.
admin["Authorization"] = f"Bearer {key}"
call("PUT", "/v1/documents/faq", {"text": "Refunds are paid within 5 business days."})
call("POST", "/v1/ask", {"question": "How long do refunds take?"})
print(key)
PY
)
# One worker: CPython 3.11's ast module is not thread-safe, and schemathesis's coverage
# phase parses sources from each worker thread ("AST constructor recursion depth mismatch").
"$VENV/bin/st" run "http://127.0.0.1:$PORT/openapi.json" \
  --header "Authorization: Bearer $KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing --max-time "$SECONDS_BUDGET" --max-examples 30 --workers 1 \
  --request-timeout 20 --seed 7 --generation-deterministic --no-color
