"""LSTMLM.fit and LSTMLM.evaluate: learning, batching, options, exact resume, Ctrl-C, bad input.

Tiny models (V ~ 50 characters, E = 8-16, H = 16-32) on slices of tinyshakespeare keep
the whole file to a few seconds. Exact resume is checked bit for bit (np.array_equal on
every weight) with the thread count pinned, as the contract promises it only for the same
seed and thread count.
"""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
from helpers import BATCH, SEQ, assert_same_weights, quiet_fit, same_weights, tiny_model
from safetensors.numpy import load_file

import fastlm
from fastlm import model_dir, training

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def text():
    return fastlm.datasets.tinyshakespeare()[:12000]


@pytest.fixture(scope="module")
def tok(text):
    return fastlm.Tokenizer.fit(text, level="char")


@pytest.fixture(scope="module")
def ids(text, tok):
    return tok.encode(text[:2000])  # 2000 tokens: 124 windows of 16, 16 batches of 8


def record_batches(model):
    """Wrap model.forward_backward to record (x, y, initial_state, final_state) of every training batch."""
    calls = []
    original = model.forward_backward

    def wrapped(x, y, initial_state=None, train=False, rng=None, **options):
        loss, grads, final = original(x, y, initial_state=initial_state, train=train, rng=rng, **options)
        calls.append((x.copy(), y.copy(), initial_state, final))
        return loss, grads, final

    model.forward_backward = wrapped
    return calls


# ================================================================= learning


