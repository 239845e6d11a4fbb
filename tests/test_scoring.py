"""Scoring (log_probs, score, perplexity, full_scores), evaluate's metrics, streaming
generation with stop conditions, suppress_unk, next_token_probs, and calls from many
threads at once (issue 15). Tiny models on a slice of fastlm.datasets.tinyshakespeare()."""

from __future__ import annotations

import math
import sys
import threading
import warnings

import numpy as np
import pytest

import fastlm

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TEXT = fastlm.datasets.tinyshakespeare()[:6000]


@pytest.fixture(scope="module")
def tok():
    return fastlm.Tokenizer.fit(TEXT, level="word", eos="<eos>")


def make(tok, seed=1, layers=2, backend="cpp"):
    model = fastlm.LSTMLM(len(tok), 12, 20, layers, seed=seed, backend=backend)
    state = model.state_dict()
    state["decoder.weight"] *= 6  # peaked distributions: scores and samples depend on the context
    model.load_state_dict(state)
    model.tokenizer = tok
    return model


@pytest.fixture(scope="module")
def model(tok):
    return make(tok)


@pytest.fixture(scope="module")
def twin(tok, model):
    ref = make(tok, backend="numpy")
    ref.load_state_dict(model.state_dict())
    return ref


def sequences(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).astype(np.int32) for n in lengths]


def forward_log_probs(model, inputs, targets):
    """Per-token log-probabilities from the training path (one padded-free batch of one row)."""
    p = model.state_dict()
    logits = model.ops.output_scores  # the decoder alone; the LSTM through _lstm_forward
    rows, _, _ = model._lstm_forward(np.asarray(inputs, np.int32)[None], None, None)
    return logits(rows, p["decoder.weight"], p["decoder.bias"], np.asarray(targets, np.int32))[0]


# ------------------------------------------------------------------ log_probs


def test_log_probs_match_one_sequence_at_a_time_and_the_training_path(model):
    seqs = sequences(model.vocab_size, [5, 1, 0, 17, 3, 17, 40, 2])
    for bos in (None, 7):
        batched = model.log_probs(seqs, bos=bos, batch_size=3)
        assert len(batched) == len(seqs)
        for s, lp in zip(seqs, batched):
            np.testing.assert_array_equal(lp, model.log_probs([s], bos=bos)[0])
            inputs = np.concatenate([[bos], s[:-1]]) if bos is not None else s[:-1]
            targets = s if bos is not None else s[1:]
            assert lp.dtype == np.float32 and lp.shape == (len(targets),)
            if len(targets):
                np.testing.assert_allclose(lp, forward_log_probs(model, inputs, targets), atol=2e-5)


def test_log_probs_cpp_equal_numpy_backend(model, twin):
    seqs = sequences(model.vocab_size, [9, 30, 2, 1, 21], seed=3)
    for a, b in zip(model.log_probs(seqs, bos=0), twin.log_probs(seqs, bos=0)):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_log_probs_are_normalised(tok):
    """Over every possible next token the probabilities sum to one."""
    small = fastlm.LSTMLM(30, 6, 8, 1, seed=4)
    prefix = np.array([3, 1, 4], np.int32)
    candidates = [np.append(prefix, t).astype(np.int32) for t in range(30)]
    last = np.array([lp[-1] for lp in small.log_probs(candidates, bos=2)], np.float64)
    assert np.exp(last).sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "sequences_arg, kw, error, message",
    [
        ([np.array([1, 2]), np.array([3, 99999])], {}, ValueError, "sequence 1 holds id 99999 at position 1"),
        ([np.array([1, 2]), np.array([-1])], {}, ValueError, "sequence 1 holds id -1"),
        ([np.array([[1, 2]])], {}, ValueError, "sequence 0 must be 1-D"),
        ([np.array([1.5, 2.0])], {}, TypeError, "sequence 0 must hold integer token ids"),
        (np.array([1, 2, 3]), {}, TypeError, "a single 1-D array: wrap it in a list"),
        ([5, 6, 7], {}, TypeError, "a flat list of ids: wrap it in a list"),
        (5, {}, TypeError, "list of 1-D id arrays"),
        ([np.array([1, 2])], dict(bos=10**9), ValueError, r"bos must be an integer in \[0, "),
        ([np.array([1, 2])], dict(bos="x"), TypeError, "bos must be an integer or None"),
        ([np.array([1, 2])], dict(batch_size=0), ValueError, "batch_size must be a positive integer"),
    ],
)
def test_log_probs_bad_input(model, sequences_arg, kw, error, message):
    with pytest.raises(error, match=message):
        model.log_probs(sequences_arg, **kw)


