"""The model-directory format: config.json, and the save it names.

Format 2 (written since format 1's saves could be lost, see README "Model directory"):

    DIR/config.json                 hyperparameters, versions, and "save": the subdirectory below
    DIR/save-<id>/model.safetensors the state_dict
    DIR/save-<id>/tokenizer.json    (optional)
    DIR/save-<id>/optimizer.safetensors, trainer.json   (checkpoints, for resuming)
    DIR/.fastlm.lock                coordinates savers, loaders and clean-up
    DIR/best/                       (checkpoints with validation) the best epoch: a model directory

A save writes a new save-<id> subdirectory beside the current one, syncs its files and the
directory entries, then switches by one atomic step: the rename of a new config.json over
the old one. Until that rename, config.json names the previous save, untouched; after it,
the new one, complete. Only then is the previous subdirectory removed. So a process killed at
any instant leaves one complete save that load() finds, plus at most some leftovers of
fastlm's own (unreferenced save-* subdirectories, staged .config.json.*.tmp files), which the
next save, load or `fastlm train` removes.

Concurrency: savers and loaders hold a shared flock on .fastlm.lock while they use a save;
removing leftovers needs the exclusive lock and is skipped (left for later) while anyone
holds it, so a load never loses its files to a concurrent save's clean-up, nor a save its
half-written subdirectory to a concurrent load's.

Format 1 (flat: every file directly in DIR, config.json renamed last) is still loaded.

Reading trusts nothing: JSON files are bounded in size and nesting; the safetensors header
is parsed and every name, dtype, shape and offset is checked against config.json before a
byte of tensor data is read or a parameter allocated, and only the expected tensors are read.

This module does not import the model or the training loop: it works on any model object
with config(), state_dict(), take_weights(), parameter_shapes(), vocab_size and tokenizer,
and a model class with saved_shapes() and with_weights() (see docs/architecture.md).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import struct
import uuid
from pathlib import Path

import numpy as np
import safetensors.numpy
from safetensors import safe_open

from fastlm._core import build_info
from fastlm.atomic import fsync_directory, open_regular_file, read_bounded, stage, write_synced
from fastlm.checks import check_bool, check_directory, check_int, check_number, check_tokenizer
from fastlm.tokenizer import Tokenizer

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; saves stay atomic, clean-up is not coordinated
    fcntl = None

FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
LOCK_FILE = ".fastlm.lock"
BEST_DIR = "best"  # in a training checkpoint's directory: a model directory of the best epoch (fit)
SAVE_PREFIX = "save-"
SAVE_NAME = re.compile(r"save-[0-9a-f]{32}")
# Temporaries of fastlm's own: atomic.stage's names for config.json (and, in format 1, the others).
STAGED_NAME = re.compile(
    r"\.(config\.json|model\.safetensors|tokenizer\.json|optimizer\.safetensors|"
    r"trainer\.json)\..+\.tmp"
)
SAVE_FILES = (MODEL_FILE, TOKENIZER_FILE, OPTIMIZER_FILE, TRAINER_FILE)
# What a resumable trainer.json must hold (written by fastlm.training).
TRAINER_KEYS = ("save_id", "settings", "adam_step", "lr", "epoch", "batch", "history")
HISTORY_KEYS = ("epoch", "loss", "val_loss", "val_perplexity", "tokens_per_s", "lr")  # one entry per epoch each

# Size bounds of what is read before anything is checked. config.json is a few hundred
# bytes; trainer.json grows by a few numbers per epoch; tokenizer.json is bounded per token of
# the model's vocabulary (no token of fastlm's tokenizer is near 1 KiB); a safetensors header
# holds about 100 bytes per tensor (safetensors itself refuses headers above 100 MB).
MAX_CONFIG_BYTES = 1 << 20
MAX_TRAINER_BYTES = 64 << 20
TOKENIZER_BASE_BYTES, TOKENIZER_BYTES_PER_TOKEN = 1 << 20, 1 << 10
HEADER_BASE_BYTES, HEADER_BYTES_PER_TENSOR, MAX_HEADER_BYTES = 64 << 10, 256, 100_000_000
DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


def _fault_point(step):
    """Called at each step of a save; does nothing. tests/test_faults.py replaces it to raise
    or to kill the process there, so that every step is proven survivable."""


# ================================================================= small helpers


def _json_writer(data):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    return write


def _tensors_writer(tensors, save_id):
    def write(path):
        try:
            safetensors.numpy.save_file(
                {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={"save_id": save_id}
            )
        except OSError:
            raise
        except Exception as error:  # SafetensorError wraps the OS error (a full disk) in its message
            found = re.search(r"os error (\d+)", str(error))
            code = int(found.group(1)) if found else errno.EIO
            raise OSError(code, os.strerror(code), str(path)) from None

    return write


def _parse_json(raw, path):
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as error:  # not UTF-8, not JSON, or an integer past Python's 4300 digits
        raise ValueError(f"{path} is corrupted: {error}") from None
    except RecursionError:
        raise ValueError(f"{path} is corrupted: its JSON is nested too deeply") from None


def _open(path, hint=""):
    """open_regular_file(path), its FileNotFoundError saying what is missing (hint: why it matters)."""
    try:
        return open_regular_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing{hint}") from None


def _read_json(path, what, max_bytes, hint=""):
    path = Path(path)
    f, size = _open(path, f" ({what}{hint})")
    with f:
        raw, size = read_bounded(f, size, max_bytes)
    if raw is None:
        raise ValueError(f"{path} is corrupted: {size:,} bytes, more than a {what} can be ({max_bytes:,})")
    return _parse_json(raw, path)


# ================================================================= the lock and leftovers


class _DirectoryLock:
    """A flock on DIR/.fastlm.lock: shared while a save is used (read or written), exclusive
    (never waited for) to remove leftovers. No lock where the file cannot be had (a read-only
    format-1 directory) or on systems without flock."""

    def __init__(self, directory, create):
        self.fd = None
        if fcntl is None:
            return
        path = Path(directory) / LOCK_FILE
        try:
            self.fd = os.open(path, (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY, 0o644)
        except OSError:
            if create:
                raise
            return
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def try_exclusive(self):
        """True when no other process holds the lock; the shared lock is given up either way."""
        if self.fd is None:
            return False
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def close(self):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _config_or_empty(directory):
    """The config.json in directory as a dict, or {} (none, unreadable, or not an object):
    for the clean-up and the save, which go on without one."""
    try:
        config = _read_json(Path(directory) / CONFIG_FILE, "model config", MAX_CONFIG_BYTES)
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _current_save_name(directory):
    """The save-* subdirectory config.json names, or None (no config, format 1, or unreadable)."""
    name = _config_or_empty(directory).get("save")
    return name if isinstance(name, str) and SAVE_NAME.fullmatch(name) else None


def _format_version(directory):
    """format_version of the config.json in directory, or None (none, or unreadable)."""
    return _config_or_empty(directory).get("format_version")


def _leftovers(directory, abandoned_saves=False):
    """fastlm's own files in directory that no complete save refers to: staged temporaries,
    and save-* subdirectories other than the one config.json names. Without a readable
    config.json naming a save, subdirectories are kept (a damaged or deleted config.json must
    not cost the weights) unless abandoned_saves says the caller starts afresh. (The flat
    files of a format-1 save are removed by the save that replaces it, not here: a file named
    tokenizer.json beside config.json may be the user's.)"""
    directory = Path(directory)
    current = _current_save_name(directory)
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    found = [p for p in entries if STAGED_NAME.fullmatch(p.name)]
    if current is not None or abandoned_saves:
        found += [p for p in entries if SAVE_NAME.fullmatch(p.name) and p.name != current and p.is_dir()]
    return found


def _remove(paths):
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except OSError:
                pass


def remove_leftovers(directory, abandoned_saves=False):
    """Remove what interrupted saves of fastlm left in directory (see _leftovers), unless a
    save or load is using the directory right now. Returns the names removed. Called by save,
    load and `fastlm train` (which starts afresh: abandoned_saves)."""
    directory = Path(directory)
    if not directory.is_dir() or not _leftovers(directory, abandoned_saves):
        return []
    try:
        lock = _DirectoryLock(directory, create=True)
    except OSError:  # a read-only directory: nothing can be removed anyway
        return []
    with lock:
        if not lock.try_exclusive():
            return []
        found = _leftovers(directory, abandoned_saves)
        _remove(found)
        return sorted(p.name for p in found)


def is_fastlm_file(name):
    """True for the names fastlm itself creates in a model directory."""
    return (
        name in (CONFIG_FILE, LOCK_FILE, BEST_DIR, *SAVE_FILES)
        or bool(SAVE_NAME.fullmatch(name))
        or bool(STAGED_NAME.fullmatch(name))
    )


def remove_best(directory):
    """Remove DIR/best, the best epoch a previous training run kept beside its checkpoint, when it
    is a model directory (a fresh run starts without one; anything else there is left alone)."""
    best = Path(directory) / BEST_DIR
    if best.is_dir() and not best.is_symlink() and (best / CONFIG_FILE).is_file():
        shutil.rmtree(best)


def check_writable(directory):
    """Prove that a save into directory can create its files (creating, then removing, the
    directory and a probe file), so that a training run learns of a read-only --out before its
    first epoch, not after it. Raises the OSError the save would meet."""
    directory = Path(directory)
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".fastlm-probe-{uuid.uuid4().hex}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    finally:
        for path in created:  # deepest first
            try:
                path.rmdir()
            except OSError:
                pass


# ================================================================= saving


def save(model, directory, tokenizer=None):
    """Write config.json, model.safetensors and (if any) tokenizer.json into directory, atomically.

    tokenizer: saved with the model; None saves model.tokenizer (if any).
    """
    write(directory, model, tokenizer=tokenizer if tokenizer is not None else model.tokenizer)


def write(directory, model, tokenizer=None, training=None):
    """Write model (and tokenizer, and training state for resume) into directory as a new save.

    training: None or (optimizer_arrays: dict name -> array, trainer: JSON-able dict).
    The files go to a new save-<id> subdirectory, are synced, and config.json is replaced in
    one rename to name it; a failure or a kill at any point leaves the previous save loadable.
    """
    directory = check_directory("directory", directory)
    check_tokenizer(tokenizer, model.vocab_size)
    directory.mkdir(parents=True, exist_ok=True)
    save_id = uuid.uuid4().hex
    name = SAVE_PREFIX + save_id
    files = {MODEL_FILE: _tensors_writer(model.state_dict(), save_id)}
    if tokenizer is not None:
        files[TOKENIZER_FILE] = tokenizer.write_json
    if training is not None:
        arrays, trainer = training
        files[OPTIMIZER_FILE] = _tensors_writer(arrays, save_id)
        files[TRAINER_FILE] = _json_writer({**trainer, "save_id": save_id})
    config = {
        "format_version": FORMAT_VERSION,
        "fastlm_version": build_info()["version"],
        "save_id": save_id,
        "save": name,
        "model": model.config(),
        "tokenizer": {"level": tokenizer.level, "size": len(tokenizer)} if tokenizer is not None else None,
        "has_training_state": training is not None,
    }
    with _DirectoryLock(directory, create=True) as lock:  # shared: no clean-up removes our subdirectory
        replaces_format_1 = _format_version(directory) == 1
        subdirectory, staged = directory / name, None
        try:
            subdirectory.mkdir()
            _fault_point("created the save subdirectory")
            for file, writer in files.items():
                write_synced(subdirectory / file, writer)
                _fault_point(f"wrote {file}")
            fsync_directory(subdirectory)
            fsync_directory(directory)  # the subdirectory's own entry
            _fault_point("synced the save subdirectory")
            staged = stage(directory / CONFIG_FILE, _json_writer(config))
            _fault_point("staged config.json")
            os.replace(staged, directory / CONFIG_FILE)  # the switch: one atomic step
        except BaseException:
            if staged is not None:
                Path(staged).unlink(missing_ok=True)
            shutil.rmtree(subdirectory, ignore_errors=True)
            raise
        _fault_point("renamed config.json")
        fsync_directory(directory)
        _fault_point("synced the directory")
        if lock.try_exclusive():  # else someone is reading the previous save: the next clean-up removes it
            _remove(_leftovers(directory))
            if replaces_format_1:  # the flat files of the format-1 save this one replaced
                _remove([directory / file for file in SAVE_FILES if (directory / file).is_file()])
            _fault_point("removed the previous save")


# ================================================================= reading


def _require_a_save(directory):
    """FileNotFoundError naming the problem when directory holds no config.json, after removing
    the temporaries an interrupted first save left."""
    if directory.is_file():
        raise NotADirectoryError(f"{directory} is a file, not a model directory")
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    if not os.path.lexists(directory / CONFIG_FILE):  # something else in its place: read_config names it
        remove_leftovers(directory)
        if any(SAVE_NAME.fullmatch(p.name) for p in directory.iterdir()):
            raise FileNotFoundError(
                f"{directory / CONFIG_FILE} is missing: {directory} holds no complete save (a "
                "save interrupted before its end leaves a save-* subdirectory without it; "
                "`fastlm train --out` replaces it)"
            )


def read_config(directory):
    directory = Path(directory)
    if directory.is_file():
        raise NotADirectoryError(f"{directory} is a file, not a model directory")
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    config = _read_json(directory / CONFIG_FILE, "model config", MAX_CONFIG_BYTES, ": not a fastlm model directory?")
    version = config.get("format_version") if isinstance(config, dict) else None
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{directory / CONFIG_FILE} has no format_version: not a fastlm model config")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{directory} was written in format version {version} by a newer fastlm; "
            f"this fastlm reads up to version {FORMAT_VERSION}: upgrade fastlm"
        )
    for key in ("save_id", "model") + (("save",) if version >= 2 else ()):
        if key not in config:
            raise ValueError(f"{directory / CONFIG_FILE} lacks the entry {key!r}")
    if version >= 2 and not (isinstance(config["save"], str) and SAVE_NAME.fullmatch(config["save"])):
        raise ValueError(f"{directory / CONFIG_FILE} names an invalid save {config['save']!r}")
    return config