def test_fit_reduces_loss(text, tok):
    train, val = tok.encode(text[:10000]), tok.encode(text[10000:])
    model = tiny_model(tok, embed_dim=16, hidden_size=32)
    history = model.fit(train, seq_len=32, batch_size=16, epochs=4, lr=1e-2, val_ids=val, progress=False)
    log_v = math.log(len(tok))
    assert history["loss"][-1] < history["loss"][0] - 0.3
    assert history["val_loss"][-1] < history["val_loss"][0] - 0.3
    assert history["val_loss"][-1] < log_v - 1.0, (history["val_loss"], log_v)
    result = model.evaluate(val, seq_len=32, batch_size=16)
    assert result["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-12)


def test_history_keys_and_lengths(tok, ids):
    model = tiny_model(tok)
    history = quiet_fit(model, ids[:1500], epochs=3, lr=1e-2, val_ids=ids[1500:])
    assert set(history) == {"epoch", "loss", "val_loss", "val_perplexity", "tokens_per_s", "lr"}
    assert history["epoch"] == [1, 2, 3]
    for key in ("loss", "val_loss", "val_perplexity", "tokens_per_s", "lr"):
        assert len(history[key]) == 3, key
    for loss, ppl in zip(history["val_loss"], history["val_perplexity"]):
        assert ppl == pytest.approx(math.exp(loss), rel=1e-12)
    assert all(t > 0 for t in history["tokens_per_s"])
    assert history["lr"] == [1e-2] * 3
    json.dumps(history)  # plain Python values

    no_val = quiet_fit(tiny_model(tok), ids, epochs=2)
    assert no_val["val_loss"] == [None, None] and no_val["val_perplexity"] == [None, None]


def test_fit_on_windows_equals_fit_on_ids(tok, ids):
    """fit(x, y) on fastlm.windows draws the same batches as fit(ids) with the same stride."""
    for stride in (None, 5):
        x, y = fastlm.windows(ids, seq_len=SEQ, stride=stride or SEQ)
        assert np.array_equal(x[:, 1:], y[:, :-1])
        a, b = tiny_model(tok), tiny_model(tok)
        ha = quiet_fit(a, ids, epochs=2, stride=stride)
        hb = quiet_fit(b, x, y, epochs=2)
        assert_same_weights(a, b)
        assert ha["loss"] == hb["loss"]


def test_fit_on_windows_learns(tok, ids):
    x, y = fastlm.windows(ids, seq_len=SEQ, stride=4)
    model = tiny_model(tok)
    before = model.evaluate(x, y)["loss"]
    history = model.fit(x, y, batch_size=16, epochs=2, lr=1e-2, progress=False)
    assert len(history["loss"]) == 2
    assert model.evaluate(x, y)["loss"] < before - 0.3


def test_stride_window_counts(tok, ids):
    n = len(ids)
    overlapping, _ = fastlm.windows(ids, seq_len=SEQ, stride=1)
    disjoint, _ = fastlm.windows(ids, seq_len=SEQ, stride=SEQ)
    assert len(overlapping) == n - SEQ
    assert len(disjoint) == (n - SEQ - 1) // SEQ + 1
    for stride, expected in ((1, overlapping), (None, disjoint), (SEQ, disjoint), (7, fastlm.windows(ids, SEQ, 7)[0])):
        model = tiny_model(tok)
        calls = record_batches(model)
        quiet_fit(model, ids, epochs=1, stride=stride, batch_size=64, shuffle=False)
        x = np.concatenate([c[0] for c in calls])
        y = np.concatenate([c[1] for c in calls])
        step = stride or SEQ
        count = (n - SEQ - 1) // step + 1
        assert len(x) == count and len(calls) == -(-count // 64)
        starts = np.arange(count) * step
        assert np.array_equal(x, ids[starts[:, None] + np.arange(SEQ)])
        assert np.array_equal(y, ids[starts[:, None] + np.arange(1, SEQ + 1)])
        assert np.array_equal(x, expected)  # the same windows as fastlm.windows


def test_how_often_each_token_is_a_target_per_epoch(tok, ids):
    """What README and fit's docstring say about stride: every window predicts all its positions,
    so stride=None makes each token a target once per epoch, stride=1 up to seq_len times."""
    ids = ids[:2000]
    for stride, interior in ((None, 1), (1, SEQ)):
        model = tiny_model(tok)
        calls = record_batches(model)
        quiet_fit(model, ids, epochs=1, stride=stride, batch_size=64, shuffle=False)
        y = np.concatenate([c[1] for c in calls])
        step = stride or SEQ
        times = np.zeros(len(ids), dtype=np.int64)  # how often each corpus position was a target
        for k, row in enumerate(y):
            start = k * step  # in order: shuffle=False
            assert np.array_equal(row, ids[start + 1 : start + SEQ + 1])  # all SEQ positions predicted
            times[start + 1 : start + SEQ + 1] += 1
        assert times.sum() == y.size == len(y) * SEQ
        covered = times[SEQ : len(y) * step]  # away from both ends of the corpus
        assert covered.min() == covered.max() == interior


def test_shuffle_is_seeded_per_epoch(tok, ids):
    model = tiny_model(tok)
    calls = record_batches(model)
    quiet_fit(model, ids, epochs=2)
    per_epoch = len(calls) // 2
    first, second = calls[0][0], calls[per_epoch][0]
    assert not np.array_equal(first, second)  # a new order every epoch
    again = tiny_model(tok)
    calls_again = record_batches(again)
    quiet_fit(again, ids, epochs=2)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(calls, calls_again))  # the same seeded orders

    ordered = tiny_model(tok)
    calls_ordered = record_batches(ordered)
    quiet_fit(ordered, ids, epochs=1, shuffle=False)
    assert np.array_equal(calls_ordered[0][0][0], ids[:SEQ])


def test_stateful_carries_state(tok, ids):
    model = tiny_model(tok, num_layers=2)
    calls = record_batches(model)
    quiet_fit(model, ids, epochs=2, stateful=True, seq_len=10, batch_size=4)
    per_epoch = len(calls) // 2
    assert per_epoch == -(-((len(ids) - 1) // 4) // 10)
    for epoch in range(2):
        epoch_calls = calls[epoch * per_epoch : (epoch + 1) * per_epoch]
        assert epoch_calls[0][2] is None  # every epoch starts from the zero state
        for (_, y0, _, final), (x1, _, initial, _) in zip(epoch_calls, epoch_calls[1:]):
            assert np.array_equal(x1[:, 0], y0[:, -1])  # each row continues its stream
            assert len(initial) == 2
            for (h, c), (h_prev, c_prev) in zip(initial, final):
                assert np.array_equal(h, h_prev) and np.array_equal(c, c_prev)
                assert np.any(h != 0)
    plain = tiny_model(tok, num_layers=2)
    quiet_fit(plain, ids, epochs=2, stateful=False, seq_len=10, batch_size=4)
    assert not same_weights(model, plain)


def test_stateful_differs_from_zero_state_on_same_batches(tok, ids, monkeypatch):
    """Carrying the state changes training compared with the same contiguous batches from zero."""
    a = tiny_model(tok)
    quiet_fit(a, ids, epochs=1, stateful=True, seq_len=10, batch_size=4)
    b = tiny_model(tok)
    original = b.forward_backward
    b.forward_backward = lambda x, y, initial_state=None, **kw: original(x, y, None, **kw)
    quiet_fit(b, ids, epochs=1, stateful=True, seq_len=10, batch_size=4)
    assert not same_weights(a, b)


def test_dropout_changes_training_and_is_deterministic(tok, ids):
    runs = {}
    for dropout in (0.0, 0.3, 0.3):
        model = tiny_model(tok, num_layers=2, dropout=dropout)
        history = quiet_fit(model, ids, epochs=1)
        runs.setdefault(dropout, []).append((model, history))
    ((no_drop, h0),) = runs[0.0]
    (first, h1), (second, h2) = runs[0.3]
    assert not same_weights(no_drop, first)
    assert h0["loss"] != h1["loss"]
    assert_same_weights(first, second)
    assert h1["loss"] == h2["loss"]
    # evaluation runs without dropout: deterministic and equal to the backward-free loss
    x, y = fastlm.windows(ids[:200], SEQ, SEQ)
    assert first.evaluate(x, y)["loss"] == first.evaluate(x, y)["loss"]


def test_clip_norm_bounds_gradients(tok, ids, monkeypatch):
    norms = []
    original = training.Adam.step

    def step(self, ops, params, grads):
        # the embedding's gradient in row form: its rows' values hold all of its squares
        arrays = [g[1] if isinstance(g, tuple) else g for g in grads.values()]
        norms.append(math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in arrays)))
        return original(self, ops, params, grads)

    monkeypatch.setattr(training.Adam, "step", step)
    clipped = tiny_model(tok)
    quiet_fit(clipped, ids, epochs=1, clip_norm=0.05)
    assert max(norms) <= 0.05 * (1 + 1e-5)
    assert min(norms) == pytest.approx(0.05, rel=1e-4)  # every raw gradient is far above 0.05
    norms.clear()
    unclipped = tiny_model(tok)
    quiet_fit(unclipped, ids, epochs=1)
    assert max(norms) > 0.05
    assert not same_weights(clipped, unclipped)
    loose = tiny_model(tok)
    quiet_fit(loose, ids, epochs=1, clip_norm=1e9)  # a bound never reached changes nothing
    assert_same_weights(loose, unclipped)


def _bits(state):
    """Every array's bit patterns (np.array_equal counts -0.0 equal to 0.0)."""
    return {name: np.ascontiguousarray(a).view(np.uint8).tobytes() for name, a in state.items()}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(clip_norm=0.05),
        dict(clip_norm=1e9, weight_decay=0.01),
        dict(stateful=True, clip_norm=0.2),
        dict(optimizer="sgd", lr=0.5),
        dict(optimizer="sgd", lr=0.5, clip_norm=0.05),
        dict(optimizer="sgd", lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.01, clip_norm=0.05),
        dict(optimizer="sgd", lr=0.5, momentum=0.9, clip_norm=1e9),
    ],
    ids=[
        "adam",
        "adam-clipped",
        "adam-unclipped-weight-decay",
        "adam-stateful-clipped",
        "sgd",
        "sgd-clipped",
        "sgd-nesterov-weight-decay-clipped",
        "sgd-momentum-unclipped",
    ],
)
def test_the_embedding_rows_step_is_the_dense_gradient_step(options, threads, tmp_path, monkeypatch, restore_threads):
    """fit hands the optimizer the embedding's gradient in row form (the rows a batch used,
    summed as embedding_backward sums them) instead of the dense V x E gradient: the weights,
    Adam's moments or SGD's buffers and the checkpoint are those of the dense path, to the bit.
    V = 300 on Zipf ids, so that each batch of 128 tokens leaves most rows without a gradient."""
    fastlm.set_num_threads(threads)
    data = (np.random.default_rng(3).zipf(1.2, 1500) % 300).astype(np.int32)
    chosen = []
    original = training._embedding_rows
    monkeypatch.setattr(training, "_embedding_rows", lambda *a: chosen.append(original(*a)) or chosen[-1])
    results = {}
    for path in ("rows", "dense"):
        if path == "dense":
            monkeypatch.setattr(training, "_embedding_rows", lambda *a: False)
        model = fastlm.LSTMLM(300, 8, 16, 1, seed=1)
        quiet_fit(model, data, epochs=2, checkpoint_dir=tmp_path / path, **{"lr": 1e-2, **options})
        arrays, _ = model_dir.load_training_state(tmp_path / path)
        results[path] = (_bits(model.state_dict()), _bits(arrays))
    assert chosen == [True]
    assert results["rows"][0] == results["dense"][0]
    assert results["rows"][1] == results["dense"][1]


