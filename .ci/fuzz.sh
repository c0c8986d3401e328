#!/usr/bin/env bash
# Each cargo-fuzz target for a short bounded time (TERN_FUZZ_SECS, default 60)
# from the committed seeds; the long campaign is run by hand (README,
# "Hostile input, concurrent use and fuzzing"). Needs the nightly toolchain
# (libFuzzer's instrumentation); installs cargo-fuzz from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${TERN_FUZZ_SECS:-60}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  # rustup's channel server is not a package registry, so CI cannot fetch
  # a toolchain; the stable replay of the seeds and crash inputs
  # (tests/fuzz_regressions.rs) has already run in `cargo test`.
  echo "fuzz: no nightly toolchain on this machine; skipping the fuzz runs"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  start=$(date +%s)
  cargo install cargo-fuzz --locked
  echo "cargo-fuzz installed in $(( $(date +%s) - start )) s"
fi

cd fuzz
start=$(date +%s)
cargo +nightly fuzz build -O --debug-assertions
echo "fuzz targets built in $(( $(date +%s) - start )) s"

dict() {
  case "$1" in
    gguf_model) echo "-dict=dict/gguf.dict" ;;
    hf_convert) echo "-dict=dict/hf.dict" ;;
    chat_template) echo "-dict=dict/jinja.dict" ;;
  esac
}
for t in gguf_model hf_convert sentencepiece chat_template; do
  corpus="$(mktemp -d)"
  echo "== fuzz $t for ${SECS} s"
  # -rss_limit_mb / -malloc_limit_mb: an allocation sized from a header
  # instead of from the input is a finding; -timeout: so is a hang.
  log="$corpus.log"
  status=0
  cargo +nightly fuzz run -O --debug-assertions "$t" "$corpus" "seeds/$t" -- \
    -max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=20 \
    -print_final_stats=1 $(dict "$t") >"$log" 2>&1 || status=$?
  grep -E "^#[0-9]+.*(INITED|DONE)|^stat::(number_of_executed_units|peak_rss_mb)|ERROR|SUMMARY|panicked|Test unit written" "$log" || true
  if [ "$status" != 0 ]; then
    tail -n 60 "$log"
  fi
  rm -f "$log"
  rm -rf "$corpus"
  if [ "$status" != 0 ]; then
    echo "fuzz: $t failed (exit $status); the crashing input is under fuzz/artifacts/$t/"
    exit 1
  fi
done