def save_path(directory, config=None):
    """The directory holding the current save's files: DIR/save-<id> (format 2) or DIR (format 1)."""
    directory = Path(directory)
    config = read_config(directory) if config is None else config
    return directory / config["save"] if config["format_version"] >= 2 else directory


def _read_header(path, max_header):
    """(metadata, entries) of a safetensors file, every entry checked against the file's size."""
    path = Path(path)
    f, size = _open(path)
    with f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"cannot read {path}: {size} bytes, not a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, max_header):
            raise ValueError(
                f"cannot read {path}: its header claims {length:,} bytes, the file has {size:,} "
                f"and a header of this model at most {max_header:,}"
            )
        header = _parse_json(f.read(length), path)
    if not isinstance(header, dict):
        raise ValueError(f"cannot read {path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    data_bytes = size - 8 - length
    for name, entry in header.items():
        what = f"cannot read {path}: entry {name!r}"
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("shape"), list)
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
        ):
            raise ValueError(f"{what} is malformed")
        shape, (begin, end) = entry["shape"], entry["data_offsets"]
        if entry.get("dtype") not in DTYPES:
            raise ValueError(f"{what} must hold floats ({', '.join(DTYPES)}), got dtype {entry.get('dtype')!r}")
        if len(shape) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"{what} has an invalid shape {shape}")
        if (
            not all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end))
            or not 0 <= begin <= end <= data_bytes
        ):
            raise ValueError(f"{what} lies outside the file's {data_bytes:,} data bytes ({begin}, {end})")
        if end - begin != math.prod(shape) * np.dtype(DTYPES[entry["dtype"]]).itemsize:
            raise ValueError(f"{what}: shape {shape} does not match its {end - begin:,} bytes")
    _check_tiling(path, header, data_bytes)
    return metadata if isinstance(metadata, dict) else {}, header


