"""Model directories: save/load round trips, the file formats, bad directories, atomic saves.

A directory holds config.json, model.safetensors (PyTorch's state_dict names), an optional
tokenizer.json and, for checkpoints, optimizer.safetensors and trainer.json. Loading
checks the format version, the names and shapes of the tensors and that all files come
from one save, and names what is wrong.
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from helpers import assert_same_weights, snapshot
from safetensors.numpy import load_file, save_file

import fastlm
from fastlm import model_dir

V_TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def tok():
    return fastlm.Tokenizer.fit(V_TEXT, level="char")


@pytest.fixture
def model(tok):
    return fastlm.LSTMLM(len(tok), embed_dim=6, hidden_size=8, num_layers=2, dropout=0.25, seed=5)


@pytest.fixture
def saved(model, tok, tmp_path):
    directory = tmp_path / "model"
    model.save(directory, tokenizer=tok)
    return directory


def config_of(directory):
    return json.loads((directory / "config.json").read_text())


def write_config(directory, config):
    (directory / "config.json").write_text(json.dumps(config))


# ================================================================= round trip


def test_round_trip(model, tok, saved):
    save = config_of(saved)["save"]
    assert sorted(p.name for p in saved.iterdir()) == [".fastlm.lock", "config.json", save]
    assert sorted(p.name for p in model_dir.save_path(saved).iterdir()) == ["model.safetensors", "tokenizer.json"]
    loaded = fastlm.load(saved)
    assert isinstance(loaded, fastlm.LSTMLM)
    assert_same_weights(model, loaded)
    assert loaded.config() == model.config()
    assert (
        loaded.vocab_size,
        loaded.embed_dim,
        loaded.hidden_size,
        loaded.num_layers,
        loaded.dropout,
        loaded.seed,
    ) == (len(tok), 6, 8, 2, 0.25, 5)
    assert loaded.backend == "cpp"
    assert isinstance(loaded.tokenizer, fastlm.Tokenizer) and loaded.tokenizer == tok
    x = tok.encode(V_TEXT)
    assert loaded.evaluate(x, seq_len=10, batch_size=2) == model.evaluate(x, seq_len=10, batch_size=2)


def test_load_on_numpy_backend(model, saved):
    loaded = fastlm.load(saved, backend="numpy")
    assert loaded.backend == "numpy"
    assert_same_weights(model, loaded)


def test_load_holds_one_model_at_its_peak(tmp_path):
    """load reads the weights straight into the model's arrays: no random initialisation
    beside them, no second copy (it used to peak at three models)."""
    import tracemalloc

    model = fastlm.LSTMLM(4000, 128, 128, seed=2)  # 4 MB of parameters
    model.save(tmp_path)
    size = sum(p.nbytes for p in model.trainable().values())
    tracemalloc.start()
    try:
        loaded = fastlm.load(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_same_weights(model, loaded)
    assert size < peak < 1.3 * size, f"load peaked at {peak / size:.2f} x the parameters"
    assert all(p.flags.writeable and p.flags.c_contiguous for p in loaded.params.values())


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_load_converts_other_float_widths(model, tmp_path, dtype):
    model.save(tmp_path)
    path = model_dir.save_path(tmp_path) / "model.safetensors"
    state = model.state_dict()
    save_file(
        {k: v.astype(dtype) for k, v in state.items()}, path, metadata={"save_id": config_of(tmp_path)["save_id"]}
    )
    loaded = fastlm.load(tmp_path)
    for name, value in loaded.state_dict().items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, state[name].astype(dtype).astype(np.float32), err_msg=name)


def test_round_trip_after_training(tok, tmp_path):
    model = fastlm.LSTMLM(len(tok), 6, 8, seed=1)
    model.fit(tok.encode(V_TEXT * 4), seq_len=8, batch_size=4, epochs=1, lr=1e-2, progress=False)
    model.tokenizer = tok
    model.save(tmp_path)  # the attached tokenizer is saved by default
    loaded = fastlm.load(tmp_path)
    assert_same_weights(model, loaded)
    assert loaded.tokenizer == tok
    np.testing.assert_array_equal(loaded.generate([1, 2], 10, seed=3), model.generate([1, 2], 10, seed=3))


def test_without_tokenizer(model, tmp_path):
    model.save(tmp_path)
    assert not (model_dir.save_path(tmp_path) / "tokenizer.json").exists()
    assert fastlm.load(tmp_path).tokenizer is None
    assert config_of(tmp_path)["tokenizer"] is None


def test_config_contents(model, tok, saved):
    config = config_of(saved)
    assert config["format_version"] == model_dir.FORMAT_VERSION == 2
    assert config["save"] == "save-" + config["save_id"]
    assert config["fastlm_version"] == fastlm.__version__
    assert config["model"] == model.config()
    assert config["tokenizer"] == {"level": "char", "size": len(tok)}
    assert config["has_training_state"] is False
    assert isinstance(config["save_id"], str) and len(config["save_id"]) >= 16


def test_safetensors_file_has_pytorch_names(model, saved):
    tensors = load_file(model_dir.save_path(saved) / "model.safetensors")
    state = model.state_dict()
    assert sorted(tensors) == sorted(state)
    assert {
        "embedding.weight",
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.bias_ih_l0",
        "lstm.bias_hh_l0",
        "lstm.weight_ih_l1",
        "decoder.weight",
        "decoder.bias",
    } <= set(tensors)
    for name, value in tensors.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    from safetensors import safe_open

    with safe_open(str(model_dir.save_path(saved) / "model.safetensors"), framework="np") as f:
        assert f.metadata()["save_id"] == config_of(saved)["save_id"]


def test_weights_load_into_torch_strictly(model, tok, saved):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the interchange check needs it")
    from safetensors.torch import load_file as torch_load_file

    from fastlm._torch_twin import TorchLM

    module = TorchLM(len(tok), 6, 8, 2).eval()
    module.load_state_dict(torch_load_file(model_dir.save_path(saved) / "model.safetensors"), strict=True)
    x = tok.encode(V_TEXT)[None, :-1]
    y = tok.encode(V_TEXT)[None, 1:]
    with torch.no_grad():
        loss = module.loss(x, y)
    assert model.gradients(x, y)[0] == pytest.approx(float(loss), rel=1e-5)
    # and back: a torch state_dict saved with safetensors loads into fastlm
    reloaded = fastlm.LSTMLM(len(tok), 6, 8, 2)
    reloaded.load_state_dict(module.state_dict())
    assert_same_weights(model, reloaded)


def train_with_checkpoint(model, tok, directory):
    """One epoch on V_TEXT, checkpointed (optimizer state, trainer.json, tokenizer) in directory."""
    model.fit(
        tok.encode(V_TEXT * 3),
        seq_len=8,
        batch_size=4,
        epochs=1,
        checkpoint_dir=directory,
        tokenizer=tok,
        progress=False,
    )


def test_resave_removes_stale_files(model, tok, tmp_path):
    train_with_checkpoint(model, tok, tmp_path)
    assert {"optimizer.safetensors", "trainer.json", "tokenizer.json"} <= {
        p.name for p in model_dir.save_path(tmp_path).iterdir()
    }
    assert config_of(tmp_path)["has_training_state"] is True
    model.save(tmp_path)  # a plain save: no tokenizer attached, no training state
    assert sorted(p.name for p in model_dir.save_path(tmp_path).iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fastlm.lock", "config.json", config_of(tmp_path)["save"]]
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        model_dir.load_training_state(tmp_path)
    assert fastlm.load(tmp_path).tokenizer is None


def test_save_overwrites_previous_model(model, tok, saved):
    other = fastlm.LSTMLM(len(tok), 4, 4, seed=9)
    other.save(saved, tokenizer=tok)
    loaded = fastlm.load(saved)
    assert_same_weights(other, loaded)
    assert loaded.hidden_size == 4


def test_file_permissions(model, tok, tmp_path):
    old = os.umask(0o022)
    try:
        train_with_checkpoint(model, tok, tmp_path)
    finally:
        os.umask(old)
    for path in tmp_path.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o444 == 0o444, f"{path.name} is not readable by everyone: {oct(mode)}"
        assert mode & 0o022 == 0, f"{path.name} is writable by others: {oct(mode)}"


# ================================================================= bad directories


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastlm.load(tmp_path / "nope")


def test_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        fastlm.load(tmp_path)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_missing_file(saved, name):
    (saved / name if name == "config.json" else model_dir.save_path(saved) / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        fastlm.load(saved)


def test_empty_path_is_not_the_current_directory(model, tmp_path, monkeypatch):
    """ "" would silently mean the current directory (config.json, save-*/ and the lock written
    into it); "." says so."""
    monkeypatch.chdir(tmp_path)
    for call in (lambda: model.save(""), lambda: fastlm.load(""), lambda: model_dir.load_training_state("")):
        with pytest.raises(ValueError, match="directory must name a directory, got ''"):
            call()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="directory must be a directory path"):
        fastlm.load(None)


def test_unknown_backend_is_refused_before_reading_anything(saved, monkeypatch):
    monkeypatch.setattr(model_dir, "read_config", None)  # any read would fail otherwise
    with pytest.raises(ValueError, match="^backend must be one of 'cpp', 'numpy', got 'torch'$"):
        fastlm.load(saved, backend="torch")


def test_save_with_a_tokenizer_that_is_not_one(model, tmp_path):
    with pytest.raises(TypeError, match="tokenizer must be a fastlm.Tokenizer or None, got str"):
        model.save(tmp_path / "m", tokenizer="abc")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_file_that_is_a_directory_is_named_as_such(saved, name):
    path = saved / name if name == "config.json" else model_dir.save_path(saved) / name
    path.unlink()
    path.mkdir()
    with pytest.raises(ValueError, match=rf"{name} is a directory, not a regular file"):
        fastlm.load(saved)


def test_missing_tokenizer_that_config_records_is_an_error(saved):
    """config.json says the save has a tokenizer: a model loaded without it would fail only
    at the first text it is given."""
    (model_dir.save_path(saved) / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json is missing, but config\.json records a tokenizer"):
        fastlm.load(saved)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_tokenizer_that_is_not_a_regular_file_is_refused(saved, kind):
    path = model_dir.save_path(saved) / "tokenizer.json"
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)  # would block the open for ever
    else:
        path.symlink_to("/dev/zero")  # would be read until the memory runs out
    with pytest.raises(ValueError, match=r"tokenizer\.json is a (FIFO|character device), not a regular file"):
        fastlm.load(saved)


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe\x00garbage", b'{"format_version": 1,'])
def test_corrupted_config(saved, content):
    (saved / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"config\.json is corrupted"):
        fastlm.load(saved)


@pytest.mark.parametrize(
    "config, message",
    [
        ([1, 2, 3], "has no format_version"),
        ({"model": {}}, "has no format_version"),
        ({"format_version": "1"}, "has no format_version"),
        ({"format_version": 1, "save_id": "x"}, "lacks the entry 'model'"),
        ({"format_version": 1, "model": {}}, "lacks the entry 'save_id'"),
    ],
)
def test_config_without_required_entries(saved, config, message):
    write_config(saved, config)
    with pytest.raises(ValueError, match=message):
        fastlm.load(saved)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(vocab_size=-3), "vocab_size must be a positive integer"),
        (dict(hidden_size="big"), "hidden_size must be an int"),
        (dict(colour="blue"), "colour"),
        (dict(dropout=2.0), "dropout must lie in"),
        (dict(hidden_size=10**400), r"hidden_size=about 10\*\*400, num_layers=2 make about 10\*\*801 parameters"),
    ],
)
def test_config_with_invalid_model_section(saved, change, message):
    config = config_of(saved)
    config["model"].update(change)
    write_config(saved, config)
    with pytest.raises(ValueError, match=rf"config\.json has an invalid model section: .*{message}"):
        fastlm.load(saved)


@pytest.mark.parametrize("key", ["vocab_size", "embed_dim", "hidden_size", "num_layers", "dropout", "seed"])
def test_config_without_a_setting_fastlm_always_writes(saved, key):
    """A default in its place would build another model than the one saved, and blame its weights."""
    config = config_of(saved)
    del config["model"][key]
    write_config(saved, config)
    with pytest.raises(ValueError, match=rf"config\.json has an invalid model section: it lacks '{key}'$"):
        fastlm.load(saved)


def test_config_with_an_integer_past_pythons_digit_limit(saved):
    (saved / "config.json").write_text(json.dumps(config_of(saved)).replace('"seed": 5', '"seed": ' + "9" * 5000))
    with pytest.raises(ValueError, match=r"config\.json is corrupted: .*digits"):
        fastlm.load(saved)


def test_model_section_not_a_dict(saved):
    config = config_of(saved)
    config["model"] = [1, 2]
    write_config(saved, config)
    with pytest.raises(ValueError, match="invalid model section"):
        fastlm.load(saved)


def test_config_disagreeing_with_weights(saved):
    config = config_of(saved)
    config["model"]["hidden_size"] = 9
    write_config(saved, config)
    with pytest.raises(
        ValueError, match=r"model\.safetensors: .*lstm.weight_ih_l0.*shape \(32, 6\), expected \(36, 6\)"
    ):
        fastlm.load(saved)


@pytest.mark.parametrize("version", [3, 99])
def test_future_format_version(saved, version):
    config = config_of(saved)
    config["format_version"] = version
    write_config(saved, config)
    with pytest.raises(ValueError, match=f"format version {version} by a newer fastlm.*upgrade fastlm"):
        fastlm.load(saved)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "header-only"])
def test_corrupted_weights(saved, damage):
    path = model_dir.save_path(saved) / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b"", "header-only": data[:8]}[
            damage
        ]
    )
    with pytest.raises(ValueError, match=r"cannot read .*model\.safetensors"):
        fastlm.load(saved)


def test_weights_from_another_save(model, tok, tmp_path):
    model.save(tmp_path / "a", tokenizer=tok)
    model.save(tmp_path / "b", tokenizer=tok)  # identical weights, a different save
    (model_dir.save_path(tmp_path / "a") / "model.safetensors").replace(
        model_dir.save_path(tmp_path / "b") / "model.safetensors"
    )
    with pytest.raises(ValueError, match="does not belong to the same save"):
        fastlm.load(tmp_path / "b")


def _rewrite_weights(directory, edit):
    tensors = load_file(model_dir.save_path(directory) / "model.safetensors")
    edit(tensors)
    save_file(
        tensors,
        model_dir.save_path(directory) / "model.safetensors",
        metadata={"save_id": config_of(directory)["save_id"]},
    )


def rewrite_header(path, change):
    """Rewrite a safetensors file's JSON header through change(header), the data left as it is."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length :])


def test_overlapping_tensors_are_refused(saved):
    """Two entries sharing bytes (the safetensors format forbids it; its reader says "invalid offset")."""
    path = model_dir.save_path(saved) / "model.safetensors"

    def overlap(header):
        header["lstm.bias_hh_l0"]["data_offsets"] = header["lstm.bias_ih_l0"]["data_offsets"]

    rewrite_header(path, overlap)
    with pytest.raises(
        ValueError, match=r"model\.safetensors: entry 'lstm\.bias_(ih|hh)_l0' overlaps entry 'lstm\.bias_(ih|hh)_l0'"
    ):
        fastlm.load(saved)


def test_bytes_that_belong_to_no_tensor_are_refused(saved):
    path = model_dir.save_path(saved) / "model.safetensors"

    def drop_the_first(header):
        first = min((name for name in header if name != "__metadata__"), key=lambda n: header[n]["data_offsets"])
        del header[first]

    rewrite_header(path, drop_the_first)
    with pytest.raises(ValueError, match=r"model\.safetensors: bytes 0 to \d+ before entry '.+' belong to no tensor"):
        fastlm.load(saved)


def test_bytes_after_the_last_tensor_are_refused(saved):
    path = model_dir.save_path(saved) / "model.safetensors"
    with open(path, "ab") as f:
        f.write(b"\0" * 12)
    with pytest.raises(ValueError, match=r"model\.safetensors: 12 bytes after the last tensor's data"):
        fastlm.load(saved)


def test_what_fastlm_writes_tiles_the_data_exactly(model, tok, tmp_path):
    """Both files a checkpoint writes pass the check (and safetensors' own reader)."""
    train_with_checkpoint(model, tok, tmp_path)
    for name in ("model.safetensors", "optimizer.safetensors"):
        path = model_dir.save_path(tmp_path) / name
        model_dir._read_header(path, model_dir.MAX_HEADER_BYTES)
        load_file(path)


def test_misshaped_tensor_is_named(saved):
    _rewrite_weights(saved, lambda t: t.update({"decoder.bias": t["decoder.bias"][:-1].copy()}))
    with pytest.raises(ValueError, match=r"model\.safetensors: .*'decoder\.bias' has shape"):
        fastlm.load(saved)


def test_missing_tensor_is_named(saved):
    _rewrite_weights(saved, lambda t: t.pop("lstm.bias_hh_l1"))
    with pytest.raises(ValueError, match=r"model\.safetensors: .*missing 'lstm\.bias_hh_l1'"):
        fastlm.load(saved)


def test_extra_tensor_is_named(saved):
    _rewrite_weights(saved, lambda t: t.update({"lstm.weight_ih_l7": np.zeros((4, 4), np.float32)}))
    with pytest.raises(ValueError, match=r"model\.safetensors: .*unexpected entries 'lstm\.weight_ih_l7'"):
        fastlm.load(saved)