@pytest.mark.parametrize("clip_norm", [None, 0.05])
def test_sgd_skips_rows_without_gradient_until_a_callback_may_have_written_them(clip_norm, monkeypatch):
    """Plain SGD leaves the embedding rows without gradient unread once its own steps have
    written every row (skip_absent_rows), and walks them all again after a callback, which may
    have written the weights: a subnormal that an epoch's callback writes into rows no batch
    uses is flushed by the next step exactly as the dense gradient's step flushes it, and the
    weights equal the dense path's to the bit."""
    data = (np.random.default_rng(5).zipf(1.2, 1500) % 250).astype(np.int32)  # rows 250-299: no gradient
    op = "sgd_update_rows" if clip_norm is None else "clipped_sgd_update"
    weights, flags = {}, []
    for path in ("rows", "dense"):
        if path == "dense":
            monkeypatch.setattr(training, "_embedding_rows", lambda *a: False)
        model = fastlm.LSTMLM(300, 8, 16, 1, seed=1)
        original = getattr(model.ops, op)

        def spy(*args, skip_absent_rows=False, original=original, path=path, **kwargs):
            flags.append((path, skip_absent_rows))
            return original(*args, skip_absent_rows=skip_absent_rows, **kwargs)

        def plant(history, model=model):
            if history["epoch"][-1] < 3:  # a step follows
                model.params["embedding.weight"][250:, 0] = 1e-40

        monkeypatch.setattr(model.ops, op, spy)
        quiet_fit(model, data, epochs=3, optimizer="sgd", lr=0.5, clip_norm=clip_norm, callback=plant)
        monkeypatch.undo()
        weights[path] = model.state_dict()
        assert not weights[path]["embedding.weight"][250:, 0].any()  # flushed by the step after the callback
    steps_per_epoch = len([f for f in flags if f[0] == "rows"]) // 3
    assert [skip for path, skip in flags if path == "rows"] == 3 * ([False] + [True] * (steps_per_epoch - 1))
    assert not any(skip for path, skip in flags if path == "dense")  # dense: sgd_update, or no row form
    assert_same_weights(weights["rows"], weights["dense"])


@pytest.mark.parametrize(
    "model_options, fit_options, rows",
    [
        (dict(), dict(), True),
        (dict(), dict(sparse_embedding=True), True),
        (dict(tie_weights=True, embed_dim=16), dict(), False),  # the shared matrix's gradient is dense
        (dict(), dict(optimizer="sgd"), True),
        (dict(), dict(optimizer="sgd", momentum=0.9), True),
        (dict(), dict(optimizer="sgd", sparse_embedding=True), True),
    ],
)
def test_where_fit_passes_the_embedding_gradient_in_row_form(tok, ids, monkeypatch, model_options, fit_options, rows):
    seen = []
    model = tiny_model(tok, **model_options)
    original = model.forward_backward

    def spy(*args, sparse_embedding=False, **kwargs):
        seen.append(sparse_embedding)
        return original(*args, sparse_embedding=sparse_embedding, **kwargs)

    model.forward_backward = spy
    quiet_fit(model, ids[:300], epochs=1, **fit_options)
    assert seen and set(seen) == {rows}


def test_lr_decay_and_early_stopping_on_plateau(tok, ids):
    model = tiny_model(tok)
    val_losses = iter([2.0, 2.5, 2.5, 2.5, 2.5, 2.5])
    seen = []

    def evaluate(data, y=None, seq_len=100, batch_size=32):
        seen.append(len(data))
        return {"loss": next(val_losses)}

    model.evaluate = evaluate  # a validation loss that never improves after epoch 1
    history = quiet_fit(
        model, ids, epochs=10, lr=1e-3, val_ids=ids[:100], lr_decay=0.5, lr_patience=1, early_stopping=3
    )
    assert history["epoch"] == [1, 2, 3, 4]  # stopped 3 epochs after the best
    assert history["val_loss"] == [2.0, 2.5, 2.5, 2.5]
    assert history["lr"] == [1e-3, 1e-3, 1e-3, 5e-4]  # decayed once patience (1 epoch) ran out, then again
    assert seen == [100] * 4


def test_lr_decay_on_real_plateau(tok, ids):
    """A learning rate too small to move float32 weights: the val loss cannot improve, lr decays."""
    model = tiny_model(tok)
    history = quiet_fit(model, ids[:1000], epochs=3, lr=1e-15, val_ids=ids[1000:1400], lr_decay=0.1, early_stopping=2)
    assert len(history["epoch"]) == 3
    assert history["lr"][0] == 1e-15
    assert history["lr"][2] == pytest.approx(1e-16)
    assert history["val_loss"][1] >= history["val_loss"][0]


# ================================================================= exact resume


