#!/usr/bin/env bash
# Idempotent set-up for the tests: a Python venv in .tools/venv with moto
# server (AWS adapters' contract tests), cfn-lint and the SAM CLI, and the
# embedding model with ONNX Runtime in .models (scripts/fetch-models.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tools/venv
STAMP=$VENV/.keel-setup-v1
if [ ! -f "$STAMP" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5' 'cfn-lint>=1' 'aws-sam-cli>=1.120'
  touch "$STAMP"
fi
scripts/fetch-models.sh