def test_log_probs_of_nothing(model):
    assert model.log_probs([]) == []
    assert [len(lp) for lp in model.log_probs([np.array([], np.int32), np.array([4])])] == [0, 0]


@pytest.mark.parametrize(
    "hidden, layers, adaptive",
    [(20, 1, False), (20, 2, False), (20, 1, True), (20, 2, True), (520, 1, False), (130, 2, True)],
)
def test_a_sequence_scores_the_same_to_the_bit_whatever_its_companions(tok, hidden, layers, adaptive, restore_threads):
    """A sequence's log-probs are the same to the bit alone, in a list of mixed lengths, in
    another order, twice in one list, in groups of another size, on 1 or 2 threads: each step
    of the recurrence runs as many rows as sequences are still running, and a row's
    arithmetic must not depend on that number (sgemm_packed runs a tile of one or two rows
    with two k-chains). H 520 has two k blocks in a many-row product and one in a few-row
    one; H 520 and 130 share the recurrence between threads at the longest steps."""
    kw = dict(cutoffs=[20, 100], div_value=2.0) if adaptive else {}
    model = fastlm.LSTMLM(len(tok), 12, hidden, layers, seed=6, **kw)
    lengths = np.random.default_rng(hidden + layers).integers(0, 45, 70 if hidden < 500 else 16)
    seqs = sequences(model.vocab_size, lengths, seed=hidden * layers)
    order = np.random.default_rng(1).permutation(len(seqs))
    first = None
    for threads in (1, 2):
        fastlm.set_num_threads(threads)
        for bos in (None, 3):
            alone = [model.log_probs([s], bos=bos)[0] for s in seqs]
            lists = {
                "listed": model.log_probs(seqs, bos=bos),
                "groups of 7": model.log_probs(seqs, bos=bos, batch_size=7),
                "duplicated": model.log_probs(seqs + seqs[::-1], bos=bos)[: len(seqs)],
                "shuffled": [None] * len(seqs),
            }
            for i, lp in zip(order, model.log_probs([seqs[i] for i in order], bos=bos)):
                lists["shuffled"][i] = lp
            for name, scores in lists.items():
                for i, (a, b) in enumerate(zip(alone, scores)):
                    assert np.array_equal(a, b), f"{threads} threads, bos {bos}, {name}: sequence {i}"
            if first is None:
                first = alone
            elif bos is None:
                assert all(np.array_equal(a, b) for a, b in zip(first, alone)), "1 thread against 2"


# ------------------------------------------------------------------ KenLM's API


def test_score_is_the_log10_sum_over_tokens_with_the_boundaries(model, tok):
    sentence = "First Citizen: Before we proceed any further"
    ids = tok.encode(sentence)[:-1]  # the tokenizer's own end-of-line eos left out
    eos = tok["<eos>"]
    expected = model.log_probs([np.append(ids, eos)], bos=eos)[0].astype(np.float64).sum() / math.log(10)
    assert model.score(sentence) == pytest.approx(expected, rel=1e-6)
    no_eos = model.log_probs([ids], bos=eos)[0].astype(np.float64).sum() / math.log(10)
    assert model.score(sentence, eos=False) == pytest.approx(no_eos, rel=1e-6)
    no_bos = model.log_probs([np.append(ids, eos)])[0].astype(np.float64).sum() / math.log(10)
    assert model.score(sentence, bos=False) == pytest.approx(no_bos, rel=1e-6)
    scores = model.full_scores(sentence)
    assert len(scores) == len(ids) + 1
    assert sum(p for p, _ in scores) == pytest.approx(model.score(sentence), rel=1e-6)
    assert model.perplexity(sentence) == pytest.approx(10 ** (-model.score(sentence) / len(scores)), rel=1e-9)


