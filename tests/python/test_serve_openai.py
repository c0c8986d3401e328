"""`tern serve` through the official `openai` Python package.

Run by .ci/serve.sh (which makes a venv with `openai` and `pytest`):
TERN_BIN=target/release/tern pytest tests/python/test_serve_openai.py
"""

import concurrent.futures
import os
import re
import subprocess
import time
import urllib.request

import openai
import pytest

KEY = "s3cret-key"
MODEL = "tern-shakespeare-i2_s.gguf"


@pytest.fixture(scope="module")
def server():
    binary = os.environ.get("TERN_BIN", "target/release/tern")
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0", "-np", "4", "--api-key", KEY, "--body-limit", "65536"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    addr = None
    for line in proc.stderr:
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            addr = m.group(1)
            break
    assert addr, "tern serve did not start"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{addr}/health") as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        assert time.time() < deadline, "tern serve did not become ready"
        time.sleep(0.05)
    yield addr
    proc.terminate()
    assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://{server}/v1", api_key=KEY, max_retries=0)


def chat(client, content, **kw):
    args = dict(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=16, temperature=0)
    args.update(kw)
    return client.chat.completions.create(**args)


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_and_stream_agree(client):
    r = chat(client, "Good morrow! Who art thou?")
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.finish_reason == "length"
    assert r.usage.completion_tokens == 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + 16
    assert c.message.content

    chunks = list(chat(client, "Good morrow! Who art thou?", stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert text == c.message.content
    assert finish == ["length"]
    assert chunks[-1].usage.completion_tokens == 16


def test_text_parts_and_system(client):
    a = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Good morrow!"}]},
        ],
        max_tokens=8,
        temperature=0,
    )
    b = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Good morrow!"}],
        max_tokens=8,
        temperature=0,
    )
    assert a.choices[0].message.content == b.choices[0].message.content


def test_stop(client):
    full = chat(client, "Tell me of the king.").choices[0].message.content
    words = full.split()
    stop = words[len(words) // 2]
    r = chat(client, "Tell me of the king.", stop=[stop])
    assert r.choices[0].message.content == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="ROMEO.", max_tokens=12, temperature=0)
    assert r.choices[0].finish_reason == "length"
    s = client.completions.create(model=MODEL, prompt="ROMEO.", max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text


def test_logprobs(client):
    r = chat(client, "Good morrow!", max_tokens=4, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for e in content:
        assert e.logprob <= 0
        assert len(e.top_logprobs) == 2
        assert e.token == e.top_logprobs[0].token


def test_seeded_sampling_is_reproducible(client):
    a = chat(client, "Who goes there?", temperature=0.9, seed=7, max_tokens=24)
    b = chat(client, "Who goes there?", temperature=0.9, seed=7, max_tokens=24)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_concurrent_equal_alone(client):
    prompts = ["Good morrow!", "What news from Rome?", "Is this a dagger?", "Farewell!", "Who goes there?"]
    alone = [chat(client, p).choices[0].message.content for p in prompts]

    def streamed(p):
        return "".join(c.choices[0].delta.content or "" for c in chat(client, p, stream=True) if c.choices)

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as ex:
        together = list(ex.map(streamed, prompts))
    assert together == alone


def test_errors(server, client):
    with pytest.raises(openai.BadRequestError):
        chat(client, "x", n=2)
    with pytest.raises(openai.BadRequestError):
        chat(client, "x", top_p=7)
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "ROMEO. " * 3000)
    assert "context" in str(e.value)
    with pytest.raises(openai.APIStatusError) as e:
        chat(client, "a" * 100000)
    assert e.value.status_code == 413
    bad = openai.OpenAI(base_url=f"http://{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        chat(bad, "x")
    # The model list is public, as llama-server's.
    assert [m.id for m in bad.models.list()] == [MODEL]
