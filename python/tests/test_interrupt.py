"""Ctrl-C (SIGINT) stops generation and perplexity with KeyboardInterrupt,
and the Llama stays usable."""

import os
import signal
import threading
import time

import pytest

from conftest import ROOT
from tern import Llama


def interrupt_after(seconds: float) -> threading.Timer:
    t = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    t.start()
    return t


@pytest.fixture(scope="module")
def llm():
    return Llama(n_ctx=1024, n_threads=1)


def test_ctrl_c_stops_a_completion(llm):
    expected = llm("ROMEO.", max_tokens=16, temperature=0)["choices"][0]["text"]
    t0 = time.perf_counter()
    timer = interrupt_after(0.3)
    pieces = []
    with pytest.raises(KeyboardInterrupt):
        for c in llm("ROMEO.", max_tokens=100000, temperature=0.8, stream=True, seed=1):
            pieces.append(c)
    timer.join()
    assert 0 < len(pieces)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(KeyboardInterrupt):
        timer = interrupt_after(0.3)
        llm("KING.", max_tokens=100000, temperature=0.8)
    timer.join()
    # Nothing is left in a bad state.
    assert llm("ROMEO.", max_tokens=16, temperature=0)["choices"][0]["text"] == expected


def test_ctrl_c_stops_perplexity(llm):
    text = (ROOT / "models" / "tern-shakespeare" / "heldout.txt").read_text()
    t0 = time.perf_counter()
    timer = interrupt_after(0.3)
    with pytest.raises(KeyboardInterrupt):
        llm.perplexity(text, n_ctx=256)
    timer.join()
    # The full run takes several seconds; it stopped after the current chunk.
    assert time.perf_counter() - t0 < 3
    assert llm.perplexity(text[:5000], n_ctx=64) > 1