def test_a_string_or_a_list_give_the_same_answers(model):
    """Exactly the same: a sentence's scores do not depend on the sentences beside it."""
    sentences = ["First Citizen:", "You are all resolved rather to die than to famish ?", "", "Speak , speak ."]
    listed = model.score(sentences)
    assert listed == [model.score(s) for s in sentences]
    assert model.perplexity(sentences) == [model.perplexity(s) for s in sentences]
    assert model.full_scores(sentences) == [model.full_scores(s) for s in sentences]
    assert model.score(tuple(sentences)) == listed
    assert model.score(sentences[::-1]) == listed[::-1]


def test_empty_sentence_is_its_boundary_alone(model, tok):
    eos = tok["<eos>"]
    assert model.score("") == pytest.approx(float(model.log_probs([[eos]], bos=eos)[0][0]) / math.log(10), rel=1e-6)
    assert len(model.full_scores("")) == 1
    with pytest.raises(ValueError, match=r"sentences\[1\] .* has no token to score: it is empty"):
        model.score(["Citizen", ""], eos=False)


def test_unknown_words_are_flagged(model, tok):
    known = tok.id_to_token(5)
    scores = model.full_scores(f"{known} qwertyuiop {known}")
    assert [unknown for _, unknown in scores] == [False, True, False, False]


def test_without_a_boundary_token(tok):
    words = fastlm.Tokenizer.fit(TEXT, level="word")  # no eos
    model = make(words)
    with pytest.raises(ValueError, match="bos=True needs a sentence-boundary token"):
        model.score("First Citizen:")
    assert model.score("First Citizen:", bos=False, eos=False) == pytest.approx(
        float(model.log_probs([words.encode("First Citizen:")])[0].astype(np.float64).sum()) / math.log(10), rel=1e-6
    )
    chars = fastlm.Tokenizer.fit(TEXT, level="char")  # the newline is the boundary
    char_model = make(chars)
    newline = chars["\n"]
    ids = chars.encode("Citizen")
    expected = char_model.log_probs([np.append(ids, newline)], bos=newline)[0].astype(np.float64).sum()
    assert char_model.score("Citizen") == pytest.approx(expected / math.log(10), rel=1e-6)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: m.score(b"bytes"), TypeError, "sentences must be a str or a list of str"),
        (lambda m: m.score(["ok", 3]), TypeError, r"sentences\[1\] must be a str"),
        (lambda m: m.score("ok", bos=1), TypeError, "bos must be True or False"),
        (lambda m: m.score("ok", bos=False, eos=False), ValueError, "first token is context only"),
    ],
)
def test_score_bad_input(model, call, error, message):
    with pytest.raises(error, match=message):
        call(model)


def test_score_needs_a_tokenizer():
    with pytest.raises(ValueError, match="no tokenizer attached"):
        fastlm.LSTMLM(10, 4, 4).score("a b")


# ------------------------------------------------------------------ evaluate


def macro_reference(targets, predictions):
    labels = np.union1d(targets, predictions)
    p, r, f = [], [], []
    for c in labels:
        tp = np.sum((predictions == c) & (targets == c))
        precision = tp / np.sum(predictions == c) if np.any(predictions == c) else 0.0
        recall = tp / np.sum(targets == c) if np.any(targets == c) else 0.0
        p.append(precision)
        r.append(recall)
        f.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return np.mean(p), np.mean(r), np.mean(f)


