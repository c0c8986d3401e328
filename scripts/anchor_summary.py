#!/usr/bin/env python3
"""Summarise scripts/anchor_bench.sh output: mean (min–max) t/s per head,
engine and thread count, the ratios of each tern run's means (`tern`,
or `tern.KERNEL` per kernel) to the other engines', and, where the run
has `bound` lines, each engine's tg as % of that bound and the most a
runtime's tg could be over each other engine's (bound / its tg)."""
import collections
import sys

TESTS = ("pp128", "pp512", "tg128")


def main(paths):
    d = collections.defaultdict(list)
    for path in paths:
        for line in open(path):
            p = line.split()
            if len(p) != 5 or line.startswith("#"):
                continue
            label, th, n_prompt, n_gen, ts = p
            test = f"pp{n_prompt}" if n_gen == "0" else f"tg{n_gen}"
            engine, head = label.rsplit("-", 1)
            d[(head, engine, int(th), test)].append(float(ts))
    mean = lambda v: sum(v) / len(v)
    heads = sorted({k[0] for k in d})
    engines = []
    for k in d:
        if k[1] not in engines:
            engines.append(k[1])
    print("| head | runtime | threads | " + " | ".join(TESTS) + " |")
    print("|---|---|---|" + "---|" * len(TESTS))
    for head in heads:
        for th in sorted({k[2] for k in d}):
            for e in engines:
                cells = []
                for t in TESTS:
                    v = d.get((head, e, th, t))
                    cells.append(f"{mean(v):.1f} ({min(v):.1f}–{max(v):.1f})" if v else "-")
                print(f"| {head} | {e} | {th} | " + " | ".join(cells) + " |")
    terns = [e for e in engines if e == "tern" or e.startswith("tern.")]
    others = [e for e in engines if e not in terns and e != "bound"]
    for head in heads:
        for th in sorted({k[2] for k in d}):
            for te in terns:
                for e in others:
                    r = []
                    for t in TESTS:
                        a, b = d.get((head, te, th, t)), d.get((head, e, th, t))
                        if a and b:
                            r.append(f"{t} {mean(a) / mean(b):.2f}x")
                    print(f"{head} {th} thread(s): {te} / {e}: " + ", ".join(r))
    for head in heads:
        for th in sorted({k[2] for k in d}):
            for t in TESTS:
                b = d.get((head, "bound", th, t))
                if not b:
                    continue
                parts, caps = [], []
                for e in engines:
                    v = d.get((head, e, th, t))
                    if e == "bound" or not v:
                        continue
                    parts.append(f"{e} {100 * mean(v) / mean(b):.0f}%")
                    if e not in terns:
                        caps.append(f"{mean(b) / mean(v):.2f}x {e}")
                print(
                    f"{head} {th} thread(s): {t} as % of the bound ({mean(b):.1f} t/s): "
                    + ", ".join(parts)
                    + "; at the bound a runtime would be "
                    + ", ".join(caps)
                )


if __name__ == "__main__":
    main(sys.argv[1:])
