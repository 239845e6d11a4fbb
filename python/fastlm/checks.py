"""Argument checks shared by the public entry points.

A leaf module (NumPy only). Rule: a wrong type raises TypeError, a wrong value raises
ValueError, and both messages name the argument and the value.
"""
from __future__ import annotations

import numpy as np


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
    """A tokenizer (or None) can only go with a model of the same vocabulary size."""
    if tokenizer is not None and len(tokenizer) != vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                         f"{vocab_size}: they do not belong together")