def _check_tiling(path, entries, data_bytes):
    """The entries' data must cover the data region exactly, one after the other, as the
    safetensors format requires (and its own reader checks): no two tensors sharing bytes,
    no gap, nothing after the last. Overlaps are looked for first: an entry moved onto
    another's bytes also leaves a gap where it was, and the moved entry is the one to name."""
    ordered = sorted(entries.items(), key=lambda item: item[1]["data_offsets"])
    for (before, previous), (name, entry) in zip(ordered, ordered[1:]):
        if entry["data_offsets"][0] < previous["data_offsets"][1]:
            raise ValueError(
                f"cannot read {path}: entry {name!r} overlaps entry {before!r} (data_offsets "
                f"{entry['data_offsets']} and {previous['data_offsets']})"
            )
    covered = 0
    for name, entry in ordered:
        if entry["data_offsets"][0] != covered:
            raise ValueError(
                f"cannot read {path}: bytes {covered} to {entry['data_offsets'][0]} before entry {name!r} "
                "belong to no tensor"
            )
        covered = entry["data_offsets"][1]
    if covered != data_bytes:
        raise ValueError(
            f"cannot read {path}: {data_bytes - covered:,} bytes after the last tensor's data "
            f"(the tensors cover {covered:,} of the file's {data_bytes:,} data bytes)"
        )


