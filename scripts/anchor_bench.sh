#!/usr/bin/env bash
# tern side by side with bitnet.cpp's and ik_llama.cpp's llama-bench, in one
# run: pp128, pp512, tg128 at 2 and 1 threads, F16 and Q6_K heads, each
# engine `-r 1` once per round, the engines interleaved (a shared machine is
# noisy: compare within a round). Prints one line per result,
#   ENGINE-HEAD THREADS N_PROMPT N_GEN T/S
# then, with --summary, the mean (min–max) table and the ratios. Each
# tern tg result is followed by a `bound-HEAD` line: the bound `tern
# bench` measured beside it (tokens/s at the streaming read rate for the
# file's bytes per token); the summary puts every engine's tg against it.
# The engines' files hold the same weights (I2_S or IQ2_BN codes, the
# same head type), so one bound serves all three within a fraction of a
# percent.
#
#   BITNET_BENCH=…/bitnet.cpp/build/bin/llama-bench \
#   IK_BENCH=…/ik_llama.cpp/build/bin/llama-bench \
#   TERN_F16=a.gguf BITNET_F16=a.gguf IK_F16=a-iq2_bn.gguf \
#   TERN_Q6K=a-q6_k.gguf BITNET_Q6K=a-bcpp-q6_k.gguf IK_Q6K=a-iq2_bn-q6_k.gguf \
#   ROUNDS=2 scripts/anchor_bench.sh > run.txt
#   scripts/anchor_bench.sh --summary run.txt
#
# An engine whose binary or file variable is unset is skipped. With
# TERN_KERNELS="avx512 avx2" tern runs once per kernel (TERN_KERNEL=…),
# labelled tern.avx512, tern.avx2.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = "--summary" ]; then
  exec python3 "$here/anchor_summary.py" "${@:2}"
fi
tern=${TERN:-target/release/tern}
rounds=${ROUNDS:-2}
threads=${THREADS:-"2 1"}
ulimit -s unlimited 2>/dev/null || true

run() { # label threads command...
  local label=$1 th=$2
  shift 2
  "$@" -t "$th" -r 1 -p 128,512 -n 128 -o json 2>/dev/null | python3 -c "
import json, sys
for r in json.load(sys.stdin):
    print('$label', $th, r['n_prompt'], r['n_gen'], round(r['avg_ts'], 2))
    # tern's tg rows carry the bound it measured beside them (tokens/s at
    # the streaming read rate for its bytes per token): one 'bound' line.
    if r['n_gen'] > 0 and 'bound_ts' in r:
        print('bound-' + '$label'.rsplit('-', 1)[1], $th, 0, r['n_gen'], round(r['bound_ts'], 2))"
}

for round in $(seq "$rounds"); do
  for th in $threads; do
    for head in f16 q6_k; do
      if [ "$head" = f16 ]; then
        tf=${TERN_F16:-}; bf=${BITNET_F16:-}; kf=${IK_F16:-}
      else
        tf=${TERN_Q6K:-}; bf=${BITNET_Q6K:-}; kf=${IK_Q6K:-}
      fi
      echo "# round $round threads $th head $head load $(cut -d' ' -f1-3 /proc/loadavg) $(date +%T)"
      if [ -n "$tf" ]; then
        if [ -n "${TERN_KERNELS:-}" ]; then
          for k in $TERN_KERNELS; do
            run "tern.$k-$head" "$th" env TERN_KERNEL="$k" "$tern" bench -m "$tf"
          done
        else
          run "tern-$head" "$th" "$tern" bench -m "$tf"
        fi
      fi
      if [ -n "$bf" ] && [ -n "${BITNET_BENCH:-}" ]; then
        run "bitnet.cpp-$head" "$th" "$BITNET_BENCH" -m "$bf"
      fi
      if [ -n "$kf" ] && [ -n "${IK_BENCH:-}" ]; then
        run "ik_llama.cpp-$head" "$th" "$IK_BENCH" -m "$kf"
      fi
    done
  done
done
