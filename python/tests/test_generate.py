"""Completions and chat equal the CLI's output for the same settings."""

import pytest

from conftest import gguf, run_tern
from tern import Llama

PROMPTS = ["ROMEO.", "KING HENRY. My lords, the"]


@pytest.fixture(scope="module")
def llm():
    return Llama(n_ctx=1024, seed=0)


def text(out):
    return out["choices"][0]["text"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_completion_equals_tern_run(llm, prompt):
    out = llm(prompt, max_tokens=48, temperature=0)
    cli = run_tern("run", "-p", prompt, "-n", "48", "--temp", "0", "--repeat-penalty", "1")
    assert cli.stdout.decode() == prompt + text(out) + "\n"
    assert out["object"] == "text_completion"
    assert out["id"].startswith("cmpl-")
    assert out["model"] == "tern-shakespeare-i2_s.gguf"
    choice = out["choices"][0]
    assert choice["index"] == 0 and choice["logprobs"] is None
    u = out["usage"]
    assert u["prompt_tokens"] == len(llm.tokenize(prompt.encode()))
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert u["completion_tokens"] == 48
    else:
        assert choice["finish_reason"] == "stop" and u["completion_tokens"] < 48


def test_greedy_completion_of_a_file_equals_tern_run():
    f = gguf("tern-shakespeare")
    llm = Llama(f, n_ctx=256)
    out = llm.create_completion("HAMLET.", max_tokens=32, temperature=0)
    cli = run_tern("run", "-m", str(f), "-p", "HAMLET.", "-n", "32", "--temp", "0", "--repeat-penalty", "1")
    assert cli.stdout.decode() == "HAMLET." + text(out) + "\n"
    assert out["model"] == str(f)


def test_seeded_sampling_equals_tern_run(llm):
    a = llm("ROMEO.", max_tokens=40, temperature=0.8, seed=42)
    assert text(a) == text(llm("ROMEO.", max_tokens=40, temperature=0.8, seed=42))
    assert text(a) != text(llm("ROMEO.", max_tokens=40, temperature=0.8, seed=43))
    cli = run_tern("run", "-p", "ROMEO.", "-n", "40", "--temp", "0.8", "--seed", "42", "--repeat-penalty", "1")
    assert cli.stdout.decode() == "ROMEO." + text(a) + "\n"


def test_penalties_change_greedy_text(llm):
    plain = text(llm("ROMEO.", max_tokens=48, temperature=0))
    for kw in [{"frequency_penalty": 1.5}, {"presence_penalty": 1.5}, {"repeat_penalty": 1.3}]:
        assert text(llm("ROMEO.", max_tokens=48, temperature=0, **kw)) != plain, kw


def test_streaming_yields_the_same_text(llm):
    whole = llm("ROMEO.", max_tokens=64, temperature=0)
    chunks = list(llm("ROMEO.", max_tokens=64, temperature=0, stream=True))
    assert len(chunks) > 10
    assert "".join(text(c) for c in chunks) == text(whole)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0] == {
        "text": "",
        "index": 0,
        "logprobs": None,
        "finish_reason": whole["choices"][0]["finish_reason"],
    }
    assert len({c["id"] for c in chunks}) == 1
    assert all("usage" not in c for c in chunks)


def test_stop_strings_and_echo(llm):
    full = text(llm("ROMEO.", max_tokens=64, temperature=0))
    assert "\n\n" in full
    cut = llm("ROMEO.", max_tokens=64, temperature=0, stop=["\n\n"])
    assert text(cut) == full[: full.index("\n\n")]
    assert cut["choices"][0]["finish_reason"] == "stop"
    pieces = [text(c) for c in llm("ROMEO.", max_tokens=64, temperature=0, stop="\n\n", stream=True)]
    assert "".join(pieces) == text(cut)
    echo = llm("ROMEO.", max_tokens=8, temperature=0, echo=True)
    assert text(echo) == "ROMEO." + full[: len(text(echo)) - len("ROMEO.")]
    # Token ids as the prompt are used as they are (BOS included by the caller).
    ids = llm.tokenize(b"ROMEO.")
    assert text(llm(ids, max_tokens=64, temperature=0)) == full


def test_chat_completion_equals_tern_chat(llm):
    system = "You are a helpful assistant."
    first, second = "Good morrow! Who art thou?", "What news from Rome?"
    cli = run_tern(
        "chat", "-sys", system, "-n", "24", "--temp", "0", "--repeat-penalty", "1",
        stdin=f"{first}\n{second}\n",
    )
    messages = [{"role": "system", "content": system}, {"role": "user", "content": first}]
    r1 = llm.create_chat_completion(messages=messages, max_tokens=24, temperature=0)
    assert r1["object"] == "chat.completion"
    msg = r1["choices"][0]["message"]
    assert msg["role"] == "assistant"
    messages += [msg, {"role": "user", "content": second}]
    r2 = llm.create_chat_completion(messages=messages, max_tokens=24, temperature=0)
    reply2 = r2["choices"][0]["message"]["content"]
    # The CLI prints each reply on its own line(s), without the whitespace around it.
    assert cli.stdout.decode() == msg["content"].strip() + "\n" + reply2.strip() + "\n"
    assert len(reply2.strip()) > 10

    chunks = list(llm.create_chat_completion(messages=messages, max_tokens=24, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == r2["choices"][0]["finish_reason"]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == r2["choices"][0]["message"]["content"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_tokens_and_sizes(llm):
    ids = llm.tokenize(b"ROMEO. Good morrow")
    assert ids[0] == llm.token_bos()
    assert llm.detokenize(ids) == b"ROMEO. Good morrow"
    assert llm.detokenize(ids[:1], special=True) == b"<|begin_of_text|>"
    no_bos = llm.tokenize("ROMEO.", add_bos=False)
    assert no_bos and ids[1 : 1 + len(no_bos)] == no_bos
    # Control-token texts are ids only with special=True (llama-cpp-python's rule).
    eot = llm.tokenize(b"<|eot_id|>", add_bos=False, special=True)
    assert len(eot) == 1
    plain = llm.tokenize(b"<|eot_id|>", add_bos=False)
    assert len(plain) > 1 and eot[0] not in plain
    assert llm.detokenize(plain) == b"<|eot_id|>"
    # A prompt given as text parses them: "<|eot_id|>" is one token there.
    out = llm("ROMEO.<|eot_id|>", max_tokens=1, temperature=0)
    assert out["usage"]["prompt_tokens"] == len(llm.tokenize(b"ROMEO.")) + 1
    assert llm.n_ctx() == 1024
    assert llm.n_vocab() == llm.eval_logits(ids).shape[1]
    assert llm.n_embd() == 256


def test_perplexity_equals_tern_perplexity(llm, tmp_path):
    from conftest import ROOT

    heldout = ROOT / "models" / "tern-shakespeare" / "heldout.txt"
    text = heldout.read_text()[:20000]
    f = tmp_path / "t.txt"
    f.write_text(text)
    ppl = llm.perplexity(text, n_ctx=128)
    cli = run_tern("perplexity", "-f", str(f), "-c", "128")
    line = [l for l in cli.stdout.decode().splitlines() if l.startswith("Final estimate")][0]
    assert f"PPL = {ppl:.4f} " in line
    assert 20 < ppl < 500
    assert llm.perplexity(text, n_ctx=128, n_chunks=2) != ppl