def test_evaluate_short_text_does_not_depend_on_the_batch_size(model, tok):
    ids = tok.encode("First Citizen: Before we proceed")  # 6 words and eos
    results = [model.evaluate(ids, batch_size=b, seq_len=s) for b in (1, 32) for s in (100, 2)]
    for r in results:
        assert r["tokens"] == len(ids) - 1
        assert r["perplexity"] == pytest.approx(results[0]["perplexity"], rel=1e-5)
    lp = model.log_probs([ids])[0].astype(np.float64)
    assert results[0]["loss"] == pytest.approx(-lp.mean(), rel=1e-5)


def test_evaluate_metrics_against_their_definitions(model, twin, tok):
    ids = tok.encode(TEXT[:3000])
    result = model.evaluate(ids, seq_len=37, batch_size=8, top_k=3)
    ref = twin.evaluate(ids, seq_len=37, batch_size=8, top_k=3)
    assert result["tokens"] == len(ids) - 1
    p = model.state_dict()
    rows, _, _ = model._lstm_forward(ids[None, :-1].astype(np.int32), None, None)
    logits = rows.astype(np.float64) @ p["decoder.weight"].T.astype(np.float64) + p["decoder.bias"]
    targets = ids[1:]
    predictions = logits.argmax(axis=1)
    target_logit = logits[np.arange(len(targets)), targets]
    assert result["accuracy"] == pytest.approx(np.mean(predictions == targets), abs=2 / len(targets))
    assert result["top_k"] == 3
    assert result["top_k_accuracy"] == pytest.approx(
        np.mean((logits > target_logit[:, None]).sum(1) < 3), abs=2 / len(targets)
    )
    for name, value in zip(("precision", "recall", "f1"), macro_reference(targets, predictions)):
        assert result[name] == pytest.approx(value, abs=0.02), name
        assert result[name] == pytest.approx(ref[name], abs=0.02), name
    assert 0 <= result["f1"] <= 1 and result["top_k_accuracy"] >= result["accuracy"]


def test_evaluate_windows_and_adaptive(tok):
    adaptive = fastlm.LSTMLM(len(tok), 8, 16, 1, cutoffs=[20, 100], div_value=2.0, seed=2)
    ids = tok.encode(TEXT[:1500])
    result = adaptive.evaluate(ids, top_k=5)
    lp = adaptive.log_probs([ids])[0].astype(np.float64)
    assert result["loss"] == pytest.approx(-lp.mean(), rel=1e-5)
    x, y = fastlm.windows(ids, 10, 10)
    windows = adaptive.evaluate(x, y, batch_size=4)
    assert windows["tokens"] == x.size and windows["loss"] == pytest.approx(adaptive.gradients(x, y)[0], rel=1e-5)


def test_evaluate_bad_top_k(model, tok):
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        model.evaluate(tok.encode(TEXT[:200]), top_k=0)


def test_evaluate_is_one_stream_in_long_pieces(model, tok, monkeypatch):
    """The text goes to C++ in pieces with the state carried: the pieces' size changes no
    score, and the result is log_probs' of the whole text as one sequence."""
    ids = tok.encode(TEXT)
    whole = model.evaluate(ids, top_k=3)
    lp = model.log_probs([ids])[0].astype(np.float64)
    assert whole["tokens"] == len(ids) - 1 == lp.size
    assert whole["loss"] == pytest.approx(-lp.mean(), rel=1e-12)  # the same float32 scores, summed in float64
    monkeypatch.setattr(fastlm.scoring, "TEXT_CALL_ROWS", 7)  # many short pieces
    assert model.evaluate(ids, top_k=3, batch_size=3, seq_len=5) == pytest.approx(whole, rel=1e-12)


