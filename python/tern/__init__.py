"""tern: ternary (BitNet b1.58) GGUF models from Python.

>>> from tern import Llama, convert
>>> convert("path/to/hf_checkpoint", "model.gguf", outtype="i2_s")   # as `tern convert`
>>> llm = Llama("model.gguf", n_ctx=4096, n_threads=2, seed=0)       # or Llama(): the built-in model
>>> llm("The capital of France is", max_tokens=32, temperature=0)["choices"][0]["text"]

The API follows llama-cpp-python's high-level API (``Llama``, ``__call__`` /
``create_completion``, ``create_chat_completion``, ``tokenize`` /
``detokenize``, ``n_ctx()``, ``n_vocab()``) over tern's native CPU runtime,
which runs I2_S, TQ2_0 and TQ1_0 files and BitNet's relu² FFN. Errors are
:class:`TernError` s (also ``ValueError`` for bad arguments, ``OSError`` for
files).
"""

import os
from typing import Optional, Union

from . import _tern
from ._errors import (
    TernError,
    TernFileExistsError,
    TernFileNotFoundError,
    TernOSError,
    TernValueError,
)
from .llama import Llama

__version__: str = _tern.__version__

__all__ = [
    "Llama",
    "convert",
    "TernError",
    "TernValueError",
    "TernOSError",
    "TernFileNotFoundError",
    "TernFileExistsError",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]


def convert(
    model_dir: PathLike,
    outfile: Optional[PathLike] = None,
    *,
    outtype: str = "i2_s",
    embd_type: str = "f16",
    force: bool = False,
    verbose: bool = False,
) -> str:
    """Convert a Hugging Face BitNet checkpoint folder to GGUF, exactly as
    ``tern convert`` does (the same rules, the same bytes).

    Args:
        model_dir: folder with ``config.json``, ``*.safetensors`` and the
            tokenizer files; it is never modified.
        outfile: output GGUF (default: ``<folder name>-<outtype>.gguf`` in the
            current directory). Written atomically: nothing is left behind
            on error.
        outtype: projection type: ``"i2_s"``, ``"tq2_0"``, ``"tq1_0"``,
            ``"f16"`` or ``"f32"``.
        embd_type: token embedding / output head type: ``"f16"``, ``"f32"``,
            ``"q8_0"`` or ``"q6_k"``.
        force: overwrite an existing ``outfile``.
        verbose: print the per-tensor report to stderr, as the CLI does.

    Returns:
        The path of the written file.

    Raises:
        TernValueError: an unknown ``outtype`` or ``embd_type``.
        TernOSError: a missing folder (``FileNotFoundError``), an existing
            output without ``force`` (``FileExistsError``), or a checkpoint
            tern cannot convert (the message names the tensor or file).
    """
    out = _tern.convert(
        os.fspath(model_dir),
        None if outfile is None else os.fspath(outfile),
        outtype,
        embd_type,
        force,
        verbose,
    )
    return os.fspath(out)
