"""What a Keras or PyTorch user reaches for around fit: callbacks per batch and per epoch (and
stopping from one), Ctrl-C raising KeyboardInterrupt after its checkpoint, restore_best and
the best epoch kept beside the last checkpoint, the validation figures on the progress bar,
model.summary() and repr(model).

Tiny character models on a slice of tinyshakespeare, one thread (exact resume is promised for
a fixed thread count); resumes are compared bit for bit.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import quiet_fit, same_weights, tiny_model

import fastlm
from fastlm import cli, model_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tok():
    return fastlm.Tokenizer.fit(fastlm.datasets.tinyshakespeare()[:12000], level="char")


@pytest.fixture(scope="module")
def ids(tok):
    return tok.encode(fastlm.datasets.tinyshakespeare()[:2000])  # 16 batches of 8 windows of 16


def scripted_validation(model, losses):
    """Make fit's validation pass return the given losses in turn (a controlled plateau)."""
    losses = iter(losses)

    def evaluate(*args, **kw):
        loss = next(losses)
        return {"loss": loss, "perplexity": math.exp(loss)}

    model.evaluate = evaluate


# ================================================================= callbacks


def test_batch_callback_sees_every_step(tok, ids):
    seen = []
    history = quiet_fit(tiny_model(tok), ids, epochs=2, lr=1e-2, batch_callback=seen.append)
    assert [(s["epoch"], s["batch"]) for s in seen] == [(e, b) for e in (1, 2) for b in range(1, 17)]
    assert all(s["batches"] == 16 and s["lr"] == 1e-2 and math.isfinite(s["loss"]) and s["loss"] > 0 for s in seen)
    # the epoch's mean loss is the batches' losses weighted by their tokens (the last batch has 4 windows)
    weights = [8] * 15 + [4]
    for epoch in (1, 2):
        losses = [s["loss"] for s in seen if s["epoch"] == epoch]
        assert history["loss"][epoch - 1] == pytest.approx(np.average(losses, weights=weights), rel=1e-9)


@pytest.mark.parametrize("stop_at", [5, 16], ids=["mid-epoch", "epoch-end"])
def test_batch_callback_returning_false_stops_and_resumes_exactly(tok, ids, tmp_path, stop_at):
    full = tiny_model(tok, dropout=0.1)
    quiet_fit(full, ids, epochs=2, lr=1e-2)

    part = tiny_model(tok, dropout=0.1)
    calls = []

    def stop(info):
        calls.append(info)
        return False if len(calls) == stop_at else None

    history = quiet_fit(part, ids, epochs=2, lr=1e-2, checkpoint_dir=tmp_path, batch_callback=stop)
    assert len(calls) == stop_at and history["interrupted"] is False
    trainer = json.loads((model_dir.save_path(tmp_path) / model_dir.TRAINER_FILE).read_text())
    assert (trainer["epoch"], trainer["batch"]) == divmod(stop_at, 16)
    resumed = tiny_model(tok, dropout=0.1)
    history = quiet_fit(resumed, ids, epochs=2, lr=1e-2, checkpoint_dir=tmp_path, resume=True)
    assert "interrupted" not in history and history["epoch"] == [1, 2]
    assert same_weights(full, resumed)


def test_epoch_callback_gets_the_history_so_far(tok, ids):
    seen = []
    quiet_fit(tiny_model(tok), ids, epochs=3, callback=lambda h: seen.append(list(h["epoch"])))
    assert seen == [[1], [1, 2], [1, 2, 3]]


def test_epoch_callback_returning_false_stops_after_that_epoch(tok, ids, tmp_path):
    epochs_seen = []

    def stop_after_two(history):
        epochs_seen.append(history["epoch"][-1])
        return len(history["epoch"]) < 2  # True goes on; False stops

    history = quiet_fit(tiny_model(tok), ids, epochs=4, checkpoint_dir=tmp_path, callback=stop_after_two)
    assert epochs_seen == [1, 2] and history["epoch"] == [1, 2] and history["interrupted"] is False
    assert model_dir.load_training_state(tmp_path)[1]["epoch"] == 2