def test_one_stream_in_pieces_of_any_size_is_bit_identical(model):
    """One stream scored in calls of 1, 2, 3, 9 and 17 steps, each from the state the last
    returned, gives one call's scores and final state to the bit: a row's arithmetic does
    not depend on how many rows its call has (sgemm_packed runs an edge tile of one or two
    rows with two k-chains; scoring's input projection must not)."""
    p = model.state_dict()
    rng = np.random.default_rng(5)
    text = rng.integers(0, model.vocab_size, (1, 81)).astype(np.int32)
    x, y = text[:, :-1], text[:, 1:]
    whole = fastlm._core.score_streams(p, 2, x, y)
    for size in (1, 2, 3, 9, 17):
        state, pieces = (), []
        for t0 in range(0, x.shape[1], size):
            *scores, h, c = fastlm._core.score_streams(p, 2, x[:, t0 : t0 + size], y[:, t0 : t0 + size], *state)
            pieces.append(scores)
            state = (h, c)
        for k in range(3):  # log_probs, predictions, ranks
            np.testing.assert_array_equal(np.concatenate([s[k] for s in pieces], axis=1), whole[k])
        np.testing.assert_array_equal(state[0], whole[3])
        np.testing.assert_array_equal(state[1], whole[4])


def test_score_streams_continues_from_the_state_it_returns(model, twin):
    """Two calls, the second from the first's final state, give what one call gives; the C++
    op and its NumPy twin agree; one stream from zero is score_sequences' sequence."""
    p = model.state_dict()
    rng = np.random.default_rng(3)
    text = rng.integers(0, model.vocab_size, (3, 51)).astype(np.int32)
    x, y = text[:, :-1], text[:, 1:]
    for ops in (fastlm._core, fastlm.reference):
        lp, pred, rank, h, c = ops.score_streams(p, 2, x, y)
        lp1, pred1, rank1, h1, c1 = ops.score_streams(p, 2, x[:, :20], y[:, :20])
        lp2, pred2, rank2, h2, c2 = ops.score_streams(p, 2, x[:, 20:], y[:, 20:], h1, c1)
        np.testing.assert_allclose(np.concatenate([lp1, lp2], axis=1), lp, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h2, h, atol=1e-6)
        np.testing.assert_allclose(c2, c, atol=1e-6)
        assert np.mean(np.concatenate([pred1, pred2], axis=1) == pred) > 0.99
    one = fastlm._core.score_streams(p, 2, x[:1], y[:1])[0][0]
    np.testing.assert_array_equal(one, model.log_probs([text[0]])[0])  # bit-identical: the same kernel, row for row
    twin_lp = fastlm.reference.score_streams(p, 2, x, y)[0]
    np.testing.assert_allclose(fastlm._core.score_streams(p, 2, x, y)[0], twin_lp, rtol=1e-5, atol=1e-5)


def test_evaluate_with_streams_is_pytorch_style(model, tok):
    """streams=N: N contiguous streams, each from a zero state, every token scored (the
    remainder continues the last stream); streams=1 is the exact reading."""
    ids = tok.encode(TEXT[:3000])
    n = len(ids) - 1
    exact = model.evaluate(ids)
    assert model.evaluate(ids, streams=1) == exact
    for streams in (2, 7):
        result = model.evaluate(ids, streams=streams)
        length = n // streams
        parts = [ids[r * length : (r + 1) * length + 1] for r in range(streams - 1)]
        parts.append(ids[(streams - 1) * length :])  # the last stream, with the remainder
        lp = np.concatenate(model.log_probs(parts)).astype(np.float64)
        assert result["tokens"] == n == lp.size
        assert result["loss"] == pytest.approx(-lp.mean(), rel=1e-6)
        assert result["loss"] != pytest.approx(exact["loss"], rel=1e-9)  # the streams' starts lose context
    short = model.evaluate(ids[:4], streams=10)  # more streams than tokens: one token each
    assert short["tokens"] == 3
    with pytest.raises(ValueError, match="streams must be a positive integer, got 0"):
        model.evaluate(ids, streams=0)
    with pytest.raises(TypeError, match="streams must be an integer or None, got 2.0"):
        model.evaluate(ids, streams=2.0)
    x, y = fastlm.windows(ids, 10, 10)
    with pytest.raises(ValueError, match="streams applies to a 1-D text"):
        model.evaluate(x, y, streams=2)


