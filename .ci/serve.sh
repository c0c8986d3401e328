#!/usr/bin/env bash
# `tern serve` through the official `openai` Python package, in a venv made
# here (PyPI is reachable in CI). Expects target/release/tern (built by the
# main test run; built here otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq python3-venv
fi
VENV=target/serve-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check openai pytest
cargo build --release --bin tern
TERN_BIN=target/release/tern "$VENV/bin/python" -m pytest -q tests/python/test_serve_openai.py
