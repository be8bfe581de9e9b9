#!/usr/bin/env bash
# Idempotent set-up for the tests: a Python venv in .tools/venv with moto
# server (AWS adapters' contract tests), cfn-lint, the SAM CLI and
# schemathesis (the API property test), and the
# embedding model with ONNX Runtime in .models (scripts/fetch-models.sh), and
# for the console's browser tests Debian's chromium with playwright-core from
# npm (tests/browser/node_modules; playwright's own browser download is never used).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tools/venv
STAMP=$VENV/.keel-setup-v2
if [ ! -f "$STAMP" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5' 'cfn-lint>=1' 'aws-sam-cli>=1.120' 'schemathesis>=4,<5'
  touch "$STAMP"
fi
scripts/fetch-models.sh

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
fi
if [ ! -f tests/browser/node_modules/.package-lock.json ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi
