"""Model directories: config.json, model.safetensors, tokenizer.json and, for resuming
training, optimizer.safetensors and trainer.json.

Every file is written to a temporary name in the same directory and renamed into place,
so a crash never leaves a half-written file. config.json is written last and carries a
save id that the other files repeat: files from different saves (an interrupted save)
are detected on loading instead of being mixed silently.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
# What a resumable trainer.json must hold (written by fastlm.training).
TRAINER_KEYS = ("save_id", "settings", "adam_step", "lr", "epoch", "batch", "history")


def _stage(path, write):
    """Call write(temporary_path) on a new temporary file next to path; returns its name."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        # mkstemp creates 0600 (and safetensors writes its files 0600 too, whatever was there);
        # a saved model is an ordinary readable file
        os.chmod(tmp, 0o644)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path, write):
    """Call write(temporary_path), then rename the temporary file to path."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "directory does not exist", str(parent))
    tmp = _stage(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_writer(data):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    return write


def _tensors_writer(tensors, save_id):
    from safetensors.numpy import save_file
    return lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
                                 metadata={"save_id": save_id})


def _load_tensors(path, save_id):
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="np") as f:
            found_id = (f.metadata() or {}).get("save_id")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read {path}: {error}") from None
    if found_id != save_id:
        raise ValueError(f"{path} does not belong to the same save as {path.parent / CONFIG_FILE} "
                         "(an interrupted save?); save the model again")
    return tensors


def _read_json(path, what):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is corrupted: {error}") from None


def check_tokenizer(model, tokenizer):
    """A tokenizer can only go with a model of the same vocabulary size."""
    if tokenizer is not None and len(tokenizer) != model.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                         f"{model.vocab_size}: they do not belong together")


def save(directory, model, tokenizer=None, training=None):
    """Write model (and tokenizer, and training state for resume) into directory.

    training: None or (optimizer_arrays: dict name -> array, trainer: JSON-able dict).
    Every file is first written in full (and synced) to a temporary name; only then are they
    renamed into place, config.json last, so a failure while writing leaves the previous save
    intact. Each rename is atomic; should the process die between two of them, the save id
    shared by the files makes load() refuse the mixed directory instead of mixing saves.
    """
    check_tokenizer(model, tokenizer)
    from fastlm import __version__
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_id = uuid.uuid4().hex
    writers = {MODEL_FILE: _tensors_writer(model.state_dict(), save_id)}
    if tokenizer is not None:
        writers[TOKENIZER_FILE] = tokenizer.write_json
    if training is not None:
        arrays, trainer = training
        writers[OPTIMIZER_FILE] = _tensors_writer(arrays, save_id)
        writers[TRAINER_FILE] = _json_writer({**trainer, "save_id": save_id})
    writers[CONFIG_FILE] = _json_writer({
        "format_version": FORMAT_VERSION,
        "fastlm_version": __version__,
        "save_id": save_id,
        "model": model.config(),
        "tokenizer": {"level": tokenizer.level, "size": len(tokenizer)} if tokenizer is not None else None,
        "has_training_state": training is not None,
    })
    staged = {}
    try:
        for name, write in writers.items():
            staged[name] = _stage(directory / name, write)
        for name, tmp in staged.items():
            if name == CONFIG_FILE:
                # a plain save must not leave a stale tokenizer or checkpoint that --resume would pick up
                for stale in (TOKENIZER_FILE, OPTIMIZER_FILE, TRAINER_FILE):
                    if stale not in staged:
                        (directory / stale).unlink(missing_ok=True)
            os.replace(tmp, directory / name)
    except BaseException:
        for tmp in staged.values():
            Path(tmp).unlink(missing_ok=True)
        raise


def read_config(directory):
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    config = _read_json(directory / CONFIG_FILE, "not a fastlm model directory?")
    if not isinstance(config, dict) or not isinstance(config.get("format_version"), int):
        raise ValueError(f"{directory / CONFIG_FILE} has no format_version: not a fastlm model config")
    if config["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{directory} was written in format version {config['format_version']} by a newer fastlm; "
                         f"this fastlm reads up to version {FORMAT_VERSION}: upgrade fastlm")
    for key in ("save_id", "model"):
        if key not in config:
            raise ValueError(f"{directory / CONFIG_FILE} lacks the entry {key!r}")
    return config


def load(directory, backend="cpp"):
    """The model saved in directory, with its tokenizer (model.tokenizer, or None)."""
    from fastlm.model import LSTMLM
    directory = Path(directory)
    config = read_config(directory)
    try:
        model = LSTMLM(**config["model"], backend=backend)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{directory / CONFIG_FILE} has an invalid model section: {error}") from None
    model.tokenizer = _restore(directory, config, model)
    return model


def load_into(directory, model):
    """Load the weights saved in directory into model, which must have the saved
    configuration (a resumed training run); returns the saved tokenizer or None."""
    directory = Path(directory)
    config = read_config(directory)
    saved = config["model"]
    if saved != model.config():
        changed = [f"{k} was {v!r}, now {model.config().get(k)!r}" for k, v in saved.items()
                   if model.config().get(k) != v]
        raise ValueError(f"the checkpoint in {directory} is of a different model: " + "; ".join(changed))
    return _restore(directory, config, model)


def _restore(directory, config, model):
    """Weights into model from model.safetensors, and the tokenizer (or None), both checked."""
    from fastlm.tokenizer import Tokenizer
    tensors = _load_tensors(directory / MODEL_FILE, config["save_id"])
    try:
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError) as error:  # names, dtypes or shapes that do not fit config.json
        raise ValueError(f"{directory / MODEL_FILE}: {error.args[0] if error.args else error}") from None
    if not (directory / TOKENIZER_FILE).is_file():
        return None
    tokenizer = Tokenizer.load(directory / TOKENIZER_FILE)
    try:
        check_tokenizer(model, tokenizer)
    except ValueError as error:
        raise ValueError(f"{directory / TOKENIZER_FILE}: {error}") from None
    return tokenizer


def load_training_state(directory):
    """(optimizer arrays, trainer dict) of a checkpoint, for resuming."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory} holds no training checkpoint to resume from "
                                f"({'no ' + CONFIG_FILE if directory.is_dir() else 'no such directory'})")
    config = read_config(directory)
    if not config.get("has_training_state") or not (directory / TRAINER_FILE).is_file():
        raise FileNotFoundError(f"{directory} holds no training checkpoint to resume from "
                                "(train with a checkpoint directory first)")
    trainer = _read_json(directory / TRAINER_FILE, "training position")
    missing = [key for key in TRAINER_KEYS if not isinstance(trainer, dict) or key not in trainer]
    if missing:
        raise ValueError(f"{directory / TRAINER_FILE} is corrupted: it lacks {', '.join(missing)}")
    if trainer.get("save_id") != config["save_id"]:
        raise ValueError(f"{directory / TRAINER_FILE} does not belong to the same save as {CONFIG_FILE}")
    return _load_tensors(directory / OPTIMIZER_FILE, config["save_id"]), trainer
