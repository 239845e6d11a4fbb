"""Scoring text with a trained model: per-token log-probabilities of many sequences at once,
KenLM-style sentence scores, and the next-token metrics of evaluate.

Functions take the model first and are attached to LSTMNetwork (fastlm.model) as methods.
Every sequence list goes to the C++ core in one call (``score_sequences``: length-sorted
groups, no padding computed), and evaluate's text goes in long pieces with the state
carried (``score_streams``); nothing here loops over tokens.

KenLM's conventions: ``score`` is a log10 probability; ``bos=True`` scores the first token
as following a sentence boundary, ``eos=True`` also scores the boundary after the last
token. fastlm's boundary token is the tokenizer's ``eos`` (``Tokenizer.fit(..., eos="<eos>")``,
PTB style: a sentence starts after the previous one's ``<eos>``) or, for a character or BPE
model without one, the newline. A model with neither has no boundary to condition on or to
predict: ``bos=True`` / ``eos=True`` then raise ValueError saying so (pass False).
"""

from __future__ import annotations

import math

import numpy as np

from fastlm.checks import check_bool, check_int, check_tokenizer
from fastlm.token_file import ResidentPages

LOG10_E = 1.0 / math.log(10.0)


class UnscorableSentence(ValueError):
    """A sentence with no token to score (empty, or one token with bos=False, eos=False): index is
    its place in the list, so that a caller may name it in its own terms (the CLI: a line number)."""

    def __init__(self, index, sentence, empty):
        self.index, self.sentence, self.empty = index, sentence, empty
        super().__init__(
            f"sentences[{index}] ({sentence!r}) has no token to score: it is empty"
            if empty
            else f"sentences[{index}] ({sentence!r}) has no token to score with bos=False, eos=False: its "
            "first token is context only"
        )


# Rows (stream steps) per C++ call when evaluate reads a 1-D text: enough that the Python
# between calls is nothing beside the scoring, few enough that a call's outputs and index
# arrays stay small (a few MB) whatever the text's length. Inside a call the C++ core
# works in chunks of its own; the results do not depend on this size.
TEXT_CALL_ROWS = 1 << 16


def _sequence_list(sequences, vocab_size):
    """The sequences as one int32 array and offsets; errors name the sequence at fault."""
    if isinstance(sequences, np.ndarray) and sequences.ndim == 1 and sequences.dtype.kind in "iu":
        raise TypeError(
            "sequences must be a list of 1-D id arrays (one per sequence), got a single 1-D array: wrap it in a list"
        )
    try:
        arrays = [np.asarray(s) for s in sequences]
    except TypeError:
        raise TypeError(f"sequences must be a list of 1-D id arrays, got {type(sequences).__name__}") from None
    if arrays and all(a.ndim == 0 and a.dtype.kind in "iu" for a in arrays):  # [5, 6, 7]: one sequence's ids
        raise TypeError(
            "sequences must be a list of 1-D id arrays (one per sequence), got a flat list of ids: wrap it in a list"
        )
    for i, a in enumerate(arrays):
        if a.ndim != 1:
            raise ValueError(f"sequence {i} must be 1-D, got shape {a.shape}")
        if a.dtype.kind not in "iu" and a.size:
            raise TypeError(f"sequence {i} must hold integer token ids, got dtype {a.dtype}")
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(arrays).astype(np.int64, copy=False) if arrays else np.zeros(0, np.int64)
    bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    if bad.size:
        sequence = int(np.searchsorted(offsets, bad[0], side="right")) - 1
        raise ValueError(
            f"sequence {sequence} holds id {ids[bad[0]]} at position {bad[0] - offsets[sequence]}, "
            f"outside the vocabulary [0, {vocab_size})"
        )
    return ids.astype(np.int32), offsets


def log_probs(model, sequences, bos=None, batch_size=256):
    """Natural-log probability of every token of each sequence given the tokens before it.

    sequences: a list of 1-D id arrays of any lengths. bos: a token id the sequences are
    taken to follow (then the first token is scored too), or None (the first token is
    context only). Returns a list of float32 arrays, one per sequence (len(s) entries with
    bos, len(s) - 1 without). All sequences are scored in one C++ call, longest first in
    groups of batch_size, each from a zero state.
    """
    bos = check_int("bos", bos, 0, model.vocab_size - 1, allow_none=True)
    batch_size = check_int("batch_size", batch_size, 1)
    ids, offsets = _sequence_list(sequences, model.vocab_size)
    scores, _, _ = model.ops.score_sequences(
        model.reading_params(), model.num_layers, ids, offsets, -1 if bos is None else int(bos), int(batch_size)
    )
    counts = np.diff(offsets) if bos is not None else np.maximum(np.diff(offsets) - 1, 0)
    return np.split(scores, np.cumsum(counts)[:-1]) if len(counts) else []


