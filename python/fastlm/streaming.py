"""Streaming generation: tokens handed out as the C++ session samples them, and stop
conditions (stop strings and stop token ids) shared with generate and generate_text.

A stream is a C++ GenerationSession (the state after the prompt, the generator, the packed
weights) advanced a few tokens per call, so the prompt runs once and the tokens are exactly
those generate draws with the same seed. Functions take the model first and are attached
to LSTMNetwork (fastlm.model) as methods.
"""

from __future__ import annotations

import numpy as np

from fastlm.checks import check_int

# Tokens per session call: the first alone (the user sees text at once), then growing to
# a small chunk, so a long stream pays the Python round trip once per few tokens.
FIRST_CHUNKS = (1, 1, 2, 4)
CHUNK = 8


def check_stop(stop, text, vocab_size):
    """(stop strings, stop ids) from stop: None, a str, an int, or a list of them.

    Strings only with text output; an empty list or an empty string is a ValueError
    (it would stop nothing or everything), and so is an id outside [0, vocab_size) (it
    would never be drawn)."""
    if stop is None:
        return (), ()
    items = [stop] if isinstance(stop, (str, int, np.integer)) else stop
    if isinstance(items, (bytes, bytearray)) or not hasattr(items, "__iter__"):
        raise TypeError(f"stop must be a str, a token id or a list of them, got {type(stop).__name__}")
    items = list(items)
    if not items:
        raise ValueError("stop is an empty list: pass None for no stop condition")
    strings, ids = [], []
    for item in items:
        if isinstance(item, str):
            if not text:
                raise TypeError(f"stop strings need text output (a str prompt), got {item!r}")
            if item == "":
                raise ValueError("stop holds an empty string, which would stop before any text")
            strings.append(item)
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= item < vocab_size:
                raise ValueError(f"stop holds the token id {int(item)}, outside the vocabulary [0, {vocab_size})")
            ids.append(int(item))
        else:
            raise TypeError(f"stop must hold str or int token ids, got {type(item).__name__}")
    return tuple(strings), tuple(ids)


def first_stop_id(ids, stop_ids):
    """Index of the first id in stop_ids, or None."""
    if not stop_ids:
        return None
    hits = np.flatnonzero(np.isin(ids, stop_ids))
    return int(hits[0]) if hits.size else None


def cut_at_stop(text, stop_strings):
    """text up to the earliest stop string, and whether one was found."""
    at = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return (text[: min(at)], True) if at else (text, False)


def _held_back(text, stop_strings):
    """How many characters at the end of text could begin a stop string (not safe to show yet)."""
    longest = 0
    for s in stop_strings:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


def _chunks(max_new_tokens):
    left = max_new_tokens
    for size in FIRST_CHUNKS:
        if left <= 0:
            return
        yield min(size, left)
        left -= size
    while left > 0:
        yield min(CHUNK, left)
        left -= CHUNK


def stream(
    model,
    prompt="",
    max_new_tokens=200,
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    stop=None,
    suppress_unk=True,
):
    """Generate after prompt, yielding as tokens are sampled.

    prompt: a str (through the tokenizer; yields text pieces whose concatenation is the
    continuation generate_text returns) or 1-D token ids (yields token ids, ints). The
    tokens are those generate draws with the same seed and settings. stop: a str or a
    token id or a list of them: the stream ends before the first one (a stop string is not
    yielded, nor any text after it). suppress_unk: never sample <unk> (needs the tokenizer).
    Abandoning the generator half-way is fine: the session is freed with it. Bad arguments
    raise here, before the generator is returned (not at its first piece).
    """
    text = isinstance(prompt, str)
    tokenizer = model.require_tokenizer() if text else None
    stop_strings, stop_ids = check_stop(stop, text, model.vocab_size)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)
    session = model.session(model.prompt_ids(prompt) if text else prompt, temperature, top_k, top_p, seed, suppress_unk)
    decoder = tokenizer.stream_decoder() if text else None  # text of a few ids at a time, characters whole
    return _pieces(session, decoder, stop_strings, stop_ids, max_new_tokens)


def _pieces(session, decoder, stop_strings, stop_ids, max_new_tokens):
    """stream's generator: text pieces (decoder given) or token ids, until a stop or max_new_tokens."""
    text = decoder is not None
    pending = ""  # decoded text not yet yielded (it may begin a stop string)
    for count in _chunks(max_new_tokens):
        ids = session.next(count)[0]
        end = first_stop_id(ids, stop_ids)
        if end is not None:
            ids = ids[:end]
        if not text:
            yield from ids.tolist()
        elif ids.size:
            pending += decoder.decode(ids)
            shown, stopped = cut_at_stop(pending, stop_strings)
            if stopped:
                if shown:
                    yield shown
                return
            safe = len(pending) - _held_back(pending, stop_strings)
            if safe > 0:
                yield pending[:safe]
                pending = pending[safe:]
        if end is not None:
            break
    if text:
        pending = cut_at_stop(pending + decoder.flush(), stop_strings)[0]
    if pending:
        yield pending