def _resume_options(kind):
    if kind == "windows":
        return dict(model=dict(), fit=dict(lr=1e-2))
    if kind == "stateful":
        return dict(
            model=dict(num_layers=2, dropout=0.2),
            fit=dict(lr=1e-2, stateful=True, seq_len=10, batch_size=4, clip_norm=0.5),
        )
    if kind == "overlapping":  # overlapping windows, dropout, validation with plateau rules
        return dict(model=dict(dropout=0.2), fit=dict(lr=1e-2, stride=3, lr_decay=0.5, early_stopping=5))
    if kind == "sgd":  # the recipes: SGD with Nesterov momentum, tied weights, uniform init, the epoch schedule
        return dict(
            model=dict(num_layers=2, embed_dim=16, tie_weights=True, init_range=0.1, dropout=0.2),
            fit=dict(
                lr=1.0,
                optimizer="sgd",
                momentum=0.9,
                nesterov=True,
                stateful=True,
                seq_len=10,
                batch_size=4,
                clip_norm=0.5,
                lr_decay=0.5,
                lr_decay_epoch=2,
            ),
        )
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["windows", "stateful", "overlapping", "sgd"])
@pytest.mark.parametrize("stops", [[1], [5, 13], [9]], ids=["epoch-boundary", "mid-epoch-twice", "mid-epoch"])
def test_exact_resume(tok, ids, tmp_path, kind, stops):
    options = _resume_options(kind)
    data = ids[:1500]
    val = ids[1500:] if kind == "overlapping" else None
    fit_kw = dict(options["fit"], val_ids=val)

    full = tiny_model(tok, **options["model"])
    expected = quiet_fit(full, data, epochs=3, checkpoint_dir=tmp_path / "a", **fit_kw)

    per_epoch = None
    partial = tiny_model(tok, **options["model"])
    for n, stop in enumerate(stops):
        if stops == [1]:  # stop after epoch 1 by asking for one epoch only
            history = quiet_fit(partial, data, epochs=1, checkpoint_dir=tmp_path / "b", **fit_kw)
            assert "interrupted" not in history and len(history["epoch"]) == 1
        else:
            history = quiet_fit(
                partial, data, epochs=3, checkpoint_dir=tmp_path / "b", max_batches=stop, resume=n > 0, **fit_kw
            )
            assert history["interrupted"] is False
        trainer = json.loads((model_dir.save_path(tmp_path / "b") / model_dir.TRAINER_FILE).read_text())
        per_epoch = per_epoch or _batches_per_epoch(full, data, fit_kw)
        done = sum(stops[: n + 1]) if stops != [1] else per_epoch
        assert (trainer["epoch"], trainer["batch"]) == divmod(done, per_epoch)
        partial = tiny_model(tok, **options["model"])  # a fresh process would start from a fresh model
    history = quiet_fit(partial, data, epochs=3, checkpoint_dir=tmp_path / "b", resume=True, **fit_kw)
    assert_same_weights(full, partial)
    assert history["loss"] == expected["loss"]
    assert history["val_loss"] == expected["val_loss"]
    assert history["lr"] == expected["lr"]
    assert "interrupted" not in history
    # the checkpoints themselves agree too, optimizer state included
    for name in (model_dir.MODEL_FILE, model_dir.OPTIMIZER_FILE):
        a = load_file(model_dir.save_path(tmp_path / "a") / name)
        b = load_file(model_dir.save_path(tmp_path / "b") / name)
        assert sorted(a) == sorted(b)
        assert all(np.array_equal(a[k], b[k]) for k in a), name


def _batches_per_epoch(model, data, fit_kw):
    from fastlm.training import _make_batches

    seq_len = fit_kw.get("seq_len", SEQ)
    batch_size = fit_kw.get("batch_size", BATCH)
    stride = fit_kw.get("stride") or seq_len
    batches, _ = _make_batches(model, data, None, seq_len, batch_size, stride, True, fit_kw.get("stateful", False))
    return len(batches)


def test_exact_resume_two_threads(tok, ids, tmp_path, restore_threads):
    fastlm.set_num_threads(2)
    data = ids[:600]  # 37 windows: 5 batches per epoch
    full = tiny_model(tok, hidden_size=32)
    quiet_fit(full, data, epochs=2, lr=1e-2)
    part = tiny_model(tok, hidden_size=32)
    quiet_fit(part, data, epochs=2, lr=1e-2, checkpoint_dir=tmp_path, max_batches=7)
    part = tiny_model(tok, hidden_size=32)
    quiet_fit(part, data, epochs=2, lr=1e-2, checkpoint_dir=tmp_path, resume=True)
    assert_same_weights(full, part)


def test_resume_on_windows_and_extend_epochs(tok, ids, tmp_path):
    x, y = fastlm.windows(ids, SEQ, 4)
    full = tiny_model(tok)
    quiet_fit(full, x, y, epochs=3)
    part = tiny_model(tok)
    quiet_fit(part, x, y, epochs=2, checkpoint_dir=tmp_path, max_batches=20)
    quiet_fit(part, x, y, epochs=2, checkpoint_dir=tmp_path, resume=True)
    done = json.loads((model_dir.save_path(tmp_path) / model_dir.TRAINER_FILE).read_text())
    assert (done["epoch"], done["batch"]) == (2, 0)
    again = quiet_fit(part, x, y, epochs=2, checkpoint_dir=tmp_path, resume=True)  # nothing left to do
    assert len(again["epoch"]) == 2
    quiet_fit(part, x, y, epochs=3, checkpoint_dir=tmp_path, resume=True)  # one more epoch
    assert_same_weights(full, part)


