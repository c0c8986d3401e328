"""Errors are tern.TernError s with the library's one-line messages:
ValueError for bad arguments, OSError for files."""

import errno
import math
import subprocess

import pytest

import tern
from conftest import gguf, hf_dir, tern_bin
from tern import Llama, TernError, TernOSError, TernValueError


@pytest.fixture(scope="module")
def llm():
    return Llama(n_ctx=64)


def cli_error(*args: str) -> str:
    p = subprocess.run([str(tern_bin()), *args], capture_output=True)
    assert p.returncode != 0
    lines = p.stderr.decode().strip().splitlines()
    assert lines[-1].startswith("tern: error: ")
    return lines[-1][len("tern: error: ") :]


def test_a_missing_model_file(tmp_path):
    path = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError) as e:
        Llama(path)
    assert isinstance(e.value, TernOSError) and isinstance(e.value, TernError)
    assert e.value.errno == errno.ENOENT
    # The same one-line message as the CLI's.
    assert str(e.value) == cli_error("run", "-m", str(path), "-p", "x")
    assert "\n" not in str(e.value)


def test_files_that_are_not_models(tmp_path):
    txt = tmp_path / "notes.gguf"
    txt.write_text("not a model, just some text in a file")
    with pytest.raises(TernOSError) as e:
        Llama(txt)
    assert "not a GGUF file" in str(e.value)
    assert str(e.value) == cli_error("run", "-m", str(txt), "-p", "x")
    with pytest.raises(OSError):
        Llama(tmp_path)


def test_convert_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        tern.convert(tmp_path / "missing", tmp_path / "o.gguf")
    assert "is not a directory" in str(e.value)
    with pytest.raises(TernValueError) as e:
        tern.convert(hf_dir("b158-sparse"), tmp_path / "o.gguf", outtype="q4_0")
    assert str(e.value).startswith("unknown outtype") and "i2_s" in str(e.value)
    with pytest.raises(ValueError):
        tern.convert(hf_dir("b158-sparse"), tmp_path / "o.gguf", embd_type="bf16")
    out = tmp_path / "exists.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError) as e:
        tern.convert(hf_dir("b158-sparse"), out)
    assert e.value.errno == errno.EEXIST
    assert out.read_bytes() == b"keep me"
    # A folder that is no checkpoint.
    (tmp_path / "empty").mkdir()
    with pytest.raises(TernOSError) as e:
        tern.convert(tmp_path / "empty", tmp_path / "o.gguf")
    assert "config.json" in str(e.value)
    assert not (tmp_path / "o.gguf").exists()


def test_bad_constructor_arguments():
    for kw in [{"n_ctx": -1}, {"n_threads": 0}, {"n_ctx": 1 << 40}, {"seed": -5}, {"n_batch": 0}]:
        with pytest.raises(ValueError):
            Llama(**kw)
    with pytest.raises(TypeError):
        Llama(no_such_argument=1)


def test_bad_sampling_values(llm):
    for kw in [
        {"temperature": math.nan},
        {"top_p": 1.5},
        {"min_p": -0.1},
        {"repeat_penalty": 0.0},
        {"seed": 2**64},
        {"stop": [1]},
        {"logit_bias": {1: 5.0}},
        {"frequency_penalty": 2.5},
        {"presence_penalty": -3.0},
        {"tfs_z": 0.5},
        {"suffix": "x"},
    ]:
        with pytest.raises(TernValueError):
            llm("ROMEO.", max_tokens=2, **kw)


def test_bad_tokens_and_prompts(llm):
    with pytest.raises(TernValueError) as e:
        llm("word " * 100, max_tokens=2)
    assert "context holds 64" in str(e.value)
    for ids in [[], [llm.n_vocab()], [-1], list(range(65))]:
        with pytest.raises(ValueError):
            llm.eval_logits(ids)
    with pytest.raises(ValueError):
        llm.detokenize([10**12])
    with pytest.raises(ValueError):
        llm([llm.n_vocab() + 5], max_tokens=2)
    with pytest.raises(ValueError):
        llm.tokenize(b"\xff\xfe")
    with pytest.raises(ValueError):
        llm.perplexity("too short", n_ctx=16)
    with pytest.raises(ValueError) as e:
        llm.perplexity("too short", n_ctx=2)


def test_bad_chat_messages(llm):
    for messages in [
        ["hello"],
        [{"role": "user"}],
        [{"role": 1, "content": "x"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
    ]:
        with pytest.raises(TernValueError):
            llm.create_chat_completion(messages, max_tokens=2)
    with pytest.raises(TernValueError):
        llm.create_chat_completion([{"role": "user", "content": "x"}], tools=[{}])
    # Text content parts are joined.
    r = llm.create_chat_completion(
        [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], max_tokens=2, temperature=0
    )
    assert r["choices"][0]["message"]["role"] == "assistant"