CTRL_C_CHILD = r"""
import os, signal, sys, threading, time
import numpy as np
import fastlm
signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (nohup &)
model = fastlm.LSTMLM(2000, 32, 256, num_layers=2, seed=0)
ids = np.random.default_rng(0).integers(0, 2000, 3_000_000).astype(np.int32)  # minutes of scoring
call = {"evaluate": lambda: model.evaluate(ids), "log_probs": lambda: model.log_probs([ids])}[sys.argv[1]]
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
started = time.perf_counter()
try:
    call()
    print("finished")
except KeyboardInterrupt:
    print(f"KeyboardInterrupt {time.perf_counter() - started - 0.5:.3f}")
print("usable", model.evaluate(ids[:100])["tokens"], flush=True)
"""


@pytest.mark.parametrize("call", ["evaluate", "log_probs"])
def test_ctrl_c_stops_a_long_scoring_call(call):
    """Scoring polls Python's signal handlers every few milliseconds: a SIGINT from a timer
    thread half a second into minutes of work raises KeyboardInterrupt, and the model works on."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", CTRL_C_CHILD, call], capture_output=True, text=True, timeout=120)
    lines = out.stdout.split("\n")
    assert lines[0].startswith("KeyboardInterrupt"), out.stdout + out.stderr
    assert float(lines[0].split()[1]) < 10  # generous for a loaded machine; without the poll: minutes
    assert lines[1] == "usable 99", out.stdout + out.stderr


# ------------------------------------------------------------------ streaming


def test_stream_yields_what_generate_draws(model, tok):
    ids = tok.encode("First Citizen:")[:-1]
    for settings in (dict(temperature=0), dict(temperature=1.0, top_k=5), dict(temperature=0.8, top_p=0.9)):
        generated = model.generate(ids, 40, seed=5, **settings)
        streamed = list(model.stream(ids, 40, seed=5, suppress_unk=False, **settings))
        assert streamed == generated.tolist()
        pieces = list(model.stream("First Citizen:", 40, seed=5, **settings))
        assert len(pieces) > 3 and all(isinstance(p, str) and p for p in pieces)
        assert "".join(pieces) == model.generate_text("First Citizen:", 40, seed=5, **settings)


def test_stream_matches_the_numpy_twin(model, twin):
    a = list(model.stream(np.array([3, 1, 4]), 30, temperature=1.0, seed=9, suppress_unk=False))
    b = list(twin.stream(np.array([3, 1, 4]), 30, temperature=1.0, seed=9, suppress_unk=False))
    assert a == b


def test_stop_strings_and_ids(model, tok):
    full = model.generate_text("First Citizen:", 60, seed=2, suppress_unk=False)
    words = full.split()
    stop_word = words[len(words) // 2]
    cut = full[: full.find(stop_word)]
    assert model.generate_text("First Citizen:", 60, seed=2, stop=stop_word, suppress_unk=False) == cut
    assert "".join(model.stream("First Citizen:", 60, seed=2, stop=[stop_word, "zzzz"], suppress_unk=False)) == cut
    assert model.generate_text("First Citizen:", 60, seed=2, stop="not in the text at all") == model.generate_text(
        "First Citizen:", 60, seed=2
    )
    ids = model.generate(np.array([3, 1]), 50, seed=4)
    stop_id = int(ids[20])
    first = int(np.flatnonzero(ids == stop_id)[0])
    np.testing.assert_array_equal(model.generate(np.array([3, 1]), 50, seed=4, stop=stop_id), ids[:first])
    rows = model.generate(np.array([3, 1]), 50, seed=4, num_samples=3, stop=[stop_id])
    assert isinstance(rows, list) and len(rows) == 3
    np.testing.assert_array_equal(rows[0], ids[:first])


@pytest.mark.parametrize(
    "stop, error, message",
    [
        ([], ValueError, "stop is an empty list"),
        ("", ValueError, "stop holds an empty string"),
        (["a", ""], ValueError, "stop holds an empty string"),
        ([1.5], TypeError, "stop must hold str or int"),
        ([-1], ValueError, r"stop holds the token id -1, outside the vocabulary \[0, "),
        ([10**6], ValueError, "stop holds the token id 1000000, outside the vocabulary"),
    ],
)
def test_stop_bad_input(model, stop, error, message):
    with pytest.raises(error, match=message):
        model.generate_text("First", 5, seed=0, stop=stop)
    with pytest.raises(error, match=message):  # at the call, not at the first piece
        model.stream("First", 5, seed=0, stop=stop)
    if not isinstance(stop, str) and not any(isinstance(item, str) for item in stop):
        with pytest.raises(error, match=message):
            model.generate(np.array([3, 1]), 5, seed=0, stop=stop)


def test_stop_strings_need_text(model):
    with pytest.raises(TypeError, match="stop strings need text output"):
        model.generate(np.array([1, 2]), 5, stop="x")


def test_abandoned_stream_leaves_the_model_usable(model):
    expected = model.generate_text("First", 20, seed=1)
    for _ in range(50):
        pieces = model.stream("First", 10**6, seed=1)
        next(pieces)
        pieces.close()
        del pieces
    assert model.generate_text("First", 20, seed=1) == expected


def test_suppress_unk(tok):
    model = make(tok, seed=3)
    state = model.state_dict()
    state["decoder.bias"][tok.unk_id] = 30.0  # <unk> is by far the likeliest token
    model.load_state_dict(state)
    ids = np.array([5, 6])
    assert np.all(model.generate(ids, 30, temperature=0) == tok.unk_id)
    for settings in (
        dict(temperature=0),
        dict(temperature=1.0),
        dict(temperature=1.0, top_k=3),
        dict(temperature=2.0, top_p=0.5),
    ):
        out = model.generate(ids, 60, seed=1, suppress_unk=True, **settings)
        assert not np.any(out == tok.unk_id), settings
    assert "<unk>" not in model.generate_text("First", 60, seed=1)  # the default for text
    with pytest.raises(ValueError, match="suppress_unk=True needs the tokenizer"):
        fastlm.LSTMLM(10, 4, 4).generate(np.array([1]), 3, suppress_unk=True)


def test_next_token_probs(model, twin, tok):
    probs = model.next_token_probs("First Citizen:")
    assert probs.shape == (len(tok),) and probs.dtype == np.float32
    assert float(probs.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(probs, twin.next_token_probs("First Citizen:"), atol=1e-6)
    ids = tok.encode("First Citizen:")[:-1]
    lp = model.log_probs([np.append(ids, t) for t in range(len(tok))])  # every continuation scored
    np.testing.assert_allclose(probs, np.exp([x[-1] for x in lp]), atol=1e-5)
    top = model.next_token_probs("First Citizen:", top_k=4)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert top[0][0] == tok.id_to_token(int(np.argmax(probs)))
    assert model.next_token_probs(ids, top_k=2)[0][0] == int(np.argmax(probs))


@pytest.mark.parametrize("prompt", ["First Citizen:", "First Citizen:\n", "", "First zyzzyva"])
def test_next_token_probs_reads_a_prompt_as_generation_does(model, prompt):
    """The distribution generate_text and stream sample their first token from: after a prompt
    that ends its line, the next line's first token (the tokenizer's eos stays in the context)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probs = model.next_token_probs(prompt)
        ids = model.prompt_ids(prompt)
    assert len(caught) == (2 if "zyzzyva" in prompt else 0)  # both warn of the unknown word
    np.testing.assert_array_equal(probs, model.session(ids).probabilities()[0])
    if prompt.endswith("\n"):
        assert ids[-1] == model.tokenizer["<eos>"]
        assert not np.array_equal(probs, model.next_token_probs(prompt.rstrip("\n")))


