"""Corpora that ship with fastlm, so that examples, tests and `fastlm train` need no download.

    text = fastlm.datasets.tinyshakespeare()     # or fastlm.datasets.load("tinyshakespeare")

Each function returns the whole corpus as one str.
"""

from __future__ import annotations

import gzip
from importlib import resources

__all__ = ["tinyshakespeare", "python_docs", "load", "NAMES"]


def tinyshakespeare():
    """Tiny Shakespeare: 1,115,394 characters of speeches from Shakespeare's plays (public domain).

    The corpus of Karpathy's char-rnn (data/tinyshakespeare/input.txt), stored gzip-compressed
    inside the package. 65 distinct characters; speakers are announced as "ROMEO:" on a line
    of their own.
    """
    data = resources.files(__name__).joinpath("tinyshakespeare.txt.gz").read_bytes()
    return gzip.decompress(data).decode("utf-8")


def python_docs():
    """The Python reference manual's topics (about 460 KB of English prose).

    Every Python installation has them (the standard library's pydoc_data.topics), so this
    corpus costs the package nothing. The topics in alphabetical order, separated by blank
    lines; the text depends on the Python version.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


_LOADERS = {"tinyshakespeare": tinyshakespeare, "python_docs": python_docs}
NAMES = tuple(_LOADERS)


def load(name):
    """The corpus called `name` (one of NAMES) as a str."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in _LOADERS:
        raise ValueError(f"name must be one of {', '.join(NAMES)}; got {name!r}")
    return _LOADERS[name]()
