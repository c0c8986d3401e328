"""Type stubs of ``tern._tern``, the compiled half of tern (Rust, PyO3).

Use :class:`tern.Llama` and :func:`tern.convert`; these are their engines.
Every computing call releases the GIL and runs on the engine's own pool of
``n_threads`` threads. Errors are ``tern.TernError`` s.
"""

import os
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

__version__: str
BUILTIN_MODEL: str
"""File name of the model built into tern (used when no path is given)."""

class Engine:
    """A loaded model, its KV cache (one sequence) and its thread pool."""

    def __init__(
        self,
        path: Optional[str] = None,
        n_ctx: int = 512,
        n_threads: Optional[int] = None,
        kv_f32: bool = False,
    ) -> None:
        """Load ``path`` (None: the built-in model); ``n_ctx`` tokens of KV
        cache (0: the model's training context); ``n_threads`` threads (None:
        the physical cores). Raises TernOSError for a file that cannot be
        used, TernValueError for bad sizes."""
    @property
    def n_ctx(self) -> int:
        """Context size, tokens."""
    @property
    def n_vocab(self) -> int:
        """Vocabulary size (logit row width)."""
    @property
    def n_embd(self) -> int:
        """Hidden size."""
    @property
    def n_ctx_train(self) -> int:
        """Context length the model was trained with, tokens."""
    @property
    def n_threads(self) -> int: ...
    @property
    def architecture(self) -> str:
        """``general.architecture``: bitnet-b1.58, bitnet-25 or bitnet."""
    @property
    def kernel(self) -> str:
        """The SIMD kernel in use (scalar, avx2, avx512, neon)."""
    @property
    def bos(self) -> Optional[int]: ...
    @property
    def eos(self) -> Optional[int]: ...
    @property
    def add_bos(self) -> bool:
        """Whether prompts start with BOS."""
    @property
    def warnings(self) -> List[str]:
        """What the loader fixed in the file, one line each."""
    @property
    def n_cached(self) -> int:
        """Tokens currently in the KV cache."""
    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> List[int]:
        """Token ids; control-token texts become their ids with ``special``;
        BOS first when ``add_bos`` and the model adds BOS."""
    def detokenize(self, ids: Sequence[int], special: bool = False) -> bytes:
        """Bytes of the tokens (control tokens only with ``special``)."""
    def eval_logits(self, ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """Logits of every position, one batch from an empty cache: shape
        ``(len(ids), n_vocab)``, float32."""
    def perplexity(
        self, text: str, n_ctx: int = 512, n_batch: int = 512, n_chunks: Optional[int] = None
    ) -> Tuple[float, float, int, int]:
        """llama-perplexity's estimate: (PPL, ± error, chunks evaluated,
        tokens in the text). Ctrl-C stops it after the current chunk."""
    def chat_tokens(self, messages: Sequence[Tuple[str, str]]) -> List[int]:
        """Prompt tokens of (role, content) messages rendered with the
        model's chat template, ending with the assistant's turn."""
    def generate(
        self,
        prompt: Sequence[int],
        max_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        repeat_penalty: float,
        frequency_penalty: float,
        presence_penalty: float,
        seed: int,
        stop: Sequence[str],
    ) -> Stream:
        """Start a generation after ``prompt`` (token ids); see Stream."""
    def reset(self) -> None:
        """Empty the KV cache."""

class Stream(Iterator[str]):
    """A generation in progress. Iterating yields its text in pieces (whole
    UTF-8 characters; text that may become a stop string is held back); each
    step releases the GIL and checks for Ctrl-C first."""

    def __iter__(self) -> Stream: ...
    def __next__(self) -> str: ...
    @property
    def finish_reason(self) -> Optional[str]:
        """"stop", "length", or None while running."""
    @property
    def prompt_tokens(self) -> int:
        """Tokens of the prompt (cached ones included)."""
    @property
    def completion_ids(self) -> List[int]:
        """Ids generated so far (stop strings' tokens included)."""
    def timings(self) -> str:
        """Prompt and generation speed, llama.cpp style (two lines)."""

def convert(
    model_dir: str,
    outfile: Optional[str] = None,
    outtype: str = "i2_s",
    embd_type: str = "f16",
    force: bool = False,
    verbose: bool = False,
) -> "os.PathLike[str]":
    """``tern convert``: Hugging Face checkpoint folder → GGUF; returns the
    output path."""
