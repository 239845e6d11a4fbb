"""Saves under faults, in the spirit of SQLite's crash and I/O-error tests.

fastlm.model_dir calls _fault_point(step) at every step of a save; these tests replace it
to fail there: by an exception (a full disk, an I/O error, Ctrl-C) in this process, or by
killing a forked child at that instant (os._exit: no clean-up runs, as with kill -9). After
each, the directory must load as the last complete save, and --resume must continue
bit-identically to a run that was never interrupted. Also: a full disk as safetensors
reports it, a read-only directory, and a kill during the very first save.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from helpers import cli_options, same_weights

import fastlm
from fastlm import cli, model_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

V = 30
IDS = (np.arange(3000) * 7 + np.arange(3000) // 11) % V
SETTINGS = dict(seq_len=10, batch_size=8, lr=1e-2, progress=False)


def new_model():
    return fastlm.LSTMLM(V, 8, 16, seed=2)


def train(directory, epochs, resume=False, model=None):
    model = model or new_model()
    model.fit(IDS, epochs=epochs, checkpoint_dir=directory, resume=resume, **SETTINGS)
    return model


def write_corpus(directory):
    corpus = directory / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog ran\n" * 40)
    return corpus


def train_command(corpus, out):
    """`fastlm train` of a tiny model on corpus, one epoch, no sample, in this process: its exit code."""
    options = cli_options(epochs=1, hidden=8, embed=4, seq_len=8, batch_size=4, sample_tokens=0, out=out)
    return cli.main(["train", str(corpus), *options])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Weights after 1, 2 and 3 uninterrupted epochs, and the save steps in order."""
    steps = []
    real = model_dir._fault_point
    model_dir._fault_point = steps.append
    try:
        directory = tmp_path_factory.mktemp("reference")
        after = {}
        for epochs in (1, 2, 3):
            after[epochs] = train(directory, epochs, resume=epochs > 1).state_dict()
    finally:
        model_dir._fault_point = real
    one_save = steps[: steps.index("removed the previous save") + 1] if "removed the previous save" in steps else []
    return after, one_save


def test_every_step_is_named(reference):
    _, steps = reference
    assert steps[0] == "created the save subdirectory"
    for step in (
        "wrote model.safetensors",
        "wrote optimizer.safetensors",
        "wrote trainer.json",
        "synced the save subdirectory",
        "staged config.json",
        "renamed config.json",
        "synced the directory",
        "removed the previous save",
    ):
        assert step in steps
    assert steps.index("staged config.json") < steps.index("renamed config.json")


def fault_point(step, on_save, fault):
    """A model_dir._fault_point that calls fault() at step of the on_save-th save from now."""
    seen = {"saves": 0}

    def point(name):
        if name == "created the save subdirectory":
            seen["saves"] += 1
        if name == step and seen["saves"] == on_save:
            fault()

    return point


def fail_at(monkeypatch, step, error, on_save=1):
    """Make the on_save-th save from now raise error at step."""

    def fail():
        raise error

    monkeypatch.setattr(model_dir, "_fault_point", fault_point(step, on_save, fail))