# ------------------------------------------------------------------ sentences (KenLM's API)


def boundary_id(tokenizer):
    """The sentence-boundary token: the tokenizer's eos, or a character model's newline; else None."""
    eos = getattr(tokenizer, "eos", None)
    if eos is not None:
        return tokenizer[eos]
    if tokenizer.level == "char" and "\n" in tokenizer:
        return tokenizer["\n"]
    if tokenizer.level == "bpe":  # every byte is a token: the newline's
        return int(tokenizer.encode("\n")[0])
    return None


def sentence_ids(tokenizer, sentence, boundary):
    """A sentence's ids without the boundary an eos tokenizer adds after the last line."""
    ids = tokenizer.encode(sentence)
    if boundary is not None and getattr(tokenizer, "eos", None) is not None and len(ids) and ids[-1] == boundary:
        ids = ids[:-1]
    return ids


def _sentences(model, sentences, bos, eos):
    """(ids per sentence with the boundaries added, bos id or None, whether one str was given)."""
    tokenizer = model.require_tokenizer()
    check_tokenizer(tokenizer, model.vocab_size)
    single = isinstance(sentences, str)
    if single:
        sentences = [sentences]
    elif isinstance(sentences, (bytes, bytearray)) or not hasattr(sentences, "__iter__"):
        raise TypeError(f"sentences must be a str or a list of str, got {type(sentences).__name__}")
    sentences = list(sentences)
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise TypeError(f"sentences[{i}] must be a str, got {type(s).__name__}")
    bos, eos = check_bool("bos", bos), check_bool("eos", eos)
    boundary = boundary_id(tokenizer)
    if (bos or eos) and boundary is None:
        which = "bos" if bos else "eos"
        raise ValueError(
            f"{which}=True needs a sentence-boundary token, and this word-level tokenizer has none: "
            "train with Tokenizer.fit(..., eos='<eos>'), or pass bos=False, eos=False"
        )
    seqs = []
    for i, s in enumerate(sentences):
        ids = sentence_ids(tokenizer, s, boundary)
        if eos:
            ids = np.append(ids, boundary).astype(np.int32)
        if len(ids) == 0 or (not bos and len(ids) < 2):
            raise UnscorableSentence(i, s, empty=not s.split())
        seqs.append(ids)
    return seqs, (boundary if bos else None), single


def score(model, sentences, bos=True, eos=True):
    """log10 probability of a sentence (a str) or of each of a list of them, as KenLM's
    Model.score: bos=True scores the first word as following a sentence boundary, eos=True
    adds the probability of the boundary after the last word. An empty sentence with
    eos=True is scored as its boundary alone."""
    seqs, bos_id, single = _sentences(model, sentences, bos, eos)
    totals = [float(np.sum(lp, dtype=np.float64)) * LOG10_E for lp in log_probs(model, seqs, bos_id)]
    return totals[0] if single else totals


def perplexity(model, sentences, bos=True, eos=True):
    """10 ** (-score / scored tokens): the per-token perplexity of a sentence (or a list of
    them), the boundary included when eos=True, as KenLM's Model.perplexity."""
    seqs, bos_id, single = _sentences(model, sentences, bos, eos)
    values = [
        10.0 ** (-float(np.sum(lp, dtype=np.float64)) * LOG10_E / len(lp)) for lp in log_probs(model, seqs, bos_id)
    ]
    return values[0] if single else values


def full_scores(model, sentences, bos=True, eos=True):
    """Per scored token, (log10 probability, is_unknown): a list of pairs for a sentence, a
    list of such lists for a list of sentences (KenLM's Model.full_scores without the n-gram
    length). is_unknown: the word is not in the vocabulary (scored as <unk>)."""
    seqs, bos_id, single = _sentences(model, sentences, bos, eos)
    unk = model.tokenizer.unk_id
    result = []
    for ids, lp in zip(seqs, log_probs(model, seqs, bos_id)):
        targets = ids if bos_id is not None else ids[1:]
        result.append(list(zip((lp.astype(np.float64) * LOG10_E).tolist(), (targets == unk).tolist())))
    return result[0] if single else result


# ------------------------------------------------------------------ evaluate's metrics