def _check_entries(path, entries, expected, optional=()):
    """Names and shapes of a header against the (name, shape) pairs config.json implies, taken
    lazily (the first few missing names end the check); nothing is read from the data yet."""
    shapes, missing = {}, []
    for name, shape in expected:
        if name in entries:
            shapes[name] = shape
        else:
            missing.append(name)
            if len(missing) == 5:
                break
    if missing:
        more = " and more" if len(missing) == 5 else ""
        raise ValueError(f"{path}: missing {', '.join(map(repr, missing))}{more}")
    extra = [name for name in entries if name not in shapes and not any(o.fullmatch(name) for o in optional)]
    if extra:
        shown = ", ".join(map(repr, extra[:5])) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ValueError(f"{path}: unexpected entries {shown}")
    for name, shape in shapes.items():
        if tuple(entries[name]["shape"]) != tuple(shape):
            raise ValueError(
                f"{path}: entry {name!r} has shape {tuple(entries[name]['shape'])}, expected "
                f"{tuple(shape)} from {CONFIG_FILE}"
            )


def _read_tensors(path, names, save_id):
    """The named tensors of a checked file, one at a time, as NumPy arrays."""
    try:
        with safe_open(str(path), framework="np") as f:
            found_id = (f.metadata() or {}).get("save_id")
            if found_id != save_id:
                raise ValueError(
                    f"{path} does not belong to the same save as {CONFIG_FILE} "
                    "(an interrupted format-1 save?); save the model again"
                )
            return {name: f.get_tensor(name) for name in names}
    except ValueError:
        raise
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read {path}: {error}") from None


