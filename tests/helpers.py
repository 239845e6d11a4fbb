"""Helpers shared by several test files (imported as `helpers`: pytest puts tests/ on sys.path)."""

import numpy as np

import fastlm
from fastlm import cli, model_dir

# The window length and batch size of tiny training runs (quiet_fit's defaults).
SEQ, BATCH = 16, 8


def cli_options(**options):
    """Command-line options from keyword arguments, in their order, for `fastlm` commands:
    cli_options(seq_len=10, out=path) == ["--seq-len", "10", "--out", str(path)]."""
    argv = []
    for name, value in options.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of `fastlm argv...`, in-process (argparse's exits included)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit:  # argparse: --help, usage errors
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(directory):
    """Paths and contents of the files under a directory, the save's subdirectory included, but
    fastlm's lock file: to check that a failed command or save changed nothing."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != model_dir.LOCK_FILE
    }


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