@pytest.mark.parametrize("at", [7, 16], ids=["mid-epoch", "epoch-end"])
def test_keyboard_interrupt_from_a_callback_checkpoints_then_raises(tok, ids, tmp_path, at):
    options = dict(epochs=2, lr=1e-2, val_ids=ids[1500:], restore_best=True)
    full = tiny_model(tok, dropout=0.1)
    quiet_fit(full, ids[:1500], checkpoint_dir=tmp_path / "full", **options)

    part = tiny_model(tok, dropout=0.1)
    count = [0]

    def ctrl_c(info):
        count[0] += 1
        if count[0] == at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as raised:
        quiet_fit(part, ids[:1500], checkpoint_dir=tmp_path / "part", batch_callback=ctrl_c, **options)
    assert raised.value.checkpoint_dir == tmp_path / "part" and count[0] == at
    assert same_weights(part, fastlm.load(tmp_path / "part"))  # the checkpoint holds the batch the callback ended

    resumed = tiny_model(tok, dropout=0.1)
    history = quiet_fit(resumed, ids[:1500], checkpoint_dir=tmp_path / "part", resume=True, **options)
    assert history["epoch"] == [1, 2]
    assert same_weights(full, resumed)
    for directory in ("", model_dir.BEST_DIR):  # the last and the best checkpoints agree with the full run's
        assert same_weights(fastlm.load(tmp_path / "full" / directory), fastlm.load(tmp_path / "part" / directory))


def test_callbacks_are_checked(tok, ids):
    with pytest.raises(TypeError, match="batch_callback must be callable or None, got 3"):
        quiet_fit(tiny_model(tok), ids, epochs=1, batch_callback=3)
    with pytest.raises(TypeError, match="restore_best must be True or False"):
        quiet_fit(tiny_model(tok), ids, epochs=1, restore_best="yes", val_ids=ids[:100])
    with pytest.raises(ValueError, match="restore_best=True .* pass val_ids"):
        quiet_fit(tiny_model(tok), ids, epochs=1, restore_best=True)


# ================================================================= the best epoch


def test_restore_best_and_the_best_checkpoint(tok, ids, tmp_path):
    """Validation losses 3, 2, 2.5, 2.6 with early_stopping=2: training stops after epoch 4 and the
    model comes back with epoch 2's weights; checkpoint_dir/best holds them, the checkpoint epoch 4's."""
    model = tiny_model(tok)
    scripted_validation(model, [3.0, 2.0, 2.5, 2.6])
    after_epoch = []
    history = quiet_fit(
        model,
        ids,
        epochs=10,
        lr=1e-2,
        val_ids=ids[:100],
        early_stopping=2,
        restore_best=True,
        checkpoint_dir=tmp_path,
        callback=lambda h: after_epoch.append(model.state_dict()),
    )
    assert history["epoch"] == [1, 2, 3, 4] and history["val_loss"] == [3.0, 2.0, 2.5, 2.6]
    assert same_weights(model, after_epoch[1]) and not same_weights(after_epoch[1], after_epoch[3])
    assert same_weights(fastlm.load(tmp_path / model_dir.BEST_DIR), after_epoch[1])
    assert same_weights(fastlm.load(tmp_path), after_epoch[3])  # the last epoch, for resuming
    assert model_dir.load_training_state(tmp_path)[1]["best_epoch"] == 2

    without = tiny_model(tok)
    scripted_validation(without, [3.0, 2.0, 2.5, 2.6])
    quiet_fit(without, ids, epochs=10, lr=1e-2, val_ids=ids[:100], early_stopping=2)
    assert same_weights(without, after_epoch[3])  # restore_best=False: the last epoch's weights


def test_restore_best_reads_the_best_checkpoint_after_a_resume(tok, ids, tmp_path):
    """Best epoch 1, stopped during epoch 2, resumed: the best weights come from checkpoint_dir/best."""
    options = dict(epochs=3, lr=1e-2, val_ids=ids[:100], restore_best=True, checkpoint_dir=tmp_path)
    first = tiny_model(tok)
    scripted_validation(first, [2.0])
    quiet_fit(first, ids, max_batches=20, **options)
    best = fastlm.load(tmp_path / model_dir.BEST_DIR).state_dict()
    resumed = tiny_model(tok)
    scripted_validation(resumed, [2.5, 2.4])
    quiet_fit(resumed, ids, resume=True, **options)
    assert same_weights(resumed, best) and not same_weights(resumed, fastlm.load(tmp_path))