def _read_into(f, view):
    """Fill view (a writable byte memoryview) from f's position; a short file is an error."""
    done = 0
    while done < len(view):
        count = f.readinto(view[done:])
        if not count:
            return False
        done += count
    return True


def _read_weights(path, metadata, entries, names, save_id, as_float32=True):
    """The named tensors of a checked file, each read from the file straight into a new
    array (float32 as stored; float16 and float64 converted one tensor at a time): no
    second copy of the weights exists at any moment, unlike safetensors' reader, whose
    arrays are views of read-only buffers that the model would copy. as_float32=False
    keeps each stored type (in the machine's byte order): the optimizer file's float64
    step count and ids."""
    if metadata.get("save_id") != save_id:
        raise ValueError(
            f"{path} does not belong to the same save as {CONFIG_FILE} "
            "(an interrupted format-1 save?); save the model again"
        )
    weights = {}
    with open(path, "rb", buffering=0) as f:
        (length,) = struct.unpack("<Q", f.read(8))
        for name in names:
            entry = entries[name]
            stored = np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<")
            array = np.empty(entry["shape"], stored)
            f.seek(8 + length + entry["data_offsets"][0])
            # an empty tensor (a sparse moment with no row yet) has nothing to read, and its view cannot be cast
            if array.size and not _read_into(f, memoryview(array).cast("B")):
                raise ValueError(f"cannot read {path}: entry {name!r} is cut short")
            if not as_float32:
                array = array.astype(array.dtype.newbyteorder("="), copy=False)  # a copy on big-endian only
            elif array.dtype != np.float32:  # another width, or a big-endian machine
                with np.errstate(over="ignore"):  # beyond float32's range: the model's check reports it
                    array = array.astype(np.float32)
            weights[name] = array
    return weights


