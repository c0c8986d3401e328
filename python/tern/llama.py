"""``tern.Llama``: llama-cpp-python's high-level API over tern's runtime.

Names, arguments and return values follow ``llama_cpp.Llama`` where the two
overlap, so code written for llama-cpp-python moves over by changing the
import. The work is done by tern's Rust library (``tern._tern``): model
loading, the KV cache, sampling, the generation loop and the chat template;
this module only shapes llama-cpp-python's dictionaries.
"""

import os
import random
import sys
import time
import uuid
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _tern
from ._errors import TernValueError

__all__ = ["Llama"]

Prompt = Union[str, Sequence[int]]
Stop = Union[None, str, Sequence[str]]

# llama-cpp-python arguments tern does not implement, with the value that
# means "off": passing any other value is an error, never silently ignored.
_COMPLETION_UNSUPPORTED: Dict[str, Any] = {
    "suffix": None,
    "logprobs": None,
    "typical_p": 1.0,
    "tfs_z": 1.0,
    "mirostat_mode": 0,
    "stopping_criteria": None,
    "logits_processor": None,
    "grammar": None,
    "logit_bias": None,
}
_CHAT_UNSUPPORTED: Dict[str, Any] = {
    "functions": None,
    "function_call": None,
    "tools": None,
    "tool_choice": None,
    "typical_p": 1.0,
    "response_format": None,
    "tfs_z": 1.0,
    "mirostat_mode": 0,
    "logits_processor": None,
    "grammar": None,
    "logit_bias": None,
    "logprobs": None,
    "top_logprobs": None,
}


def _refuse_unsupported(table: Dict[str, Any], given: Dict[str, Any]) -> None:
    for name, off in table.items():
        value = given[name]
        if value is not off and value != off:
            raise TernValueError(f"{name} is not supported by tern (got {value!r})")