def test_non_finite_tensor_is_named(saved):
    def poison(t):
        t["lstm.weight_hh_l0"][3, 2] = np.nan

    _rewrite_weights(saved, poison)
    with pytest.raises(ValueError, match=r"'lstm\.weight_hh_l0' holds NaN"):
        fastlm.load(saved)


def test_integer_tensor_is_named(saved):
    _rewrite_weights(saved, lambda t: t.update({"decoder.bias": t["decoder.bias"].astype(np.int32)}))
    with pytest.raises(ValueError, match=r"'decoder\.bias' must hold floats"):
        fastlm.load(saved)


def test_tokenizer_vocabulary_mismatch(model, saved):
    fastlm.Tokenizer.fit("abc", level="char").save(model_dir.save_path(saved) / "tokenizer.json")
    with pytest.raises(
        ValueError,
        match=r"tokenizer\.json: the tokenizer has 4 tokens but the model's vocabulary "
        rf"has {model.vocab_size}: they do not belong together",
    ):
        fastlm.load(saved)


def test_corrupted_tokenizer(saved):
    (model_dir.save_path(saved) / "tokenizer.json").write_text('{"type": "fastlm.Tokenizer"')
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        fastlm.load(saved)


def test_save_with_mismatched_tokenizer_writes_nothing(model, tmp_path):
    small = fastlm.Tokenizer.fit("abc", level="char")
    with pytest.raises(ValueError, match="the tokenizer has 4 tokens but the model's vocabulary has"):
        model.save(tmp_path / "m", tokenizer=small)
    assert not (tmp_path / "m").exists()