def _header_bound(config, extra_tensors=0):
    """The largest safetensors header a model of config's num_layers can have (4 L + 3 tensors)."""
    layers = config["model"].get("num_layers", 1) if isinstance(config["model"], dict) else 1
    tensors = 4 * layers + 3 if isinstance(layers, int) and layers > 0 else 3
    return min(MAX_HEADER_BYTES, HEADER_BASE_BYTES + HEADER_BYTES_PER_TENSOR * (tensors + extra_tensors))


def load(directory, model_class, backend="cpp"):
    """The model saved in directory, as a model_class, with its tokenizer (model.tokenizer, or None)."""
    directory = check_directory("directory", directory)
    _require_a_save(directory)
    with _DirectoryLock(directory, create=False) as lock:
        config = read_config(directory)
        files = save_path(directory, config)
        path = files / MODEL_FILE
        metadata, entries = _read_header(path, _header_bound(config))
        try:
            shapes = model_class.saved_shapes(config["model"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{directory / CONFIG_FILE} has an invalid model section: {error}") from None
        _check_entries(path, entries, shapes)
        # The model is built around the weights read, never with a random initialisation
        # beside them: one model's memory at the peak.
        weights = _read_weights(path, metadata, entries, list(entries), config["save_id"])  # checked: all expected
        try:
            model = model_class.with_weights(config["model"], weights, backend)
        except (KeyError, TypeError, ValueError) as error:  # dtypes or values that do not fit
            raise ValueError(f"{path}: {error.args[0] if error.args else error}") from None
        del weights
        model.tokenizer = _restore_tokenizer(files, config, model)
        if lock.try_exclusive():
            _remove(_leftovers(directory))
    return model


def load_into(directory, model):
    """Load the weights saved in directory into model, which must have the saved
    configuration (a resumed training run); returns the saved tokenizer or None."""
    directory = check_directory("directory", directory)
    _require_a_save(directory)
    with _DirectoryLock(directory, create=False):
        config = read_config(directory)
        saved = config["model"]
        if saved != model.config():
            changed = [
                f"{k} was {v!r}, now {model.config().get(k)!r}" for k, v in saved.items() if model.config().get(k) != v
            ]
            raise ValueError(f"the checkpoint in {directory} is of a different model: " + "; ".join(changed))
        return _restore(save_path(directory, config), config, model)


def _restore(files, config, model):
    """Weights into model from the checked model.safetensors, and the tokenizer (or None).
    Each tensor is read straight into the array the model then takes over (take_weights),
    as load does: the model's previous weights and the new ones, never a third copy."""
    path = files / MODEL_FILE
    shapes = model.parameter_shapes()
    metadata, entries = _read_header(path, _header_bound(config))
    _check_entries(path, entries, shapes.items())
    weights = _read_weights(path, metadata, entries, list(shapes), config["save_id"])
    try:
        model.take_weights(weights)
    except (KeyError, TypeError, ValueError) as error:  # dtypes or values that do not fit
        raise ValueError(f"{path}: {error.args[0] if error.args else error}") from None
    del weights
    return _restore_tokenizer(files, config, model)


def _restore_tokenizer(files, config, model):
    """The save's tokenizer, checked against the model, or None when the save has none. One
    that config.json records must be there: a model that lost it would load without a word
    of error and then fail at the first text it is given."""
    tokenizer_path = files / TOKENIZER_FILE
    recorded = config.get("tokenizer")
    if not recorded and not os.path.lexists(tokenizer_path):
        return None
    bound = TOKENIZER_BASE_BYTES + TOKENIZER_BYTES_PER_TOKEN * model.vocab_size
    try:
        size = tokenizer_path.stat().st_size  # a FIFO or a device: Tokenizer.load names it
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{tokenizer_path} is missing, but {CONFIG_FILE} records a tokenizer ({recorded})"
        ) from None
    if size > bound:
        raise ValueError(
            f"{tokenizer_path}: {size:,} bytes, more than a tokenizer of "
            f"{model.vocab_size:,} tokens can be ({bound:,}): corrupted"
        )
    tokenizer = Tokenizer.load(tokenizer_path, max_bytes=bound)
    try:
        check_tokenizer(tokenizer, model.vocab_size)
    except ValueError as error:
        raise ValueError(f"{tokenizer_path}: {error}") from None
    return tokenizer


OPTIONAL_TRAINING_ENTRIES = (re.compile(r"carry\.[hc]\.\d+"), re.compile(r"sparse\.(seen|m|v|step)"))


def _optimizer_slots(settings):
    """The per-parameter arrays the checkpoint's optimizer keeps: Adam's two moments, SGD's
    momentum buffer (none without momentum). Checkpoints from before SGD recorded no optimizer."""
    if settings.get("optimizer", "adam") == "sgd":
        return ("momentum",) if settings.get("momentum") else ()
    return ("m", "v")


def _trainer_value(path, trainer, key, check, *args, **options):
    """trainer[key] through a fastlm.checks check, any failure a ValueError naming path and key."""
    try:
        return check(f"{path} is corrupted: {key!r}", trainer[key], *args, **options)
    except TypeError as error:  # a wrong type in a file is a wrong value of the file
        raise ValueError(str(error)) from None


def _check_trainer(trainer, path):
    """trainer.json's values, each of the type and in the range fit writes, and consistent with
    each other: ValueError naming path, the key and the value otherwise, so that a damaged or
    edited file can neither crash the resumed run nor make it train on silently. Keys that
    older checkpoints lack are checked when present. Whether the position fits the run
    (the batch within an epoch, the tokens seen so far) is fit's to check: it knows the data."""
    epoch = _trainer_value(path, trainer, "epoch", check_int, 0)
    for key in ("batch", "adam_step", "epoch_tokens"):
        if key in trainer:
            _trainer_value(path, trainer, key, check_int, 0)
    _trainer_value(path, trainer, "lr", check_number, "(0, inf)")
    for key in ("epoch_loss_sum", "epoch_seconds"):
        if key in trainer:
            _trainer_value(path, trainer, key, check_number, "[0, inf)")
    if "best_val_loss" in trainer:
        _trainer_value(path, trainer, "best_val_loss", check_number, "[0, inf)", allow_none=True)
    if "best_epoch" in trainer:
        _trainer_value(path, trainer, "best_epoch", check_int, 1, epoch, allow_none=True)
    if "epochs_without_improvement" in trainer:
        _trainer_value(path, trainer, "epochs_without_improvement", check_int, 0, epoch)
    if "stopped_early" in trainer:
        _trainer_value(path, trainer, "stopped_early", check_bool)
    for key in ("settings", "history") + (("metadata",) if "metadata" in trainer else ()):
        if not isinstance(trainer[key], dict):
            raise ValueError(f"{path} is corrupted: {key!r} must be a JSON object, got {trainer[key]!r}")
    if trainer.get("epoch_tokens", 0) == 0 and trainer.get("epoch_loss_sum", 0) != 0:
        raise ValueError(
            f"{path} is corrupted: 'epoch_loss_sum' is {trainer['epoch_loss_sum']!r} over 'epoch_tokens' 0"
        )
    _check_history(trainer["history"], epoch, path)


def _check_history(history, epoch, path):
    """The history's lists: one entry per epoch done, each a number (or None: a validation
    figure of a run without validation)."""
    for key in HISTORY_KEYS:
        values = history.get(key)
        if not isinstance(values, list) or len(values) != epoch:
            shown = f"{len(values)} entries" if isinstance(values, list) else repr(values)
            raise ValueError(
                f"{path} is corrupted: 'history' {key!r} must be a list of one entry per epoch done "
                f"({epoch}), got {shown}"
            )
        for value in values:
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{path} is corrupted: 'history' {key!r} holds {value!r}, not a number")


def load_training_state(directory, optimizer=True):
    """(optimizer arrays, trainer dict) of a checkpoint, for resuming. optimizer=False reads
    and checks the trainer alone and gives (None, trainer): the optimizer's arrays are twice
    the model's size under Adam, not worth reading to look at the position or the settings."""
    directory = check_directory("directory", directory)
    if directory.is_dir():
        remove_leftovers(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{directory} holds no training checkpoint to resume from "
            f"({'no ' + CONFIG_FILE if directory.is_dir() else 'no such directory'})"
        )
    with _DirectoryLock(directory, create=False):
        config = read_config(directory)
        files = save_path(directory, config)
        if not config.get("has_training_state") or not (files / TRAINER_FILE).is_file():
            raise FileNotFoundError(
                f"{directory} holds no training checkpoint to resume from (train with a checkpoint directory first)"
            )
        trainer = _read_json(files / TRAINER_FILE, "training position", MAX_TRAINER_BYTES)
        missing = [key for key in TRAINER_KEYS if not isinstance(trainer, dict) or key not in trainer]
        if missing:
            raise ValueError(f"{files / TRAINER_FILE} is corrupted: it lacks {', '.join(missing)}")
        if trainer.get("save_id") != config["save_id"]:
            raise ValueError(f"{files / TRAINER_FILE} does not belong to the same save as {CONFIG_FILE}")
        _check_trainer(trainer, files / TRAINER_FILE)
        if not optimizer:
            return None, trainer
        path = files / OPTIMIZER_FILE
        _, model_entries = _read_header(files / MODEL_FILE, _header_bound(config))
        settings = trainer.get("settings") if isinstance(trainer.get("settings"), dict) else {}
        model = config["model"] if isinstance(config["model"], dict) else {}
        no_dense_state = {"embedding.weight"} if settings.get("sparse_embedding") is True else set()
        if model.get("tie_weights") is True:
            no_dense_state.add("decoder.weight")  # one matrix with the embedding: its state is the embedding's
        expected = [
            (f"{slot}.{name}", entry["shape"])
            for slot in _optimizer_slots(settings)
            for name, entry in model_entries.items()
            if name not in no_dense_state
        ]
        metadata, entries = _read_header(path, 2 * _header_bound(config, extra_tensors=64))
        _check_entries(path, entries, expected, OPTIONAL_TRAINING_ENTRIES)
        # Fresh writeable arrays, which the optimizer takes over (Adam's are twice the model).
        return _read_weights(path, metadata, entries, list(entries), config["save_id"], as_float32=False), trainer