def test_max_batches_at_epoch_end_stops_there(tok, ids, tmp_path):
    per_epoch = -(-((len(ids) - SEQ - 1) // SEQ + 1) // BATCH)
    model = tiny_model(tok)
    calls = record_batches(model)
    history = quiet_fit(model, ids, epochs=3, checkpoint_dir=tmp_path, max_batches=per_epoch)
    assert len(calls) == per_epoch
    assert history["epoch"] == [1] and history["interrupted"] is False
    trainer = json.loads((model_dir.save_path(tmp_path) / model_dir.TRAINER_FILE).read_text())
    assert (trainer["epoch"], trainer["batch"]) == (1, 0)


def test_checkpoint_is_a_loadable_model(tok, ids, tmp_path):
    model = tiny_model(tok)
    quiet_fit(model, ids, epochs=1, checkpoint_dir=tmp_path, tokenizer=tok)
    loaded = fastlm.load(tmp_path)
    assert_same_weights(model, loaded)
    assert loaded.tokenizer == tok
    assert model_dir.load_training_state(tmp_path)[1]["epoch"] == 1


# ================================================================= Ctrl-C


def interrupt_at(model, batch_numbers):
    """Send SIGINT to this process while training batch k (1-based) for each k in batch_numbers."""
    original = model.forward_backward
    count = [0]

    def wrapped(*args, **kw):
        count[0] += 1
        if count[0] in batch_numbers:
            signal.raise_signal(signal.SIGINT)
        return original(*args, **kw)

    model.forward_backward = wrapped
    return count


@pytest.mark.parametrize("at", [6, 16], ids=["mid-epoch", "last-batch-of-epoch"])
def test_ctrl_c_checkpoints_and_resumes_exactly(tok, ids, tmp_path, at):
    full = tiny_model(tok, dropout=0.1)
    quiet_fit(full, ids, epochs=2, lr=1e-2)

    handler = signal.getsignal(signal.SIGINT)
    model = tiny_model(tok, dropout=0.1)
    count = interrupt_at(model, {at})
    with pytest.raises(KeyboardInterrupt) as raised:  # checkpointed, then raised: a script stops there
        quiet_fit(model, ids, epochs=2, lr=1e-2, checkpoint_dir=tmp_path)
    assert raised.value.checkpoint_dir == tmp_path
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handler is back
    assert count[0] == at  # stopped right after the batch during which Ctrl-C came
    trainer = json.loads((model_dir.save_path(tmp_path) / model_dir.TRAINER_FILE).read_text())
    assert (trainer["epoch"], trainer["batch"]) == divmod(at, 16)
    assert_same_weights(model, fastlm.load(tmp_path))  # a valid checkpoint of the state reached

    resumed = tiny_model(tok, dropout=0.1)
    history = quiet_fit(resumed, ids, epochs=2, lr=1e-2, checkpoint_dir=tmp_path, resume=True)
    assert "interrupted" not in history and history["epoch"] == [1, 2]
    assert_same_weights(full, resumed)


def test_ctrl_c_without_checkpoint_dir_raises(tok, ids):
    model = tiny_model(tok)
    before = model.state_dict()
    count = interrupt_at(model, {3})
    with pytest.raises(KeyboardInterrupt) as raised:
        quiet_fit(model, ids, epochs=2)
    assert count[0] == 3 and raised.value.checkpoint_dir is None
    assert raised.value.history["epoch"] == []
    assert any(  # the model holds the weights after the 3 batches trained
        not np.array_equal(before[k], v) for k, v in model.state_dict().items()
    )


def test_second_ctrl_c_raises_keyboard_interrupt(tok, ids, tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    model = tiny_model(tok)
    original = model.forward_backward

    def twice(*args, **kw):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        return original(*args, **kw)

    model.forward_backward = twice
    with pytest.raises(KeyboardInterrupt):
        quiet_fit(model, ids, epochs=1, checkpoint_dir=tmp_path)
    assert signal.getsignal(signal.SIGINT) is handler
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


# ================================================================= bad input


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(epochs=0), "epochs must be a positive integer, got 0"),
        (dict(epochs=-1), "epochs must be a positive integer"),
        (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
        (dict(batch_size=-4), "batch_size must be a positive integer"),
        (dict(seq_len=0), "seq_len must be a positive integer, got 0"),
        (dict(seq_len=-1), "seq_len must be a positive integer"),
        (dict(stride=0), "stride must be a positive integer"),
        (dict(lr=0), "lr must be positive"),
        (dict(lr=-1e-3), "lr must be positive"),
        (dict(lr=float("inf")), "lr must be positive and finite, got inf"),
        (dict(weight_decay=float("inf")), "weight_decay must be a finite number >= 0, got inf"),
        (dict(clip_norm=0), "clip_norm must be positive"),
        (dict(lr_decay=1.5, val_ids=[1, 2, 3]), "lr_decay must lie in"),
        (dict(lr_decay=0.5), "pass val_ids"),
        (dict(early_stopping=2), "pass val_ids"),
        (dict(max_batches=0), "max_batches must be a positive integer"),
        (dict(resume=True, checkpoint_dir=None), "resume=True needs the checkpoint_dir"),
        (dict(val_ids=[1]), "val_ids needs at least 2 tokens"),
        (dict(val_ids=[1, 10_000]), "val_ids holds id 10000"),
        (dict(stateful=True, batch_size=200), "stateful training cuts the corpus"),
        (dict(optimizer="adagrad"), "optimizer must be one of 'adam', 'sgd', got 'adagrad'"),
        (dict(optimizer="sgd", momentum=-0.5), "momentum must be a finite number >= 0, got -0.5"),
        (dict(optimizer="sgd", momentum=float("nan")), "momentum must be a finite number >= 0"),
        (dict(optimizer="sgd", nesterov=True), "nesterov=True needs momentum > 0"),
        (dict(momentum=0.9), "momentum applies to optimizer='sgd'"),
        (dict(lr_decay_epoch=3), "lr_decay_epoch=3 starts the epoch schedule.*pass lr_decay too"),
        (dict(lr_decay_epoch=0, lr_decay=0.5), "lr_decay_epoch must be a positive integer, got 0"),
    ],
)
def test_bad_settings(tok, ids, tmp_path, kw, message):
    model = tiny_model(tok)
    with pytest.raises(ValueError, match=message):
        quiet_fit(model, ids, **{"epochs": 1, "checkpoint_dir": tmp_path / "ck", **kw})
    assert not (tmp_path / "ck").exists()  # nothing written
    assert same_weights(model, tiny_model(tok))  # nothing trained


@pytest.mark.parametrize(
    "data, error, message",
    [
        (np.array([], dtype=np.int32), ValueError, "ids is empty"),
        (np.arange(SEQ) % 5, ValueError, rf"the corpus has {SEQ} tokens; .*seq_len={SEQ}.*at least {SEQ + 1}"),
        (np.array([1, 2, 9999] * 20), ValueError, "ids holds id 9999"),
        (np.array([-1, 2, 3] * 20), ValueError, "ids holds id -1"),
        (np.ones(40, dtype=np.float32), TypeError, "integer token ids"),
        (np.ones((4, SEQ), dtype=np.int32), ValueError, "must be 1-D"),
    ],
)
def test_bad_corpus(tok, tmp_path, data, error, message):
    model = tiny_model(tok)
    with pytest.raises(error, match=message):
        quiet_fit(model, data, epochs=1, checkpoint_dir=tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_corpus_of_exactly_seq_len_plus_one_trains(tok, ids):
    history = quiet_fit(tiny_model(tok), ids[: SEQ + 1], epochs=2)
    assert len(history["loss"]) == 2


def test_bad_windows(tok, ids):
    x, y = fastlm.windows(ids, SEQ, SEQ)
    with pytest.raises(ValueError, match="same shape"):
        quiet_fit(tiny_model(tok), x, y[:, :-1], epochs=1)
    with pytest.raises(ValueError, match="targets holds id"):
        quiet_fit(tiny_model(tok), x, y + 1000, epochs=1)


def test_resume_without_checkpoint(tok, ids, tmp_path):
    model = tiny_model(tok)
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        quiet_fit(model, ids, epochs=1, checkpoint_dir=tmp_path, resume=True)  # empty directory
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        quiet_fit(model, ids, epochs=1, checkpoint_dir=tmp_path / "missing", resume=True)
    assert not (tmp_path / "missing").exists()
    model.save(tmp_path / "plain")  # a model without training state
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        quiet_fit(model, ids, epochs=1, checkpoint_dir=tmp_path / "plain", resume=True)
    assert list(tmp_path.iterdir()) == [tmp_path / "plain"]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(batch_size=4), "batch_size was 8, now 4"),
        (dict(seq_len=12), "seq_len was 16, now 12"),
        (dict(stateful=True), "stateful was False, now True"),
        (dict(clip_norm=1.0), "clip_norm was None, now 1.0"),
        (dict(data="shorter"), "data_tokens was"),
        (dict(optimizer="sgd"), "optimizer was 'adam', now 'sgd'"),
        (dict(lr=0.5), "lr was 0.001, now 0.5"),
    ],
)
def test_resume_with_changed_settings(tok, ids, tmp_path, change, message):
    quiet_fit(tiny_model(tok), ids, epochs=2, checkpoint_dir=tmp_path, max_batches=3)
    saved = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    change = dict(change)
    data = ids[:-100] if change.pop("data", None) else ids
    with pytest.raises(ValueError, match=f"cannot resume with different training settings: .*{message}"):
        quiet_fit(tiny_model(tok), data, epochs=2, checkpoint_dir=tmp_path, resume=True, **change)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == saved  # the checkpoint is untouched