def test_a_fresh_run_replaces_the_previous_best(tok, ids, tmp_path):
    quiet_fit(tiny_model(tok), ids, epochs=1, val_ids=ids[:100], checkpoint_dir=tmp_path)
    assert (tmp_path / model_dir.BEST_DIR / model_dir.CONFIG_FILE).is_file()
    quiet_fit(tiny_model(tok), ids, epochs=1, checkpoint_dir=tmp_path)  # no validation: no best epoch
    assert not (tmp_path / model_dir.BEST_DIR).exists()
    assert model_dir.is_fastlm_file(model_dir.BEST_DIR)  # `fastlm train --out` accepts it as its own


def test_progress_bar_closes_with_the_validation_figures(tok, ids, capsys):
    history = quiet_fit(tiny_model(tok), ids, epochs=2, progress=True, val_ids=ids[:200])
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    for loss, val_loss in zip(history["loss"], history["val_loss"]):
        # the closing line: the epoch's training figures, then the validation loss and perplexity
        train = f"loss={loss:.3f}, ppl={math.exp(loss):.1f}, tok_s="
        val = f"val_loss={val_loss:.3f}, val_ppl={math.exp(val_loss):.1f}"
        assert any(train in line and line.rstrip().endswith(val + "]") for line in lines), (train, val, lines)


def test_cli_reports_the_checkpoint_of_an_interrupted_run(tmp_path, monkeypatch, capsys):
    def interrupted(model, *args, **kw):
        error = KeyboardInterrupt()
        error.checkpoint_dir = kw["checkpoint_dir"]
        raise error

    monkeypatch.setattr(fastlm.LSTMLM, "fit", interrupted)
    code = cli.main(["train", "--dataset", "python_docs", "--out", str(tmp_path / "m"), "--epochs", "1"])
    assert code == 130
    assert f"interrupted: checkpoint saved in {tmp_path / 'm'}" in capsys.readouterr().out


# ================================================================= summary and repr


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(num_layers=2, dropout=0.25, seed=3),
        dict(embed_dim=16, tie_weights=True, init_range=0.1),
        dict(hidden_size=16, cutoffs=[20, 40], div_value=2.0),
    ],
    ids=["plain", "two-layers", "tied", "adaptive"],
)
def test_repr_builds_the_same_model(tok, options):
    model = tiny_model(tok, **options)
    text = repr(model)
    assert text.startswith(f"LSTMLM(vocab_size={len(tok)}, embed_dim=")
    again = eval(text, {"LSTMLM": fastlm.LSTMLM})  # noqa: S307 - the repr is a constructor call
    assert again.config() == model.config() and same_weights(again, model)
    assert repr(tiny_model(tok, backend="numpy")).endswith(", backend='numpy')")


@pytest.mark.parametrize(
    "options", [dict(num_layers=2), dict(embed_dim=16, tie_weights=True), dict(cutoffs=[20, 40])], ids=str
)
def test_summary_lists_layers_shapes_and_counts(tok, options):
    model = tiny_model(tok, **options)
    lines = []
    assert model.summary(print_fn=lines.append) is None
    table = model.summary(print_fn=None)
    assert lines == [table]
    total = sum(p.size for p in model.trainable().values())
    assert f"Total parameters: {total:,} " in table
    rows = {line.split("  ")[0].strip(): line for line in table.splitlines()}
    V, E, H = len(tok), model.embed_dim, model.hidden_size
    assert f"(B, T, {E})" in rows["embedding"] and f"{V * E:,}" in rows["embedding"]
    assert f"weight ({V}, {E})" in rows["embedding"]
    for k in range(model.num_layers):
        layer = rows[f"lstm (layer {k})"]
        size = 4 * H * (E if k == 0 else H) + 4 * H * H + 8 * H
        assert f"(B, T, {H})" in layer and f"{size:,}" in layer and f"weight_hh ({4 * H}, {H})" in layer
    assert f"(B, T, {V})" in rows["decoder"]
    if model.tie_weights:
        assert "tied to embedding.weight" in rows["decoder"] and f" {V:,} " in rows["decoder"]  # the bias alone
    if model.cutoffs is not None:
        assert "head.weight" in rows["decoder"]


def test_summary_names_the_tokenizer(tok):
    model = tiny_model(tok)
    model.tokenizer = tok
    assert f"tokenizer: {tok!r}" in model.summary(print_fn=None)


@pytest.mark.parametrize("print_fn", [3, "print"])
def test_summary_refuses_a_print_fn_that_is_not_callable(tok, print_fn):
    with pytest.raises(TypeError, match=r"print_fn must be callable or None, got"):
        tiny_model(tok).summary(print_fn=print_fn)