def _stop_list(stop: Stop) -> List[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    out = list(stop)
    if not all(isinstance(s, str) for s in out):
        raise TernValueError("stop must be a string or a list of strings")
    return out


def _seed(seed: Optional[int]) -> int:
    """A sampling seed: None or -1 draws a random one."""
    if seed is None or seed == -1:
        return random.getrandbits(64)
    if not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise TernValueError(f"seed must be -1 (random) or a whole number from 0 to 2^64-1 (got {seed!r})")
    return seed


def _message_text(i: int, m: Any) -> Tuple[str, str]:
    """(role, content) of an OpenAI-style chat message."""
    if not isinstance(m, dict):
        raise TernValueError(f"message {i}: expected a dict with 'role' and 'content', got {type(m).__name__}")
    if "content" not in m:
        raise TernValueError(f"message {i}: 'content' is missing")
    role, content = m.get("role"), m["content"]
    if not isinstance(role, str):
        raise TernValueError(f"message {i}: 'role' must be a string")
    if content is None:
        content = ""
    elif isinstance(content, list):
        # OpenAI content parts: only text parts can be rendered.
        parts = []
        for p in content:
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise TernValueError(f"message {i}: only text content parts are supported")
            parts.append(p["text"])
        content = "".join(parts)
    elif not isinstance(content, str):
        raise TernValueError(f"message {i}: 'content' must be a string or a list of text parts")
    return role, content


class Llama:
    """A ternary (BitNet b1.58) GGUF model with a KV cache, llama-cpp-python style.

    ``Llama("model.gguf", n_ctx=4096, n_threads=2, seed=0)`` loads a GGUF file
    (I2_S, TQ2_0, TQ1_0, F16 or F32 projections; architectures
    ``bitnet-b1.58``, ``bitnet-25`` and ``bitnet``); ``Llama()`` loads the
    small model built into tern (tern-shakespeare, a trained BitNet b1.58 of
    4 layers).

    Args:
        model_path: GGUF file, or None for the built-in model.
        n_ctx: context size in tokens (KV-cache positions); 0 takes the
            model's training context.
        n_threads: compute threads of this model's own pool (None: the
            number of physical cores).
        seed: default sampling seed of every completion; None or -1 draws a
            random one now.
        n_batch: tokens per forward pass in :meth:`perplexity`.
        kv_f32: keep the KV cache in float32 instead of float16.
        verbose: print the loader's warnings and each completion's timings to
            stderr (warnings are also issued through :mod:`warnings`).
        n_gpu_layers: accepted for compatibility; tern computes on the CPU.

    Raises:
        TernOSError: the file is missing (``FileNotFoundError``), unreadable,
            or not a GGUF model tern can run.
        TernValueError: a bad argument.

    Every method that computes releases the GIL, so another thread can use
    another ``Llama`` at the same time; calls on one ``Llama`` take turns.
    Ctrl-C (``KeyboardInterrupt``) stops generation between tokens.
    """

    def __init__(
        self,
        model_path: Union[None, str, "os.PathLike[str]"] = None,
        *,
        n_ctx: int = 512,
        n_threads: Optional[int] = None,
        seed: Optional[int] = None,
        n_batch: int = 512,
        kv_f32: bool = False,
        verbose: bool = False,
        n_gpu_layers: int = 0,
    ) -> None:
        for name, v in (("n_ctx", n_ctx), ("n_batch", n_batch)):
            if not isinstance(v, int) or v < 0:
                raise TernValueError(f"{name} must be a whole number of tokens, at least 0 (got {v!r})")
        if n_batch < 1:
            raise TernValueError("n_batch must be at least 1")
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise TernValueError(f"n_threads must be at least 1 (got {n_threads!r})")
        path = None if model_path is None else os.fspath(model_path)
        self._engine = _tern.Engine(path, n_ctx, n_threads, kv_f32)
        self.model_path: str = path if path is not None else _tern.BUILTIN_MODEL
        self.seed: int = _seed(seed)
        self.n_batch = n_batch
        self.verbose = verbose
        for w in self._engine.warnings:
            warnings.warn(f"tern: {w}", RuntimeWarning, stacklevel=2)
            if verbose:
                print(f"tern: warning: {w}", file=sys.stderr)

    # -- sizes and special tokens --------------------------------------------

    def n_ctx(self) -> int:
        """Context size in tokens."""
        return self._engine.n_ctx

    def n_vocab(self) -> int:
        """Vocabulary size: the width of every logit row."""
        return self._engine.n_vocab

    def n_embd(self) -> int:
        """Hidden size (embedding length)."""
        return self._engine.n_embd

    def token_bos(self) -> int:
        """The BOS token id, or -1."""
        b = self._engine.bos
        return -1 if b is None else b

    def token_eos(self) -> int:
        """The EOS token id, or -1."""
        e = self._engine.eos
        return -1 if e is None else e

    # -- tokens --------------------------------------------------------------

    def tokenize(self, text: Union[bytes, str], add_bos: bool = True, special: bool = False) -> List[int]:
        """Token ids of ``text`` (UTF-8 bytes, or a str).

        BOS comes first when ``add_bos`` and the model adds BOS. With
        ``special``, texts of control tokens (``<|eot_id|>``...) become their
        ids; without, they are tokenized as plain text (llama.cpp's
        ``parse_special``). Prompts given to completions as text are
        tokenized with ``special=True``.

        Raises:
            TernValueError: text that is not UTF-8.
        """
        if isinstance(text, (bytes, bytearray, memoryview)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise TernValueError(f"the text is not UTF-8: {e}") from None
        return self._engine.tokenize(text, add_bos, special)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """The bytes ``tokens`` stand for (control tokens such as BOS only
        when ``special``); may end inside a UTF-8 character.

        Raises:
            TernValueError: an id outside the vocabulary.
        """
        return self._engine.detokenize(list(tokens), special)

    # -- logits and perplexity -----------------------------------------------

    def eval_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits of every position of ``tokens``, evaluated in one batch
        from an empty cache (the ``tern logits`` command's numbers).

        Args:
            tokens: 1 to ``n_ctx()`` token ids, BOS included if wanted.

        Returns:
            float32 array of shape ``(len(tokens), n_vocab())``: row ``i``
            holds the unnormalized log-probabilities of the token after
            ``tokens[:i + 1]``.

        Raises:
            TernValueError: no tokens, more than ``n_ctx()``, or an id outside
                the vocabulary.
        """
        return self._engine.eval_logits(list(tokens))

    def perplexity(
        self,
        text: str,
        n_ctx: int = 512,
        n_batch: Optional[int] = None,
        n_chunks: Optional[int] = None,
    ) -> float:
        """Perplexity of ``text``, computed like llama.cpp's
        ``llama-perplexity -c n_ctx`` (and ``tern perplexity``).

        The text is tokenized once and cut into chunks of ``n_ctx`` tokens
        (the first token of each becomes BOS when the model adds BOS); each
        chunk is evaluated from an empty cache in passes of ``n_batch``
        tokens, and only the second half of each chunk is scored.

        Args:
            text: at least ``2 * n_ctx`` tokens of text.
            n_ctx: tokens per chunk (at least 3).
            n_batch: tokens per forward pass (default: the ``n_batch`` given
                to the constructor).
            n_chunks: evaluate at most this many chunks.

        Returns:
            ``exp(mean negative log-likelihood)`` of the scored tokens, in
            nats per token before the exponential.

        Raises:
            TernValueError: a text too short for ``n_ctx``, or bad sizes.
            KeyboardInterrupt: Ctrl-C, after the chunk being evaluated.
        """
        batch = self.n_batch if n_batch is None else n_batch
        value, _err, _chunks, _tokens = self._engine.perplexity(text, n_ctx, batch, n_chunks)
        return value

    # -- completion ----------------------------------------------------------

    def reset(self) -> None:
        """Empty the KV cache (the next completion evaluates its whole prompt)."""
        self._engine.reset()

    def _prompt_tokens(self, prompt: Prompt) -> List[int]:
        if isinstance(prompt, str):
            return self._engine.tokenize(prompt, True, True)
        return list(prompt)

    def _start(
        self,
        tokens: List[int],
        max_tokens: Optional[int],
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        repeat_penalty: float,
        frequency_penalty: float,
        presence_penalty: float,
        seed: Optional[int],
        stop: Stop,
    ) -> "_tern.Stream":
        room = self.n_ctx() - len(tokens)
        if max_tokens is None or max_tokens <= 0:
            max_tokens = room
        return self._engine.generate(
            tokens,
            max(0, min(max_tokens, room)),
            float(temperature),
            int(top_k),
            float(top_p),
            float(min_p),
            float(repeat_penalty),
            float(frequency_penalty),
            float(presence_penalty),
            self.seed if seed is None else _seed(seed),
            _stop_list(stop),
        )

    def _report(self, stream: "_tern.Stream") -> None:
        if self.verbose:
            print(stream.timings(), file=sys.stderr)

    def create_completion(
        self,
        prompt: Prompt,
        suffix: Optional[str] = None,
        max_tokens: Optional[int] = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: Optional[int] = None,
        echo: bool = False,
        stop: Stop = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: Optional[int] = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: Optional[str] = None,
        stopping_criteria: Any = None,
        logits_processor: Any = None,
        grammar: Any = None,
        logit_bias: Optional[Dict[int, float]] = None,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """Generate text after ``prompt``, llama-cpp-python's ``create_completion``.

        Args:
            prompt: text (BOS added when the model adds BOS; control-token
                texts become their ids) or token ids (used as they are).
            max_tokens: most tokens to generate; None or <= 0: until the
                context is full.
            temperature: 0 or less is greedy (argmax).
            top_p, min_p, top_k, repeat_penalty: llama.cpp's samplers
                (``top_k`` <= 0 keeps every token; ``repeat_penalty`` 1 is off).
            frequency_penalty, presence_penalty: OpenAI's penalties, in
                [-2, 2] (0 is off). All penalties look at the last 64 tokens.
            echo: put the prompt in front of the returned text.
            stop: string(s) that end the text; they are not part of it.
            stream: return an iterator of chunks instead of one dictionary.
            seed: sampling seed of this call (default: the ``Llama``'s); -1
                draws a random one.
            model: the name to put in the result (default: the model path).

        The other arguments exist for compatibility and must keep their
        default values (tern does not implement them).

        Returns:
            ``{"id", "object": "text_completion", "created", "model",
            "choices": [{"text", "index", "logprobs": None, "finish_reason"}],
            "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}``;
            ``finish_reason`` is ``"stop"`` (end-of-generation token or a
            stop string) or ``"length"`` (``max_tokens`` or a full context).
            With ``stream=True``, an iterator of chunks of the same shape
            without ``usage``, one per piece of text, then one with text
            ``""`` and the ``finish_reason``.

        Raises:
            TernValueError: a prompt that does not fit in the context, an id
                outside the vocabulary, bad sampling values, or an argument
                tern does not implement.
            KeyboardInterrupt: Ctrl-C, between two tokens.
        """
        _refuse_unsupported(_COMPLETION_UNSUPPORTED, locals())
        tokens = self._prompt_tokens(prompt)
        s = self._start(
            tokens,
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            frequency_penalty,
            presence_penalty,
            seed,
            stop,
        )
        cid = f"cmpl-{uuid.uuid4()}"
        created = int(time.time())
        name = model if model is not None else self.model_path
        head = ""
        if echo:
            head = prompt if isinstance(prompt, str) else self.detokenize(tokens).decode("utf-8", errors="replace")

        def chunk(text: str, finish: Optional[str]) -> Dict[str, Any]:
            return {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            }

        if stream:

            def chunks() -> Iterator[Dict[str, Any]]:
                if head:
                    yield chunk(head, None)
                for piece in s:
                    yield chunk(piece, None)
                self._report(s)
                yield chunk("", s.finish_reason)

            return chunks()
        text = head + "".join(s)
        self._report(s)
        out = chunk(text, s.finish_reason)
        n_gen = len(s.completion_ids)
        out["usage"] = {
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": n_gen,
            "total_tokens": s.prompt_tokens + n_gen,
        }
        return out

    def __call__(self, prompt: Prompt, *args: Any, **kwargs: Any) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """Same as :meth:`create_completion`."""
        return self.create_completion(prompt, *args, **kwargs)

    def create_chat_completion(
        self,
        messages: Sequence[Dict[str, Any]],
        functions: Any = None,
        function_call: Any = None,
        tools: Any = None,
        tool_choice: Any = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: Stop = None,
        seed: Optional[int] = None,
        response_format: Any = None,
        max_tokens: Optional[int] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: Optional[str] = None,
        logits_processor: Any = None,
        grammar: Any = None,
        logit_bias: Optional[Dict[int, float]] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """Reply to a conversation, llama-cpp-python's ``create_chat_completion``.

        ``messages`` are OpenAI-style ``{"role", "content"}`` dicts (content
        a string or a list of text parts), rendered with the model's chat
        template exactly as ``tern chat`` renders its conversation (for
        BitNet GGUFs the trained ``System:/User:/Assistant:`` format), ending
        where the assistant's reply begins. The reply ends at the model's
        end-of-turn token, at ``max_tokens`` (None: when the context is
        full), or at a ``stop`` string. The KV cache keeps the conversation,
        so the next call with one more message only evaluates the new tokens.

        Sampling arguments as in :meth:`create_completion`; the other
        arguments exist for compatibility and must keep their defaults.

        Returns:
            ``{"id", "object": "chat.completion", "created", "model",
            "choices": [{"index", "message": {"role": "assistant",
            "content"}, "logprobs": None, "finish_reason"}], "usage"}``, or
            with ``stream=True`` an iterator of ``chat.completion.chunk``
            dicts: first ``delta: {"role": "assistant"}``, then ``delta:
            {"content": ...}`` pieces, then ``delta: {}`` with the
            ``finish_reason``.

        Raises:
            TernValueError: malformed messages, messages the template refuses,
                a conversation that does not fit in the context, bad sampling
                values.
            KeyboardInterrupt: Ctrl-C, between two tokens.
        """
        _refuse_unsupported(_CHAT_UNSUPPORTED, locals())
        pairs = [_message_text(i, m) for i, m in enumerate(messages, 1)]
        tokens = self._engine.chat_tokens(pairs)
        s = self._start(
            tokens,
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            frequency_penalty,
            presence_penalty,
            seed,
            stop,
        )
        cid = f"chatcmpl-{uuid.uuid4()}"
        created = int(time.time())
        name = model if model is not None else self.model_path
        if stream:

            def chunk(delta: Dict[str, str], finish: Optional[str]) -> Dict[str, Any]:
                return {
                    "id": cid,
                    "model": name,
                    "created": created,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }

            def chunks() -> Iterator[Dict[str, Any]]:
                yield chunk({"role": "assistant"}, None)
                for piece in s:
                    yield chunk({"content": piece}, None)
                self._report(s)
                yield chunk({}, s.finish_reason)

            return chunks()
        text = "".join(s)
        self._report(s)
        n_gen = len(s.completion_ids)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": s.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": n_gen,
                "total_tokens": s.prompt_tokens + n_gen,
            },
        }

    def __repr__(self) -> str:
        return f"Llama({self.model_path!r}, n_ctx={self.n_ctx()}, n_threads={self._engine.n_threads})"
