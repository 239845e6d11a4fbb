"""Argument checks: the one rule for every public entry point and the CLI.

A wrong type raises TypeError, a wrong value raises ValueError, and both messages name
the argument and the value. Each check returns the value converted to its plain Python
type (NumPy scalars are accepted wherever Python numbers are; bools are not numbers).
A leaf module: NumPy and the standard library only.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path

import numpy as np

_INTERVAL = re.compile(r"\s*([\[(])\s*(-?inf|[-+.\deE]+)\s*,\s*(-?inf|[-+.\deE]+)\s*([\])])\s*\Z")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def shown(value):
    """value as a message shows it: an integer too long to read (or for Python to print, past
    4300 digits) by its order of magnitude."""
    if _is_int(value) and int(value).bit_length() > 128:
        return f"about {'-' if value < 0 else ''}10**{int(math.log10(abs(int(value))))}"
    return repr(value)


def check_int(name, value, low=None, high=None, *, allow_none=False):
    """value as an int in [low, high] (either bound None: unbounded), or None if allow_none."""
    if value is None and allow_none:
        return None
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer{' or None' if allow_none else ''}, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is not None:
            expected = f"an integer in [{low if low is not None else '-inf'}, {high}]"
        elif low == 1:
            expected = "a positive integer"
        else:
            expected = f"an integer >= {low}"
        raise ValueError(f"{name} must be {expected}, got {shown(value)}")
    return value


@functools.cache
def _interval(text):
    """'(0, 1]' -> (0.0, False, 1.0, True): the bounds and whether each is included."""
    match = _INTERVAL.match(text)
    if match is None:
        raise ValueError(f"not an interval: {text!r}")
    left, low, high, right = match.groups()
    return float(low), left == "[", float(high), right == "]"


def check_number(name, value, interval="(-inf, inf)", *, allow_none=False):
    """value as a float inside interval, written as in mathematics ('(0, 1]', '[0, inf)'),
    or None if allow_none. NaN is never inside; infinity only behind a closed bound."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number{' or None' if allow_none else ''}, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range: outside every interval but an infinite one
        number = math.inf if value > 0 else -math.inf
    low, low_closed, high, high_closed = _interval(interval)
    inside = (number >= low if low_closed else number > low) and (number <= high if high_closed else number < high)
    if not inside:  # NaN lands here too
        if interval.replace(" ", "") == "(0,inf)":
            expected = "be positive and finite"
        elif interval.replace(" ", "") == "[0,inf)":
            expected = "be a finite number >= 0"
        else:
            expected = f"lie in {interval}"
        raise ValueError(f"{name} must {expected}, got {shown(value)}")
    return number


def check_bool(name, value):
    """value as a bool; only True and False (and NumPy's) are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_str(name, value):
    """value, which must be a str."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def check_choice(name, value, choices):
    """value, which must be one of choices (TypeError if it is not even of their type)."""
    expected = ", ".join(map(repr, choices))
    if not any(isinstance(value, type(choice)) for choice in choices):
        raise TypeError(f"{name} must be one of {expected}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {expected}, got {value!r}")
    return value


def check_directory(name, value):
    """value, a directory's path (str or os.PathLike), as a Path. An empty path is refused: it
    would mean the current directory without anyone having said so ("." says it)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a directory path (str or os.PathLike), got {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a directory path (str or os.PathLike), got {path!r}")
    if not path:
        raise ValueError(f"{name} must name a directory, got {value!r} (pass '.' for the current one)")
    return Path(path)


def check_ids(name, ids, vocab_size, ndim):
    """Token ids as a C-contiguous int32 array of the given ndim, each in [0, vocab_size)."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError(f"{name} is empty (shape {ids.shape})")
    low, high = ids.min(), ids.max()
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds id {bad}, outside the vocabulary [0, {vocab_size})")
    return np.ascontiguousarray(ids, dtype=np.int32)


def check_tokenizer(tokenizer, vocab_size):
    """A tokenizer (or None) can only go with a model of the same vocabulary size. (A leaf
    module cannot import fastlm.Tokenizer: it is known by what fastlm uses of it.)"""
    if tokenizer is not None and not all(hasattr(tokenizer, a) for a in ("level", "encode", "decode", "write_json")):
        raise TypeError(f"tokenizer must be a fastlm.Tokenizer or None, got {type(tokenizer).__name__}")
    if tokenizer is not None and len(tokenizer) != vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
            f"{vocab_size}: they do not belong together"
        )
