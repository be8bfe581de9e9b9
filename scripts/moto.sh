# Sourced by scripts/test.sh and scripts/dev.sh: start_moto PORT LOG [CONFIG_JSON]
# starts moto server (from .tools/venv; DynamoDB writes made atomic, as in
# DynamoDB: see moto-server.py) on 127.0.0.1:PORT, sets MOTO_PID, waits until
# it answers and applies CONFIG_JSON to its moto-api/config.
start_moto() {
  local port=$1 log=$2 config=${3:-}
  .tools/venv/bin/python3 scripts/moto-server.py -H 127.0.0.1 -p "$port" > "$log" 2>&1 &
  MOTO_PID=$!
  python3 - "$port" "$log" "$config" <<'PY'
import sys, time, urllib.request
port, log, config = sys.argv[1], sys.argv[2], sys.argv[3]
url = f"http://127.0.0.1:{port}/moto-api/config"
for _ in range(100):
    try:
        urllib.request.urlopen(url, timeout=1)
        break
    except Exception:
        time.sleep(0.2)
else:
    sys.exit(f"moto server did not start; see {log}")
if config:
    urllib.request.urlopen(urllib.request.Request(url, config.encode(), {"Content-Type": "application/json"}), timeout=5)
PY
}
