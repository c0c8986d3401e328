#!/usr/bin/env bash
# Aggregate generation speed of `tern serve` (and optionally llama-server)
# with 1, 2, 4, 8 concurrent streams, -np matching the streams, measured by
# scripts/serve_load.py. Servers are restarted per -np; the whole set is run
# PASSES times, interleaved, because a shared machine is noisy.
#
#   scripts/serve_bench.sh MODEL.gguf [PASSES] [STREAMS]
#   LLAMA_SERVER=/path/to/llama-server scripts/serve_bench.sh MODEL.gguf
set -euo pipefail
model=$1
passes=${2:-2}
streams=${3:-"1 2 4 8"}
tern=${TERN:-target/release/tern}
port=${PORT:-18231}
here=$(cd "$(dirname "$0")" && pwd)
max_tokens=${MAX_TOKENS:-64}

wait_ready() {
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "server did not become ready" >&2
  return 1
}

one() { # label np command... (the command's --port is $port; each server gets a fresh one)
  local label=$1 np=$2
  shift 2
  "$@" >/tmp/serve_bench.$label.log 2>&1 &
  local pid=$!
  wait_ready
  echo "# load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  python3 "$here/serve_load.py" --url "http://127.0.0.1:$port" --streams "$np" \
    --rounds "${ROUNDS:-3}" --max-tokens "$max_tokens" --label "$label" --json
  kill -TERM "$pid"
  wait "$pid" || true
  port=$((port + 1))
}

for pass in $(seq "$passes"); do
  for np in $streams; do
    one tern "$np" sh -c "exec $tern serve -m '$model' -np $np -c 512 --port $port"
    if [ -n "${LLAMA_SERVER:-}" ]; then
      one llama-server "$np" sh -c "exec '$LLAMA_SERVER' -m '$model' -np $np -cb -c $((512 * np)) -t $(nproc) --port $port"
    fi
  done
done
