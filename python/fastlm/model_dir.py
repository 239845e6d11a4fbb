"""The model-directory format: config.json, model.safetensors, tokenizer.json and, for
resuming training, optimizer.safetensors and trainer.json.

Every file is written to a temporary name in the same directory and renamed into place,
so a crash never leaves a half-written file. config.json is written last and carries a
save id that the other files repeat: files from different saves (an interrupted save)
are detected on loading instead of being mixed silently.

This module does not import the model or the training loop: it works on any model object
with config(), state_dict(), load_state_dict(), vocab_size and tokenizer (see
docs/architecture.md), and load() builds the class it is given.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import safetensors.numpy
from safetensors import safe_open

from fastlm._core import build_info
from fastlm.atomic import stage
from fastlm.checks import check_tokenizer
from fastlm.tokenizer import Tokenizer

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
# What a resumable trainer.json must hold (written by fastlm.training).
TRAINER_KEYS = ("save_id", "settings", "adam_step", "lr", "epoch", "batch", "history")


def _json_writer(data):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    return write


def _tensors_writer(tensors, save_id):
    return lambda tmp: safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
                                 metadata={"save_id": save_id})


def _load_tensors(path, save_id):
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


def save(model, directory, tokenizer=None):
    """Write config.json, model.safetensors and (if any) tokenizer.json into directory, atomically.

    tokenizer: saved with the model; None saves model.tokenizer (if any).
    """
    write(directory, model, tokenizer=tokenizer if tokenizer is not None else model.tokenizer)


def write(directory, model, tokenizer=None, training=None):
    """Write model (and tokenizer, and training state for resume) into directory.

    training: None or (optimizer_arrays: dict name -> array, trainer: JSON-able dict).
    Every file is first written in full (and synced) to a temporary name; only then are they
    renamed into place, config.json last, so a failure while writing leaves the previous save
    intact. Each rename is atomic; should the process die between two of them, the save id
    shared by the files makes load() refuse the mixed directory instead of mixing saves.
    """
    check_tokenizer(tokenizer, model.vocab_size)
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
        "fastlm_version": build_info()["version"],
        "save_id": save_id,
        "model": model.config(),
        "tokenizer": {"level": tokenizer.level, "size": len(tokenizer)} if tokenizer is not None else None,
        "has_training_state": training is not None,
    })
    staged = {}
    try:
        for name, writer in writers.items():
            staged[name] = stage(directory / name, writer)
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
    if directory.is_file():
        raise NotADirectoryError(f"{directory} is a file, not a model directory")
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


def load(directory, model_class, backend="cpp"):
    """The model saved in directory, as a model_class, with its tokenizer (model.tokenizer, or None)."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        model = model_class(**config["model"], backend=backend)
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
    tensors = _load_tensors(directory / MODEL_FILE, config["save_id"])
    try:
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError) as error:  # names, dtypes or shapes that do not fit config.json
        raise ValueError(f"{directory / MODEL_FILE}: {error.args[0] if error.args else error}") from None
    if not (directory / TOKENIZER_FILE).is_file():
        return None
    tokenizer = Tokenizer.load(directory / TOKENIZER_FILE)
    try:
        check_tokenizer(tokenizer, model.vocab_size)
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
