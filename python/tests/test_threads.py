"""The GIL is released during compute: another thread runs Python code
meanwhile, and two threads use two Llama objects at the same time."""

import threading
import time

from conftest import gguf
from tern import Llama


def test_two_threads_two_models_at_the_same_time():
    a = Llama(n_ctx=512, n_threads=1)
    b = Llama(gguf("bitnet-silu"), n_ctx=512, n_threads=1)
    jobs = {"a": (a, "ROMEO."), "b": (b, "The capital of France is")}
    alone = {k: llm(p, max_tokens=96, temperature=0)["choices"][0]["text"] for k, (llm, p) in jobs.items()}

    results, spans, errors = {}, {}, []
    start = threading.Barrier(2)

    def work(key):
        llm, prompt = jobs[key]
        try:
            start.wait()
            t0 = time.perf_counter()
            for _ in range(3):
                results[key] = llm(prompt, max_tokens=96, temperature=0)["choices"][0]["text"]
            spans[key] = (t0, time.perf_counter())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert results == alone
    # The two runs overlapped in time.
    (a0, a1), (b0, b1) = spans["a"], spans["b"]
    assert max(a0, b0) < min(a1, b1)


def test_python_runs_while_tern_computes():
    llm = Llama(n_ctx=1024, n_threads=1)
    ids = llm.tokenize(b"ROMEO. " * 150)[:1024]
    llm.eval_logits(ids)  # warm up
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    t0 = time.perf_counter()
    llm.eval_logits(ids)
    solo = time.perf_counter() - t0

    counter = threading.Thread(target=count)
    counter.start()
    time.sleep(0.05)
    before = ticks
    t0 = time.perf_counter()
    llm.eval_logits(ids)
    during = ticks - before
    spent = time.perf_counter() - t0
    done.set()
    counter.join()
    # With the GIL held, the counter could not move during one long call.
    assert spent > 0.05, spent
    assert during > 10000, (during, spent, solo)
