#!/usr/bin/env python3
"""Load test for an OpenAI-compatible server (tern serve, llama-server).

For each concurrency C in --streams, C clients each send one streaming
/v1/completions request at the same moment (same prompt, --max-tokens
tokens, ignore_eos so every stream generates exactly that many), --rounds
times. Reported per C:

  aggregate t/s   all streams' generated tokens / wall time of the round
                  (first request sent → last stream done; prefill included)
  per-stream t/s  each stream's tokens after its first / (its last token −
                  its first token), averaged
  TTFT            time from sending a request to its first token (mean, max)

Tokens per stream: `usage.completion_tokens` when the server sends a usage
block (stream_options.include_usage; `tokens_predicted` in llama.cpp's own
stream format, which older llama-server builds use for /v1/completions),
else the number of chunks that carry text. Standard library only.

  python3 scripts/serve_load.py --url http://127.0.0.1:8080 --streams 1,2,4,8
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def one_stream(url, body, result, start_barrier):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    payload = json.dumps(body)
    start_barrier.wait()
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", payload, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        result["error"] = f"HTTP {resp.status}: {resp.read()[:200]!r}"
        return
    times = []
    usage = None
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        ev = json.loads(data)
        if ev.get("usage"):
            usage = ev["usage"]
        for c in ev.get("choices") or []:
            if c.get("text"):
                times.append(time.perf_counter())
        # Older llama-server builds answer /v1/completions in llama.cpp's
        # own format: {"content", "stop", "tokens_predicted"}.
        if ev.get("content"):
            times.append(time.perf_counter())
        if ev.get("stop") is True and "tokens_predicted" in ev:
            usage = {"completion_tokens": ev["tokens_predicted"]}
            break
    t1 = time.perf_counter()
    conn.close()
    result.update(t0=t0, t1=t1, times=times, usage=usage)


def run_round(url, c, body):
    results = [dict() for _ in range(c)]
    barrier = threading.Barrier(c)
    threads = [threading.Thread(target=one_stream, args=(url, body, r, barrier)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if "error" in r:
            raise SystemExit(r["error"])
    start = min(r["t0"] for r in results)
    end = max(r["t1"] for r in results)
    tokens = sum(
        (r["usage"] or {}).get("completion_tokens", len(r["times"])) for r in results
    )
    ttft = [r["times"][0] - r["t0"] for r in results if r["times"]]
    per = [
        (len(r["times"]) - 1) / (r["times"][-1] - r["times"][0])
        for r in results
        if len(r["times"]) > 1 and r["times"][-1] > r["times"][0]
    ]
    return dict(agg=tokens / (end - start), ttft_mean=statistics.mean(ttft), ttft_max=max(ttft),
                per=statistics.mean(per) if per else 0.0, tokens=tokens, wall=end - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--streams", default="1,2,4,8", help="concurrencies, comma-separated")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--label", default="server")
    ap.add_argument("--json", action="store_true", help="print one JSON line per concurrency")
    a = ap.parse_args()
    body = dict(prompt=a.prompt, max_tokens=a.max_tokens, temperature=0, stream=True,
                ignore_eos=True, stream_options=dict(include_usage=True))
    if not a.json:
        print(f"| server | streams | aggregate t/s | per-stream t/s | TTFT mean ms | TTFT max ms | rounds |")
        print("|---|---|---|---|---|---|---|")
    for c in [int(x) for x in a.streams.split(",")]:
        # Warm-up with C streams, so every slot a round uses has had its
        # first request (page cache, first touch of each slot's KV cache).
        run_round(a.url, c, dict(body, max_tokens=4))
        rs = [run_round(a.url, c, body) for _ in range(a.rounds)]
        agg = [r["agg"] for r in rs]
        row = dict(label=a.label, streams=c, agg_mean=statistics.mean(agg),
                   agg_sd=statistics.stdev(agg) if len(agg) > 1 else 0.0,
                   per=statistics.mean(r["per"] for r in rs),
                   ttft_mean_ms=1e3 * statistics.mean(r["ttft_mean"] for r in rs),
                   ttft_max_ms=1e3 * max(r["ttft_max"] for r in rs), rounds=len(rs))
        if a.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"| {a.label} | {c} | {row['agg_mean']:.2f} ± {row['agg_sd']:.2f} | {row['per']:.2f} | "
                  f"{row['ttft_mean_ms']:.0f} | {row['ttft_max_ms']:.0f} | {len(rs)} |", flush=True)


if __name__ == "__main__":
    main()