def kill_in_child_at(step, work, on_save=1):
    """Run work() in a forked child that dies (os._exit, no clean-up) at step of its on_save-th
    save; True if it died there, False if work finished first."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            model_dir._fault_point = fault_point(step, on_save, lambda: os._exit(137))
            work()
            os._exit(0)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 137), f"the child failed (exit {code})"
    return code == 137


def check_recovers(directory, reference_weights, switched):
    """load gives the last complete save; resuming to epoch 3 is bit-identical."""
    expected = reference_weights[2] if switched else reference_weights[1]
    assert same_weights(fastlm.load(directory), expected)
    _, trainer = model_dir.load_training_state(directory)
    assert trainer["epoch"] == (2 if switched else 1)
    resumed = train(directory, 3, resume=True)
    assert same_weights(resumed, reference_weights[3])
    leftovers = [
        p.name
        for p in directory.iterdir()
        if p.name not in ("config.json", model_dir.LOCK_FILE, model_dir.read_config(directory)["save"])
    ]
    assert leftovers == []


SWITCHED_AFTER = "renamed config.json"


def _switched(steps, step):
    return steps.index(step) >= steps.index(SWITCHED_AFTER)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked child")
def test_kill_at_each_step_of_a_checkpoint(reference, tmp_path):
    reference_weights, steps = reference
    matrix = {}
    for k, step in enumerate(steps):
        directory = tmp_path / f"k{k}"
        train(directory, 1)
        died = kill_in_child_at(step, lambda directory=directory: train(directory, 2, resume=True))
        assert died, step
        check_recovers(directory, reference_weights, _switched(steps, step))
        matrix[step] = "epoch 2" if _switched(steps, step) else "epoch 1"
    print("\nkill -9 at step -> load gives:", matrix)


ERRORS = {
    "disk full": OSError(errno.ENOSPC, "No space left on device"),
    "I/O error": OSError(errno.EIO, "Input/output error"),
    "Ctrl-C": KeyboardInterrupt(),
}


@pytest.mark.parametrize("kind", list(ERRORS))
def test_error_at_each_step_of_a_checkpoint(reference, tmp_path, monkeypatch, kind):
    reference_weights, steps = reference
    for k, step in enumerate(steps):
        directory = tmp_path / f"e{k}"
        train(directory, 1)
        fail_at(monkeypatch, step, ERRORS[kind])
        with pytest.raises(type(ERRORS[kind])):  # after the switch too: the error surfaces, nothing is lost
            train(directory, 2, resume=True)
        monkeypatch.undo()
        check_recovers(directory, reference_weights, _switched(steps, step))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked child")
def test_kill_during_the_first_save_does_not_block_the_directory(reference, tmp_path, capsys):
    _, steps = reference
    first_save = [s for s in steps if s != "removed the previous save"]
    for k, step in enumerate(first_save):
        directory = tmp_path / f"f{k}"
        died = kill_in_child_at(step, lambda directory=directory: train(directory, 1))
        assert died, step
        if _switched(first_save, step):
            assert same_weights(fastlm.load(directory), reference[0][1])
            continue
        with pytest.raises(FileNotFoundError, match="config.json is missing"):
            fastlm.load(directory)
        assert not [p for p in directory.iterdir() if model_dir.STAGED_NAME.fullmatch(p.name)]
        # and a fresh `fastlm train --out` takes the directory, removing the abandoned save
        code = train_command(write_corpus(tmp_path), directory)
        assert code == 0, capsys.readouterr().err
        fastlm.load(directory)
        assert sorted(p.name for p in directory.iterdir()) == sorted(  # best/: the best epoch (validation)
            ["config.json", model_dir.LOCK_FILE, model_dir.BEST_DIR, model_dir.read_config(directory)["save"]]
        )
    capsys.readouterr()


def test_leftovers_are_removed_by_load_and_by_the_next_save(tmp_path):
    directory = tmp_path / "m"
    model = train(directory, 1)
    stray_save = directory / ("save-" + "0" * 32)
    stray_save.mkdir()
    (stray_save / "model.safetensors").write_bytes(b"partial")
    staged = directory / ".config.json.abc123.tmp"
    staged.write_text("{")
    mine = directory / "notes.txt"
    mine.write_text("the user's own file")
    fastlm.load(directory)
    assert not stray_save.exists() and not staged.exists() and mine.exists()
    stray_save.mkdir()
    model.save(directory)
    assert not stray_save.exists() and mine.exists()


def test_load_holds_off_the_clean_up_of_a_concurrent_save(tmp_path):
    """While a loader holds the shared lock, a save switches but leaves the previous save in
    place (the loader may be reading it); the next save removes it."""
    directory = tmp_path / "m"
    model = train(directory, 1)
    previous = model_dir.read_config(directory)["save"]
    reader = model_dir._DirectoryLock(directory, create=False)  # what load() holds while it reads
    try:
        model.save(directory)
        assert (directory / previous).is_dir()
        assert same_weights(fastlm.load(directory), model)
    finally:
        reader.close()
    model.save(directory)
    assert not (directory / previous).exists()


def test_a_failing_write_inside_safetensors_is_one_line(tmp_path, capsys):
    """safetensors reports OS errors as its own SafetensorError; fastlm turns them into the
    OSError they wrap, which `fastlm train` prints as one line. The write fails for real:
    RLIMIT_FSIZE makes the kernel refuse the weights file (EFBIG, where a full disk gives
    ENOSPC through the same path), while config.json, smaller, could still be written."""
    import resource
    import signal

    corpus = write_corpus(tmp_path)
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, previous_limit[1]))
    try:
        code = train_command(corpus, tmp_path / "m")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "model.safetensors" in lines[0], err
    assert "Traceback" not in err and "SafetensorError" not in err
    # nothing half-written: only lock files (the first save to fail is the best epoch's, m/best,
    # which goes before the checkpoint that records it)
    left = list((tmp_path / "m").rglob("*"))
    assert left and all(p.name == model_dir.LOCK_FILE for p in left if not p.is_dir()), left
    assert not [p for p in left if p.name == "config.json" or model_dir.SAVE_NAME.fullmatch(p.name)]


def refuse_writes_under(monkeypatch, directory):
    """A read-only directory even for root (who may write into a chmod 555 one): creating
    anything under it fails with EACCES, as it does for other users."""
    os.chmod(directory, 0o555)
    if not os.access(directory, os.W_OK):
        return
    real_open, real_mkdir = os.open, os.mkdir
    prefix = str(directory) + os.sep

    def guarded_open(path, flags, *args, **kwargs):
        if str(path).startswith(prefix) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if str(path).startswith(prefix):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def test_read_only_out_is_refused_before_training(tmp_path, monkeypatch, capsys):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    refuse_writes_under(monkeypatch, read_only)
    epochs_run = []
    with pytest.raises(PermissionError):
        new_model().fit(IDS, epochs=2, checkpoint_dir=read_only / "m", callback=epochs_run.append, **SETTINGS)
    assert epochs_run == []  # refused before the first epoch, not after it
    code = train_command(write_corpus(tmp_path), read_only / "m")
    out, err = capsys.readouterr()
    assert code == 1 and "Permission denied" in err and len(err.strip().splitlines()) == 1, err
    assert "epoch 1" not in out
    monkeypatch.undo()
    os.chmod(read_only, 0o755)


def test_read_only_checkpoint_still_loads(tmp_path, monkeypatch):
    """Loading never needs to write: a finished model on read-only storage loads."""
    directory = tmp_path / "m"
    model = train(directory, 1)
    refuse_writes_under(monkeypatch, directory)
    assert same_weights(fastlm.load(directory), model)
    monkeypatch.undo()
    os.chmod(directory, 0o755)


def test_format_1_directories_still_load(tmp_path):
    """A flat directory of an older fastlm: config.json, model.safetensors, tokenizer.json."""
    import json

    from safetensors.numpy import save_file

    model = new_model()
    tokenizer = fastlm.Tokenizer.fit(" ".join(f"w{i}" for i in range(V - 1)))
    directory = tmp_path / "old"
    directory.mkdir()
    save_file(model.state_dict(), str(directory / "model.safetensors"), metadata={"save_id": "abc"})
    tokenizer.save(directory / "tokenizer.json")
    (directory / "config.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "fastlm_version": "0.1.0",
                "save_id": "abc",
                "model": model.config(),
                "tokenizer": {"level": "word", "size": V},
                "has_training_state": False,
            }
        )
    )
    loaded = fastlm.load(directory)
    assert same_weights(loaded, model) and loaded.tokenizer == tokenizer
    loaded.save(directory)  # upgraded in place: the flat files go once the new save is named
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [".fastlm.lock", "config.json", model_dir.read_config(directory)["save"]]
    )
    assert same_weights(fastlm.load(directory), model)
