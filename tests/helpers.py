"""Helpers shared by several test files (imported as `helpers`: pytest puts tests/ on sys.path)."""

import numpy as np

import fastlm

# The window length and batch size of tiny training runs (quiet_fit's defaults).
SEQ, BATCH = 16, 8


def cli_options(**options):
    """Command-line options from keyword arguments, in their order, for `fastlm` commands:
    cli_options(seq_len=10, out=path) == ["--seq-len", "10", "--out", str(path)]."""
    argv = []
    for name, value in options.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def ids_training_options(directory):
    """`fastlm train` options for a tiny model trained on directory/ids.bin, a token file
    encoded with directory/tok.json, and saved to directory/model."""
    return cli_options(
        ids=directory / "ids.bin",
        tokenizer=directory / "tok.json",
        hidden=8,
        embed=8,
        seq_len=10,
        batch_size=4,
        sample_tokens=5,
        out=directory / "model",
    )


def tiny_model(tok, **options):
    """A one-layer model of tok's vocabulary, small enough to train in a blink; options
    override the constructor's arguments."""
    return fastlm.LSTMLM(len(tok), **{**dict(embed_dim=8, hidden_size=16, num_layers=1, seed=1), **options})


def quiet_fit(model, *args, **options):
    """model.fit without a progress bar, in windows of SEQ and batches of BATCH unless told."""
    options.setdefault("seq_len", SEQ)
    options.setdefault("batch_size", BATCH)
    options.setdefault("progress", False)
    return model.fit(*args, **options)


def _weights(model_or_state):
    return model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()


def same_weights(a, b):
    """Whether two models (or state dicts) hold the same names in the same order, bit for bit."""
    a, b = _weights(a), _weights(b)
    return list(a) == list(b) and all(np.array_equal(a[name], b[name]) for name in a)


def assert_same_weights(a, b):
    """same_weights, naming the first parameter that differs."""
    a, b = _weights(a), _weights(b)
    assert list(a) == list(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs"