def score_text(model, params, ids, streams, metrics):
    """Every token of the 1-D ids after the first, scored into metrics (NextTokenMetrics).

    The text is read as `streams` contiguous streams side by side, each from a zero state
    with the state carried from its first token to its last (score_streams, a long piece
    per C++ call): streams=1 scores every token with its full left context; N streams cut
    the text into N equal parts, as PyTorch's word_language_model example evaluates, and
    a token sees the left context of its own part only. Every token is scored either way:
    the tokens N equal parts leave over continue the last stream.
    """
    scored = len(ids) - 1
    streams = min(streams, scored)
    length = scored // streams  # steps of every stream; the remainder continues the last one
    pages = ResidentPages(ids)
    state = (None, None)

    def piece(starts, t0, t1, state):
        index = starts[:, None] + np.arange(t0, t1, dtype=np.int64)
        x, y = ids[index], ids[index + 1]
        pages.batch_read()
        log_probs, predictions, ranks, *state = model.ops.score_streams(params, model.num_layers, x, y, *state)
        check_finite_scores(log_probs, f"on {y.size} tokens after the first {metrics.tokens}")
        metrics.add(y.reshape(-1), log_probs.reshape(-1), predictions.reshape(-1), ranks.reshape(-1))
        return state

    starts = np.arange(streams, dtype=np.int64) * length
    step = max(1, TEXT_CALL_ROWS // streams)
    for t0 in range(0, length, step):
        state = piece(starts, t0, min(t0 + step, length), state)
    last = starts[-1:]  # the last stream goes on through the remainder
    state = tuple(s[:, -1:] for s in state)
    for t0 in range(length, scored - int(last[0]), TEXT_CALL_ROWS):
        state = piece(last, t0, min(t0 + TEXT_CALL_ROWS, scored - int(last[0])), state)


def check_finite_scores(log_probs, where):
    """FloatingPointError when a log-probability is NaN or infinite (the model's logits
    overflow float32): perplexity inf or nan would be a silent non-answer. where names the
    tokens scored, as "on windows 0 to 32"."""
    if not np.all(np.isfinite(log_probs)):
        loss = -float(np.mean(log_probs, dtype=np.float64))
        raise FloatingPointError(f"the loss is {loss} {where}: the model's logits overflow float32 (NaN or infinity)")


class NextTokenMetrics:
    """Running totals of next-token prediction over batches: log-likelihood, top-1 and
    top-k hits, and per-token true positives, predictions and targets (counted in C++,
    three vocabulary-sized vectors, no vocab x vocab confusion matrix)."""

    def __init__(self, ops, vocab_size, top_k):
        self.ops, self.vocab_size, self.top_k = ops, vocab_size, top_k
        self.log_likelihood, self.correct, self.top_k_correct, self.tokens = 0.0, 0, 0, 0
        self.counts = np.zeros((3, vocab_size), dtype=np.int64)

    def add(self, targets, log_probs, predictions, ranks):
        self.log_likelihood += float(np.sum(log_probs, dtype=np.float64))
        self.top_k_correct += int(np.count_nonzero(ranks < self.top_k))
        self.counts += self.ops.prediction_counts(targets, predictions, self.vocab_size)
        self.tokens += targets.size

    def result(self):
        tokens = self.tokens
        mean = -self.log_likelihood / tokens
        true_positives, predicted, actual = self.counts
        present = (predicted > 0) | (actual > 0)  # the tokens macro averages run over
        precision = np.divide(true_positives, predicted, out=np.zeros(self.vocab_size), where=predicted > 0)
        recall = np.divide(true_positives, actual, out=np.zeros(self.vocab_size), where=actual > 0)
        f1 = np.divide(
            2 * precision * recall, precision + recall, out=np.zeros(self.vocab_size), where=precision + recall > 0
        )
        return {
            "loss": mean,
            "perplexity": math.exp(mean) if mean < 700 else math.inf,
            "accuracy": int(true_positives.sum()) / tokens,
            "top_k": self.top_k,
            "top_k_accuracy": self.top_k_correct / tokens,
            "precision": float(precision[present].mean()),
            "recall": float(recall[present].mean()),
            "f1": float(f1[present].mean()),
            "bits_per_token": mean / math.log(2),
            "tokens": tokens,
        }


# ------------------------------------------------------------------ the next token


def next_token_probs(model, prompt, top_k=None):
    """The distribution of the token after prompt (a str through the tokenizer, or 1-D ids).

    A str prompt is read as generate_text and stream read it (model.prompt_ids): a prompt
    that ends in a newline is followed by the next line's first token, words outside the
    vocabulary warn, and an empty prompt starts where generation does.
    Returns the probabilities of every token id (float32, V) with top_k=None, else the
    top_k most likely as a list of (token, probability), most likely first: tokens as
    strings for a str prompt, ids for an id prompt.
    """
    text = isinstance(prompt, str)
    session = model.session(model.prompt_ids(prompt) if text else prompt)
    probs = session.probabilities()[0]
    if top_k is None:
        return probs
    top_k = check_int("top_k", top_k, 1)
    best = np.argsort(-probs, kind="stable")[:top_k]
    names = [model.tokenizer.id_to_token(int(i)) for i in best] if text else best.tolist()
    return list(zip(names, probs[best].astype(np.float64).tolist()))
