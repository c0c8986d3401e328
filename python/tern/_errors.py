"""The exceptions tern raises.

Every error is a :class:`TernError` whose text is the library's one-line
message (what the ``tern`` command prints after ``tern: error:``). Bad
arguments are also :class:`ValueError`; files that cannot be used (missing,
unreadable, not a GGUF or not a BitNet checkpoint, an output that already
exists) are also :class:`OSError`, with ``errno`` set when the system gave
one, and are :class:`FileNotFoundError` / :class:`FileExistsError` where
that is what happened.
"""

import errno as _errno
from typing import Optional

__all__ = [
    "TernError",
    "TernValueError",
    "TernOSError",
    "TernFileNotFoundError",
    "TernFileExistsError",
]


class TernError(Exception):
    """Base class of every error raised by tern."""


class TernValueError(TernError, ValueError):
    """A bad argument: a number out of range, an unknown name, a token id
    outside the vocabulary, a prompt longer than the context, messages the
    chat template refuses."""


class TernOSError(TernError, OSError):
    """A file that cannot be used. ``errno`` is set when the system reported
    one (``str(e)`` is the library's message, without an ``[Errno N]``
    prefix)."""


class TernFileNotFoundError(TernOSError, FileNotFoundError):
    """A model file or checkpoint folder that does not exist."""


class TernFileExistsError(TernOSError, FileExistsError):
    """An output file that already exists (pass ``force=True``)."""


_BY_ERRNO = {
    _errno.ENOENT: TernFileNotFoundError,
    _errno.EEXIST: TernFileExistsError,
}


def _os_error(message: str, errno: Optional[int] = None) -> TernOSError:
    """The exception for a file problem (called by the compiled module)."""
    e = _BY_ERRNO.get(errno, TernOSError)(message) if errno is not None else TernOSError(message)
    e.errno = errno
    return e