def test_resume_with_a_different_model(tok, ids, tmp_path):
    quiet_fit(tiny_model(tok), ids, epochs=2, checkpoint_dir=tmp_path, max_batches=3)
    with pytest.raises(ValueError, match="different model: hidden_size was 16, now 32"):
        quiet_fit(tiny_model(tok, hidden_size=32), ids, epochs=2, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="seed was 1, now 2"):
        quiet_fit(tiny_model(tok, seed=2), ids, epochs=2, checkpoint_dir=tmp_path, resume=True)


def test_divergence_raises_clearly(tok, ids, tmp_path):
    model = tiny_model(tok)
    with pytest.raises(
        FloatingPointError, match=r"training diverged: the loss is (nan|inf).*lower lr or set clip_norm"
    ):
        quiet_fit(model, ids, epochs=1, lr=1e38, checkpoint_dir=tmp_path / "ck")
    assert not (tmp_path / "ck").exists()  # no checkpoint of a diverged model


# ================================================================= progress bar


def test_progress_bar(tok, ids, capsys):
    quiet_fit(tiny_model(tok), ids, epochs=2, progress=True, val_ids=ids[:200])
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err
    assert "loss=" in err and "ppl=" in err and "tok_s=" in err
    quiet_fit(tiny_model(tok), ids, epochs=1, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# ================================================================= evaluate


@pytest.fixture(scope="module")
def trained(text, tok):
    model = tiny_model(tok, num_layers=2, hidden_size=32)
    quiet_fit(model, tok.encode(text[:10000]), epochs=3, lr=1e-2)
    return model


def test_evaluate_metrics_consistent(trained, ids):
    result = trained.evaluate(ids, seq_len=SEQ, batch_size=BATCH)
    assert set(result) >= {"loss", "perplexity", "accuracy", "bits_per_token"}
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    assert result["bits_per_token"] == pytest.approx(result["loss"] / math.log(2), rel=1e-12)
    assert 0.0 < result["accuracy"] < 1.0
    assert result["loss"] < math.log(trained.vocab_size)
    assert result["tokens"] == len(ids) - 1  # every token after the first, whatever the batch size


def test_evaluate_equal_between_backends(trained, ids):
    twin = fastlm.LSTMLM(**trained.config(), backend="numpy")
    twin.load_state_dict(trained.state_dict())
    for args in ((ids[:600],), fastlm.windows(ids[:600], SEQ, 7)):
        a = trained.evaluate(*args, seq_len=SEQ, batch_size=BATCH)
        b = twin.evaluate(*args, seq_len=SEQ, batch_size=BATCH)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=2 / a["tokens"])  # a near-tie may flip
        assert a["tokens"] == b["tokens"]