# ------------------------------------------------------------------ threads


def test_eight_threads_get_what_they_would_get_alone(model, tok, restore_threads):
    ids = tok.encode(TEXT[:1500])
    seqs = sequences(model.vocab_size, [5, 40, 12, 1, 30], seed=8)
    calls = {
        "generate": lambda k: model.generate(ids[:5], 60, temperature=1.0, seed=k).tolist(),
        "stream": lambda k: "".join(model.stream("First Citizen:", 40, seed=k)),
        "evaluate": lambda k: model.evaluate(ids[: 500 + 50 * k], seq_len=33)["loss"],
        "log_probs": lambda k: [lp.tolist() for lp in model.log_probs(seqs[k % 5 :], bos=k)],
        "score": lambda k: model.score(["First Citizen:", "We are accounted poor citizens"][k % 2 :]),
    }
    jobs = [(name, k) for name in calls for k in range(8)]
    serial = {job: calls[job[0]](job[1]) for job in jobs}
    results, errors = {}, []

    def worker(part):
        try:
            for job in part:
                results[job] = calls[job[0]](job[1])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    fastlm.set_num_threads(2)
    threads = [threading.Thread(target=worker, args=(jobs[t::8],)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == serial


def test_another_python_thread_runs_during_a_long_generate(model):
    """generate releases the GIL: this thread runs Python code while another is inside it.

    With a switch interval far longer than the test, the interpreter never takes the GIL from
    a thread that holds it: this thread, waiting for the GIL after start(), gets it only when
    the generating thread releases it, which it does in the kernel (or when it ends). What this
    thread then sees of the other's progress is decided by where the GIL is released, not by
    timing; the generation is long (about 0.1 s) so that being woken takes far less."""
    progress = []

    def generating():
        progress.append("in generate")
        model.generate(np.array([1, 2]), 20000, seed=0)
        progress.append("returned")

    thread = threading.Thread(target=generating)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        thread.start()
        seen = list(progress)
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert seen == ["in generate"]
    assert progress == ["in generate", "returned"]


def test_fit_while_others_read_gives_them_the_weights_before_fit(tok):
    model = make(tok, seed=5, layers=1)
    ids = tok.encode(TEXT)
    before_score = model.score(["First Citizen:", "Speak , speak ."])
    before_generate = model.generate(ids[:3], 30, seed=1).tolist()
    state_before = model.state_dict()
    results, errors = [], []
    training = threading.Event()

    def reader():
        training.wait()
        try:
            for _ in range(20):
                results.append(
                    (model.score(["First Citizen:", "Speak , speak ."]), model.generate(ids[:3], 30, seed=1).tolist())
                )
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()

    def callback(history):
        """Epoch 1's end starts the readers; the last epoch's waits for them, so that all their
        reads happen while this fit is in progress (after it returns, they would see its result)."""
        training.set()
        if len(history["epoch"]) == 2:
            for t in threads:
                t.join()

    model.fit(ids, seq_len=20, batch_size=8, epochs=2, lr=1e-2, progress=False, callback=callback)
    for t in threads:
        t.join()
    assert not errors, errors
    assert results and all(r == (before_score, before_generate) for r in results)
    assert model.score("First Citizen:") != before_score[0]  # fit did train, and its result is in place
    assert any(not np.array_equal(state_before[k], v) for k, v in model.state_dict().items())


def test_two_fits_at_once_are_refused(tok):
    model = make(tok, seed=6, layers=1)
    ids = tok.encode(TEXT)
    caught = []

    def callback(history):
        try:
            threading_fit = threading.Thread(target=lambda: caught.append(_second_fit(model, ids)))
            threading_fit.start()
            threading_fit.join()
        finally:
            pass

    model.fit(ids, seq_len=20, batch_size=8, epochs=1, progress=False, callback=callback)
    assert caught == ["fit is already running on this model in another thread: one fit at a time"]


def _second_fit(model, ids):
    try:
        model.fit(ids, seq_len=20, batch_size=8, epochs=1, progress=False)
    except RuntimeError as error:
        return str(error)
    return "no error"