def test_save_into_a_file_path(model, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    with pytest.raises(OSError):
        model.save(target)
    assert target.read_text() == "keep me"


def test_training_state_checks(model, tok, tmp_path):
    model.fit(tok.encode(V_TEXT * 3), seq_len=8, batch_size=4, epochs=1, checkpoint_dir=tmp_path, progress=False)
    arrays, trainer = model_dir.load_training_state(tmp_path)
    assert trainer["epoch"] == 1 and set(arrays) == {f"{m}.{k}" for m in "mv" for k in model.state_dict()}
    files = model_dir.save_path(tmp_path)
    data = json.loads((files / "trainer.json").read_text())
    (files / "trainer.json").write_text(json.dumps({**data, "save_id": "other"}))
    with pytest.raises(ValueError, match=r"trainer\.json does not belong to the same save"):
        model_dir.load_training_state(tmp_path)
    (files / "trainer.json").write_text(json.dumps(data))
    (files / "optimizer.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"optimizer\.safetensors is missing"):
        model_dir.load_training_state(tmp_path)


def test_training_state_without_the_optimizer(model, tok, tmp_path):
    """optimizer=False (fastlm train --resume's first look) gives the trainer alone; the
    optimizer's arrays come fresh and writeable, for the optimizer to take over."""
    model.fit(tok.encode(V_TEXT * 3), seq_len=8, batch_size=4, epochs=1, checkpoint_dir=tmp_path, progress=False)
    arrays, trainer = model_dir.load_training_state(tmp_path)
    assert model_dir.load_training_state(tmp_path, optimizer=False) == (None, trainer)
    assert all(a.dtype == np.float32 and a.flags.writeable and a.flags.c_contiguous for a in arrays.values())


def test_training_state_with_empty_tensors(tok, tmp_path):
    """A sparse-embedding checkpoint with no row seen yet has (0, dim) moments: an empty tensor
    has no bytes to read (and a memoryview with a 0 in its shape cannot be cast to bytes)."""
    model = fastlm.LSTMLM(len(tok), embed_dim=6, hidden_size=8, num_layers=2, seed=5)
    fit = dict(seq_len=8, batch_size=4, sparse_embedding=True, checkpoint_dir=tmp_path, progress=False)
    model.fit(tok.encode(V_TEXT * 3), epochs=1, **fit)
    arrays, trainer = model_dir.load_training_state(tmp_path)
    empty = {**arrays, **{name: arrays[name][:0] for name in ("sparse.seen", "sparse.m", "sparse.v")}}
    model_dir.write(tmp_path, model, tokenizer=tok, training=(empty, trainer))
    loaded, _ = model_dir.load_training_state(tmp_path)
    assert {name: loaded[name].shape for name in empty} == {name: array.shape for name, array in empty.items()}
    model.fit(tok.encode(V_TEXT * 3), epochs=2, resume=True, **fit)  # the moments start again from the empty ones


def test_take_weights_takes_the_arrays_over_after_the_checks(model):
    weights = model.state_dict()
    other = fastlm.LSTMLM(model.vocab_size, embed_dim=6, hidden_size=8, num_layers=2, seed=6)
    other.take_weights(weights)
    assert all(other.params[name] is weights[name] for name in weights)
    bad = {**model.state_dict(), "embedding.weight": np.full_like(weights["embedding.weight"], np.nan)}
    with pytest.raises(ValueError, match="'embedding.weight' holds NaN"):
        other.take_weights(bad)
    assert other.params["embedding.weight"] is weights["embedding.weight"]  # unchanged by the refusal


def test_load_into_replaces_the_weights_with_the_saved_ones(model, saved):
    other = fastlm.LSTMLM(model.vocab_size, embed_dim=6, hidden_size=8, num_layers=2, dropout=0.25, seed=5)
    other.params = {name: np.zeros_like(value) for name, value in other.params.items()}
    assert model_dir.load_into(saved, other) is not None  # the tokenizer
    assert_same_weights(other, model)
    assert all(p.flags.writeable and p.flags.c_contiguous and p.dtype == np.float32 for p in other.params.values())


# ================================================================= atomic saves


def _no_temporaries(directory):
    """Nothing but config.json, the lock and the one save config.json names."""
    expected = {"config.json", model_dir.LOCK_FILE, config_of(directory)["save"]}
    leftovers = [p.name for p in directory.iterdir() if p.name not in expected]
    assert leftovers == [], leftovers


def _failing_after_partial_write(real):
    """A writer that writes part of its file, then fails as a full disk would."""

    def fail(*args, **kwargs):
        path = kwargs.get("filename") or args[1]
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    return fail


@pytest.mark.parametrize("where", ["weights", "tokenizer", "config", "optimizer", "trainer"])
def test_failed_save_leaves_previous_files_intact(model, tok, tmp_path, monkeypatch, where):
    directory = tmp_path / "m"
    train_with_checkpoint(model, tok, directory)
    before = snapshot(directory)
    other = fastlm.LSTMLM(len(tok), 6, 8, num_layers=2, dropout=0.25, seed=6)
    training_state = model_dir.load_training_state(directory)
    calls = []

    if where in ("weights", "optimizer"):
        import safetensors.numpy

        real = safetensors.numpy.save_file

        def save_file_failing(tensors, filename, metadata=None):
            calls.append(filename)
            is_optimizer = any(k.startswith("m.") for k in tensors)
            if is_optimizer == (where == "optimizer"):
                return _failing_after_partial_write(real)(tensors, filename)
            return real(tensors, filename, metadata=metadata)

        monkeypatch.setattr(safetensors.numpy, "save_file", save_file_failing)
    elif where == "tokenizer":

        def tokenizer_save_failing(self, path):
            calls.append(path)
            with open(path, "w") as f:
                f.write('{"type": "fastl')
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(fastlm.Tokenizer, "write_json", tokenizer_save_failing)
    else:
        real_dump = json.dump

        def dump_failing(data, f, **kw):
            calls.append(f.name)
            if ("format_version" in data) == (where == "config"):
                f.write('{"format_version": 1, "sa')
                raise OSError(28, "No space left on device")
            return real_dump(data, f, **kw)

        monkeypatch.setattr(json, "dump", dump_failing)

    with pytest.raises(OSError, match="No space left"):
        model_dir.write(directory, other, tokenizer=tok, training=training_state)
    assert calls, "the failure was not injected"
    monkeypatch.undo()
    assert snapshot(directory) == before  # every previous file byte for byte
    _no_temporaries(directory)
    loaded = fastlm.load(directory)
    assert_same_weights(model, loaded)
    model_dir.load_training_state(directory)


def test_interrupted_save_cleans_up(model, tok, saved, monkeypatch):
    before = snapshot(saved)

    def interrupted(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(fastlm.Tokenizer, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fastlm.LSTMLM(len(tok), 4, 4).save(saved, tokenizer=tok)
    assert snapshot(saved) == before
    _no_temporaries(saved)


def test_successful_save_leaves_no_temporaries(model, tok, saved):
    model.save(saved, tokenizer=tok)
    _no_temporaries(saved)


def test_tied_model_with_init_range_saves_and_loads(tmp_path):
    model = fastlm.LSTMLM(40, embed_dim=12, hidden_size=12, tie_weights=True, init_range=0.1, seed=3)
    model.save(tmp_path / "tied")
    loaded = fastlm.load(tmp_path / "tied")
    assert loaded.config() == model.config()
    state = loaded.state_dict()
    np.testing.assert_array_equal(state["embedding.weight"], state["decoder.weight"])
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(state[name], value)