def test_evaluate_windows_equals_gradients_loss(trained, ids):
    x, y = fastlm.windows(ids, SEQ, 5)
    result = trained.evaluate(x, y, batch_size=len(x))
    # The forward-only kernel reduces the logits block by block (online log-sum-exp), the
    # training kernel row by row: the same loss up to float32 summation order.
    assert result["loss"] == pytest.approx(trained.gradients(x, y)[0], rel=1e-6)
    assert result["tokens"] == x.size
    # in smaller batches: exactly the token-weighted mean of the batch losses
    chunked = trained.evaluate(x, y, batch_size=7)
    losses = [trained.evaluate(x[r : r + 7], y[r : r + 7])["loss"] * x[r : r + 7].size for r in range(0, len(x), 7)]
    assert chunked["loss"] == pytest.approx(sum(losses) / x.size, rel=1e-12)
    assert chunked["loss"] == pytest.approx(result["loss"], rel=1e-5)


def test_evaluate_ids_carries_state(trained, ids):
    """With the state carried, how the streams are cut into chunks does not change the loss."""
    data = ids[:401]
    whole = trained.gradients(data[None, :-1], data[None, 1:])[0]  # one stream, one pass
    for seq_len in (400, 37, 10, 1):
        result = trained.evaluate(data, seq_len=seq_len, batch_size=1)
        assert result["tokens"] == 400
        assert result["loss"] == pytest.approx(whole, rel=1e-5), seq_len
    # the batch size does not cut the text into streams that lose their history
    for batch_size in (4, 32, 1000):
        assert trained.evaluate(data, seq_len=7, batch_size=batch_size)["loss"] == pytest.approx(whole, rel=1e-5)
    # without carrying, short chunks lose their history and score worse
    assert trained.evaluate(*fastlm.windows(data, 2, 2))["loss"] > whole + 0.1


@pytest.mark.parametrize(
    "args, kw, error, message",
    [
        ((np.array([], dtype=np.int32),), {}, ValueError, "empty"),
        (([],), {}, ValueError, r"ids is empty \(shape \(0,\)\)"),  # not "dtype float64": NumPy's type for []
        ((np.array([3], dtype=np.int32),), {}, ValueError, "at least 2 tokens"),
        ((np.arange(50) % 5,), dict(seq_len=0), ValueError, "seq_len must be a positive integer, got 0"),
        ((np.arange(50) % 5,), dict(batch_size=-1), ValueError, "batch_size must be a positive integer, got -1"),
        ((np.array([1, 2, 500]),), {}, ValueError, "ids holds id 500"),
    ],
)
def test_evaluate_bad_input(trained, args, kw, error, message):
    with pytest.raises(error, match=message):
        trained.evaluate(*args, **kw)


# ------------------------------------------------------------------ found in review


def test_tokenizer_of_another_vocabulary_is_refused_before_training(tok, ids, tmp_path):
    model, untouched = tiny_model(tok), tiny_model(tok)
    other = fastlm.Tokenizer.fit("a b c", level="char")
    with pytest.raises(ValueError, match="tokens but the model's vocabulary has"):
        quiet_fit(model, ids, epochs=1, checkpoint_dir=tmp_path / "ck", tokenizer=other)
    assert not (tmp_path / "ck").exists()
    assert_same_weights(model, untouched)


@pytest.mark.parametrize(
    "option, value", [("early_stopping", 0), ("early_stopping", -1), ("lr_patience", -1), ("weight_decay", -0.1)]
)
def test_plateau_and_decay_options_are_checked(tok, ids, option, value):
    with pytest.raises(ValueError, match=option):
        quiet_fit(tiny_model(tok), ids, epochs=1, val_ids=ids[:50], **{option: value})


@pytest.mark.parametrize(
    "option, value",
    [
        ("epochs", 1.5),
        ("lr_patience", 1.5),
        ("early_stopping", 2.0),
        ("lr", "0.1"),
        ("shuffle", "yes"),
        ("callback", 3),
    ],
)
def test_options_of_the_wrong_type_are_type_errors(tok, ids, tmp_path, option, value):
    model = tiny_model(tok)
    with pytest.raises(TypeError, match=rf"^{option} must be"):
        quiet_fit(model, ids, **{"epochs": 1, "val_ids": ids[:50], "checkpoint_dir": tmp_path / "ck", option: value})
    assert not (tmp_path / "ck").exists()
    assert same_weights(model, tiny_model(tok))


def test_bad_seed_is_refused():
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        fastlm.LSTMLM(10, 4, 4, seed=-1)
    for seed in (1.5, True, "0"):
        with pytest.raises(TypeError, match="seed must be an integer, got"):
            fastlm.LSTMLM(10, 4, 4, seed=seed)


def test_corrupted_trainer_file_is_a_clear_error(tok, ids, tmp_path):
    quiet_fit(tiny_model(tok), ids, epochs=1, checkpoint_dir=tmp_path)
    (model_dir.save_path(tmp_path) / model_dir.TRAINER_FILE).write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="trainer.json is corrupted"):
        quiet_fit(tiny_model(tok), ids, epochs=2, checkpoint_dir=tmp_path, resume=True)


@pytest.fixture(scope="module")
def checkpointed(tok, ids, tmp_path_factory):
    """A checkpoint after one epoch and 3 batches of the next (16 batches an epoch), and its trainer.json."""
    directory = tmp_path_factory.mktemp("checkpoint")
    quiet_fit(tiny_model(tok), ids, epochs=2, checkpoint_dir=directory, max_batches=19)
    path = model_dir.save_path(directory) / model_dir.TRAINER_FILE
    return directory, path, json.loads(path.read_text())


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("epoch", None, "'epoch' must be an integer, got None"),
        ("epoch", -1, "'epoch' must be an integer >= 0, got -1"),
        ("epoch", 10**12, "'history' 'epoch' must be a list of one entry per epoch done \\(1000000000000\\)"),
        ("batch", None, "'batch' must be an integer, got None"),
        ("batch", 10**12, "'batch' 1000000000000 lies outside an epoch of 16 batches"),
        ("batch", 16, "'batch' 16 lies outside an epoch of 16 batches"),
        ("epoch_tokens", 10**12, "'epoch_tokens' 1000000000000 after 3 batch\\(es\\) of this data, which hold 384"),
        ("epoch_tokens", 383, "'epoch_tokens' 383 after 3 batch"),
        ("adam_step", 10**6, "'adam_step' 1000000, but 1 epoch\\(s\\) of 16 batches and 3 batch\\(es\\) make 19"),
        ("lr", None, "'lr' must be a number, got None"),
        ("lr", -1.0, "'lr' must be positive and finite, got -1.0"),
        ("lr", 10**400, "'lr' must be positive and finite, got about 10\\*\\*400"),
        ("settings", None, "'settings' must be a JSON object, got None"),
        ("history", None, "'history' must be a JSON object, got None"),
        ("history", {}, "'history' 'epoch' must be a list of one entry per epoch done \\(1\\), got None"),
        ("history", "loss=[]", "'history' must be a JSON object"),
        ("best_epoch", 2, "'best_epoch' must be an integer in \\[1, 1\\], got 2"),
        ("stopped_early", "no", "'stopped_early' must be True or False"),
        ("epoch_loss_sum", float("nan"), "'epoch_loss_sum' must be a finite number >= 0"),
    ],
)
def test_every_trainer_value_is_checked_on_resume(tok, ids, checkpointed, key, value, message):
    """Each value of trainer.json, damaged or edited: a ValueError naming the file, the key and
    the value, never a crash deep in the loop or a run that trains on from a position it
    never reached (an epoch loss divided by 10**12 tokens, an epoch skipped)."""
    directory, path, trainer = checkpointed
    path.write_text(json.dumps({**trainer, key: value}))
    try:
        with pytest.raises(ValueError, match=f"{path}.*{message}"):
            quiet_fit(tiny_model(tok), ids, epochs=2, checkpoint_dir=directory, resume=True)
    finally:
        path.write_text(json.dumps(trainer))


def test_empty_checkpoint_dir_is_refused(tok, ids, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="checkpoint_dir must name a directory, got ''"):
        quiet_fit(tiny_model(tok), ids, epochs=1, checkpoint_dir="")
    assert list(tmp_path.iterdir()) == []


def test_resuming_with_fewer_epochs_than_done_is_refused(tok, ids, checkpointed):
    directory, path, _ = checkpointed
    with pytest.raises(
        ValueError,
        match=rf"cannot resume: {path} records 'epoch' 1 done and 'batch' 3 of the next, "
        "more than this run's epochs=1",
    ):
        quiet_fit(tiny_model(tok), ids, epochs=1, checkpoint_dir=directory, resume=True)


def test_history_lists_must_hold_an_entry_per_epoch(tok, ids, checkpointed):
    directory, path, trainer = checkpointed
    for history, message in (
        (
            {**trainer["history"], "loss": []},
            "'history' 'loss' must be a list of one entry per epoch done \\(1\\), got 0",
        ),
        ({**trainer["history"], "loss": ["x"]}, "'history' 'loss' holds 'x', not a number"),
    ):
        path.write_text(json.dumps({**trainer, "history": history}))
        try:
            with pytest.raises(ValueError, match=f"{path} is corrupted: {message}"):
                model_dir.load_training_state(directory, optimizer=False)
        finally:
            path.write_text(json.dumps(trainer))


def test_the_untouched_checkpoint_resumes(tok, ids, checkpointed):
    directory, _, _ = checkpointed  # the cases above left it as it was
    history = quiet_fit(tiny_model(tok), ids, epochs=2, checkpoint_dir=directory, resume=True)
    assert len(history["loss"]) == 2 and 1 < history["loss"][1] < 10


def test_second_ctrl_c_during_a_checkpoint_waits_for_it(tok, ids, tmp_path, monkeypatch):
    """A Ctrl-C that lands while files are being renamed must not leave a mixed directory."""
    real_save = model_dir.write
    calls = []

    def save_with_interrupts(*args, **kwargs):
        calls.append(1)
        signal.raise_signal(signal.SIGINT)  # first press: stop after this batch
        signal.raise_signal(signal.SIGINT)  # second press, inside the save: deferred
        return real_save(*args, **kwargs)

    monkeypatch.setattr(model_dir, "write", save_with_interrupts)
    with pytest.raises(KeyboardInterrupt):  # raised once the checkpoint is complete
        quiet_fit(tiny_model(tok), ids, epochs=2, checkpoint_dir=tmp_path)
    monkeypatch.setattr(model_dir, "write", real_save)
    assert calls and fastlm.load(tmp_path) is not None
    model_dir.load_training_state(tmp_path)


# ================================================================= the recipes' schedule and optimizer


def test_epoch_schedule_decays_from_the_given_epoch_without_validation(tok, ids):
    history = quiet_fit(tiny_model(tok), ids[:400], epochs=5, lr=2.0, optimizer="sgd", lr_decay=0.5, lr_decay_epoch=3)
    assert history["lr"] == [2.0, 2.0, 1.0, 0.5, 0.25]
    assert training.epoch_lr(1.0, 0.5, 5, 4) == 1.0 and training.epoch_lr(1.0, 0.5, 5, 6) == 0.25


def test_epoch_schedule_replaces_the_plateau_rule(tok, ids):
    """With lr_decay_epoch the decay follows the calendar, whatever the validation loss does."""
    history = quiet_fit(
        tiny_model(tok),
        ids[:400],
        val_ids=ids[400:600],
        epochs=3,
        lr=1e3,
        optimizer="sgd",
        clip_norm=1.0,
        lr_decay=0.5,
        lr_decay_epoch=2,
    )
    assert history["lr"] == [1e3, 500.0, 250.0]


def test_sgd_learns_and_momentum_changes_the_path(tok, ids):
    runs = {}
    for momentum, nesterov in [(0.0, False), (0.9, False), (0.9, True)]:
        model = tiny_model(tok)
        history = quiet_fit(
            model, ids, epochs=3, lr=1.0, optimizer="sgd", momentum=momentum, nesterov=nesterov, clip_norm=1.0
        )
        assert history["loss"][-1] < history["loss"][0]
        runs[momentum, nesterov] = model
    models = list(runs.values())
    assert not same_weights(models[0], models[1]) and not same_weights(models[1], models[2])
