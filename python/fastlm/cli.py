"""The `fastlm` command: train, generate, eval, score, encode, export, bench (also `python -m fastlm`).

Exit codes: 0 success; 2 usage errors: what argparse refuses (a missing, extra or unknown argument, an
out-of-range option value) and UsageError, what the command line gets wrong that argparse cannot see
(options that do not go together, a path that does not exist or is of the wrong kind, arguments
swapped), reported as argparse reports its own, the usage line then "fastlm COMMAND: error: ...";
1 any other failure (a file that cannot be read or holds the wrong content, a corpus too short, ...),
reported as one line "fastlm COMMAND: error: ..." on stderr; never a traceback; 130 when interrupted.
A failing `fastlm train` writes nothing: inputs are checked before the first checkpoint, and
checkpoints are written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import fastlm
from fastlm import distributed, model_dir, presets, token_file
from fastlm.adaptive import check_cutoffs
from fastlm.checks import check_choice, check_int, check_number
from fastlm.scoring import UnscorableSentence, boundary_id, sentence_ids
from fastlm.threads import MAX_THREADS_PER_CORE, max_threads
from fastlm.tokenizer import check_eos
from fastlm.training import OPTIMIZERS

DEFAULT_DATASET = "python_docs"  # every Python has it: fastlm.datasets.python_docs
USER_ERRORS = (OSError, ValueError, KeyError, TypeError, FloatingPointError, MemoryError, ImportError)
# Every setting of a `fastlm train` run, by its option's dest, with the default used when neither the
# command line nor a --preset gives it. The options default to None in the parser, so that what the
# user typed is known: a preset fills the rest, and --resume takes all of them from the checkpoint
# (where they are recorded, trainer.json's metadata), refusing a typed value that differs.
TRAIN_DEFAULTS = {
    # the data
    "corpus": [],
    "dataset": None,
    "ids": None,
    "tokenizer": None,
    "val_fraction": 0.05,
    "val": None,
    "test": None,
    # the tokenizer
    "level": "char",
    "min_count": 1,
    "max_vocab": None,
    "lowercase": False,
    "split_punctuation": False,
    "eos": None,
    "vocab_size": None,
    # the model
    "embed": 64,
    "hidden": 256,
    "layers": 2,
    "dropout": 0.0,
    "cutoffs": None,
    "div_value": 4.0,
    "tie_weights": False,
    "init_range": None,
    "seed": 0,
    # the training loop
    "seq_len": 100,
    "batch_size": 32,
    "stride": None,
    "epochs": 8,
    "lr": 2e-3,
    "clip_norm": 5.0,
    "optimizer": "adam",
    "momentum": 0.0,
    "nesterov": False,
    "lr_decay": None,
    "lr_decay_epoch": None,
    "stateful": False,
    "sparse_embedding": False,
    "preset": None,
}
TOKENIZER_SETTINGS = ("level", "vocab_size", "min_count", "max_vocab", "lowercase", "split_punctuation", "eos")
# Options of one invocation, not of the run: they may change from one --resume to the next.
PER_INVOCATION = ("out", "resume", "max_steps", "sample_tokens", "progress", "threads", "distributed", "comm_timeout")
# Settings that name files: recorded as absolute paths; on --resume the same file at a new place is accepted.
FILE_SETTINGS = ("corpus", "ids", "tokenizer", "val", "test")
# The Python API's names of the options whose dest differs (presets are written in them).
API_NAMES = {"embed": "embed_dim", "hidden": "hidden_size", "layers": "num_layers"}
EVAL_KEYS = ("loss", "perplexity", "accuracy", "bits_per_token", "tokens")  # eval --json, trainer.json's "test"
RECORD_KEY = "fastlm_train"  # the key of the settings in trainer.json's "metadata"


class UsageError(ValueError):
    """The command line cannot work as typed: exit 2, as argparse's own usage errors. The message names
    the argument and its value."""


def _input_path(argument, path, what="file"):
    """An argument naming a file to read (what="file"), a model directory (what="model directory") or
    either: UsageError when nothing is there or something of the other kind (a file given for a directory)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"argument {argument}: {path} does not exist")
    if what == "file" and path.is_dir():
        raise UsageError(f"argument {argument}: {path} is a directory, not a file")
    if what == "model directory":
        if not path.is_dir():
            raise UsageError(f"argument {argument}: {path} is a file, not a model directory")
        if not (path / model_dir.CONFIG_FILE).exists() and not any(
            model_dir.is_fastlm_file(p.name) for p in path.iterdir()
        ):  # (a directory of fastlm's own files without config.json: fastlm.load says what is wrong)
            raise UsageError(
                f"argument {argument}: {path} is not a model directory (no {model_dir.CONFIG_FILE}); "
                "give a directory written by fastlm train or save()"
            )
    return path


def _output_path(argument, path):
    """An argument naming a file to write: UsageError for a directory or a missing parent directory."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"argument {argument}: {path} is a directory; give the name of the file to write")
    if not path.absolute().parent.is_dir():
        raise UsageError(f"argument {argument}: {path}: the directory {path.absolute().parent} does not exist")
    return path


def _model_and_text_paths(command, directory, file):
    """DIR and FILE of `fastlm eval` or `fastlm score` (FILE None: standard input) checked, FILE's
    Path returned. `fastlm eval FILE DIR` is an easy slip: say which argument is which rather
    than that a directory does not exist or is not a text file."""
    directory = Path(directory)
    if file is not None and directory.is_file() and Path(file).is_dir():
        raise UsageError(
            f"arguments DIR {directory} and FILE {file} look swapped ({directory} is a file, {file} a "
            f"directory): fastlm {command} takes the model directory first, then the text file: "
            f"fastlm {command} {file} {directory}"
        )
    _input_path("DIR", directory, "model directory")
    return None if file is None else _input_path("FILE", file)


def read_text(path):
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a text file")
    data = path.read_bytes()  # FileNotFoundError / PermissionError name the path
    if b"\0" in data:
        raise ValueError(f"{path} holds NUL bytes: a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error.start) from None


def _not_utf8(path, offset):
    """The error for a file whose bytes are not UTF-8 from offset on."""
    return ValueError(f"{path} is not UTF-8 text (invalid byte at offset {offset}); convert it to UTF-8 first")


def _option(convert, check, *bounds):
    """An argparse type: convert the text, then check it with fastlm.checks (the rule of the Python API),
    so that bad values are usage errors (exit 2) saying what was expected."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = text  # not a number: the check reports the wrong type
        try:
            return check("the value", value, *bounds)
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


POSITIVE_INT = _option(int, check_int, 1)
CUTOFFS = _option(lambda text: [int(part) for part in text.split(",")], check_cutoffs)
NONNEGATIVE_INT = _option(int, check_int, 0)
POSITIVE_FLOAT = _option(float, check_number, "(0, inf)")
NONNEGATIVE_FLOAT = _option(float, check_number, "[0, inf)")
FRACTION = _option(float, check_number, "[0, 1)")
PROBABILITY = _option(float, check_number, "(0, 1]")
DECAY = _option(float, check_number, "(0, 1)")
OPTIMIZER = _option(str, check_choice, OPTIMIZERS)
PRESET = _option(str, lambda name, value: presets.get(value).name)
EOS = _option(str, lambda name, value: check_eos(value, "word"))  # the level is checked with the others


def _epoch_line(epochs):
    def report(history):
        k = len(history["epoch"]) - 1
        line = f"epoch {history['epoch'][k]}/{epochs}: loss {history['loss'][k]:.4f}"
        if history["val_loss"][k] is not None:
            line += f", val loss {history['val_loss'][k]:.4f} (perplexity {history['val_perplexity'][k]:.2f})"
        line += f", {history['tokens_per_s'][k]:,.0f} tokens/s, lr {history['lr'][k]:.2g}"
        print(line, flush=True)

    return report


def _print_sample(model, seed, tokens):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = model.generate_text("", max_new_tokens=tokens, seed=seed)
    print("--- sample ---")
    print(text.strip("\n"))
    print("--------------")


def _check_out(out, resume, writer=True):
    """Refuse, before any work, an --out that training could not or should not write into.
    writer=False (an MPI rank other than 0, which never writes there): only what resuming reads
    is checked, so that no rank races rank 0's clean-up and writability probe."""
    if resume:
        if out.exists() and not out.is_dir():
            raise UsageError(f"argument --out: {out} is a file, not a model directory: nothing to resume there")
        if not out.is_dir():
            raise UsageError(
                f"argument --out: nothing to resume: {out} does not exist (pass the --out of the run to "
                "continue, or train without --resume)"
            )
    elif not writer:
        return
    elif out.exists() and not out.is_dir():
        raise UsageError(f"argument --out: {out} is a file, not a model directory")
    elif out.is_dir() and not (out / model_dir.CONFIG_FILE).exists():
        model_dir.remove_leftovers(out, abandoned_saves=True)  # a save killed before its first config.json
        if any(not model_dir.is_fastlm_file(p.name) for p in out.iterdir()):
            raise UsageError(
                f"argument --out: {out} is a non-empty directory holding no fastlm model; choose another --out"
            )


def _training_text(corpus, dataset):
    """The text to train on and how to name it: the CORPUS files, a --dataset, or the default dataset."""
    if corpus and dataset:
        raise UsageError(f"give CORPUS files or --dataset, not both (got {len(corpus)} files and --dataset {dataset})")
    if corpus:
        return "\n".join(read_text(_input_path("CORPUS", p)) for p in corpus), ", ".join(corpus)
    dataset = dataset or DEFAULT_DATASET
    return fastlm.datasets.load(dataset), f"the {dataset} dataset (fastlm.datasets.{dataset})"


def _read_tokenizer(path):
    """--tokenizer: a tokenizer.json, or a model directory holding one."""
    path = _input_path("--tokenizer", path, "tokenizer file or model directory")
    if path.is_dir() and (path / model_dir.CONFIG_FILE).is_file():  # a model directory: its current save's
        path = model_dir.save_path(path)
    return fastlm.Tokenizer.load(path / model_dir.TOKENIZER_FILE if path.is_dir() else path)


def _mpi_world(args):
    """--distributed: MPI.COMM_WORLD, with rank 0 alone printing; None without the option."""
    if not args.distributed:
        if args.comm_timeout is not None:
            raise UsageError(f"--comm-timeout {args.comm_timeout:g} applies to --distributed training only")
        return None
    try:
        comm = args.comm = distributed.world()
    except ImportError as error:
        raise ValueError(str(error)) from None
    if comm.Get_size() == 1:
        print(
            f"fastlm {args.command}: note: --distributed but not started by mpiexec (or with -n 1): "
            "training as one rank",
            file=sys.stderr,
        )
    elif comm.Get_rank() > 0:  # the ranks train together: rank 0 reports for all
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
    distributed.install_excepthook(comm)
    return comm


def _flag(name):
    """The option that sets a setting, as typed."""
    return "CORPUS" if name == "corpus" else "--" + name.replace("_", "-")


def _shown(name, value):
    """A setting as it is typed on the command line (a switch by its --name or --no-name)."""
    if isinstance(value, bool):
        return _flag(name) if value else "--no-" + _flag(name)[2:]
    if value is None or value == []:
        return f"{_flag(name)} (none)"
    if name == "corpus":
        return "CORPUS " + " ".join(value)
    return f"{_flag(name)} {','.join(map(str, value)) if isinstance(value, list) else value}"


def _typed_settings(args):
    """The settings given on the command line (the parser's defaults are None), files as absolute paths."""
    typed = {name: getattr(args, name, None) for name in TRAIN_DEFAULTS}
    typed = {name: value for name, value in typed.items() if value is not None and value != []}
    for name in FILE_SETTINGS:
        if name in typed:
            typed[name] = (
                [os.path.abspath(p) for p in typed[name]] if name == "corpus" else os.path.abspath(typed[name])
            )
    return typed


def preset_settings(name):
    """The settings --preset NAME gives, by option (fastlm.presets holds the numbers)."""
    preset = presets.get(name)
    dests = {api: dest for dest, api in API_NAMES.items()}
    settings = {}
    for part in (preset.tokenizer, preset.model, preset.fit):
        for key, value in part.items():
            if dests.get(key, key) not in TRAIN_DEFAULTS:
                raise ValueError(f"preset {name} sets {key}, for which fastlm train has no option")
            settings[dests.get(key, key)] = value
    return settings


def _new_settings(typed):
    """A new run's settings: the defaults, then the --preset's, then the typed ones."""
    settings = dict(TRAIN_DEFAULTS)
    if "preset" in typed:
        given = preset_settings(typed["preset"])
        settings.update(given)
        line = f"preset {typed['preset']}: " + " ".join(_shown(k, v) for k, v in given.items() if k not in typed)
        overridden = [_shown(k, typed[k]) for k in given if k in typed]
        print(line + (f" (overridden on the command line: {' '.join(overridden)})" if overridden else ""))
    settings.update(typed)
    if settings["val"] is not None:
        settings["val_fraction"] = None  # not used: the validation text is the --val file
    if not settings["corpus"] and settings["ids"] is None and settings["dataset"] is None:
        settings["dataset"] = DEFAULT_DATASET
    return settings


def _same_file(typed, recorded):
    """Whether a typed path names the recorded file. A recorded file no longer where it was may
    be given at its new place (the training corpus is then checked by its token count)."""
    if not os.path.exists(recorded):
        return True
    try:
        return os.path.samefile(typed, recorded)
    except OSError:
        return False


def _same(name, typed, recorded):
    if name in FILE_SETTINGS and recorded:
        typed, recorded = (typed, recorded) if name == "corpus" else ([typed], [recorded])
        return len(typed) == len(recorded) and all(map(_same_file, typed, recorded))
    return typed == recorded


def _resumed_settings(out, trainer, typed, comm):
    """A resumed run's settings: the checkpoint's, with --epochs free to grow; any other typed
    value must equal the checkpoint's."""
    metadata = trainer.get("metadata") if isinstance(trainer.get("metadata"), dict) else {}
    record = metadata.get(RECORD_KEY)
    if isinstance(record, dict):
        recorded = {k: v for k, v in record.items() if k in TRAIN_DEFAULTS}
    else:  # written by fit() alone, or before fastlm train recorded its settings: the training loop's
        saved = trainer.get("settings") if isinstance(trainer.get("settings"), dict) else {}
        recorded = {k: v for k, v in saved.items() if k in TRAIN_DEFAULTS}
        if comm is not None and "batch_size" in recorded:  # the training loop keeps the global batch
            recorded["batch_size"] = max(1, recorded["batch_size"] // comm.Get_size())
    different = [
        f"{_shown(k, v)} (the checkpoint's: {_shown(k, recorded[k])})"
        for k, v in typed.items()
        if k != "epochs" and k in recorded and not _same(k, v, recorded[k])
    ]
    if different:
        raise UsageError(
            f"cannot resume the run in {out} with other settings: {'; '.join(different)}. --resume takes "
            "every setting from the checkpoint (only --epochs may grow): leave these options out"
        )
    settings = {**TRAIN_DEFAULTS, **recorded, **typed}
    if not settings["corpus"] and settings["ids"] is None and settings["dataset"] is None:
        settings["dataset"] = DEFAULT_DATASET
    for name in FILE_SETTINGS:
        paths = settings[name] if name == "corpus" else [settings[name]] if settings[name] else []
        missing = [p for p in paths if not os.path.exists(p)]
        if missing and name not in typed:  # the command line must name it: a usage error
            raise UsageError(
                f"the run's {_flag(name)} file {missing[0]} is gone: "
                f"if it has moved, give {_flag(name)} at its new place"
            )
    if trainer["epoch"] >= settings["epochs"]:
        raise UsageError(
            f"{out} has already been trained for {trainer['epoch']} epoch{'s' if trainer['epoch'] != 1 else ''}; "
            f"pass --epochs greater than {trainer['epoch']} to train on"
        )
    return settings


def _check_eos_level(eos, level, source=""):
    """--eos with a level other than word: refused by train (any run) and encode --fit. source: where
    the --eos came from, when not typed (" (--preset NAME sets)")."""
    if eos is not None and level != "word":
        raise UsageError(
            f"--eos {eos}{source} marks line ends between words: it needs --level word, got --level {level}"
        )


def _check_combinations(s, typed):
    """Settings that cannot go together, refused (exit 2) before any corpus is read."""
    if "val" in typed and "val_fraction" in typed:
        raise UsageError(
            f"give --val FILE or --val-fraction, not both "
            f"(got --val {typed['val']} and --val-fraction {typed['val_fraction']})"
        )
    preset_eos = s["preset"] and "eos" not in typed and s["eos"] is not None
    _check_eos_level(s["eos"], s["level"], f" (--preset {s['preset']} sets)" if preset_eos else "")
    if s["momentum"] and s["optimizer"] != "sgd":
        raise UsageError(
            f"--momentum {s['momentum']} applies to --optimizer sgd (Adam has its own betas), "
            f"got --optimizer {s['optimizer']}"
        )
    if s["nesterov"] and not s["momentum"] > 0:
        raise UsageError(
            f"--nesterov needs --momentum > 0 (Nesterov momentum without momentum is plain SGD), "
            f"got --momentum {s['momentum']}"
        )
    if s["tie_weights"] and s["cutoffs"] is not None:
        raise UsageError(
            "--tie-weights shares the embedding matrix with the full softmax decoder, which --cutoffs "
            f"replaces with an adaptive softmax: give one of them, got --cutoffs {','.join(map(str, s['cutoffs']))}"
        )
    if s["tie_weights"] and s["embed"] != s["hidden"]:
        raise UsageError(
            "--tie-weights shares the embedding matrix with the decoder, which needs --embed equal to "
            f"--hidden; got --embed {s['embed']} and --hidden {s['hidden']}"
        )
    # (typed: a run recorded before these were refused still resumes)
    if "stride" in typed and s["stateful"]:
        raise UsageError(
            f"--stride {s['stride']} spaces shuffled windows; --stateful reads the corpus as contiguous "
            "streams instead, where it would be ignored"
        )
    if "div_value" in typed and s["cutoffs"] is None:
        raise UsageError(f"--div-value {s['div_value']} sizes the adaptive softmax's clusters: give --cutoffs too")
    if s["lr_decay_epoch"] is not None and s["lr_decay"] is None:
        raise UsageError(
            f"--lr-decay-epoch {s['lr_decay_epoch']} multiplies the lr by --lr-decay every epoch from "
            "then on: give --lr-decay too"
        )


def _check_tokenizer_options(o):
    """The tokenizer options of `train` or `encode --fit` (a mapping) that cannot go together, in the
    command line's words (Tokenizer.fit would refuse them too, in the API's, after reading the corpus)."""
    level, vocab_size, max_vocab = o["level"], o["vocab_size"], o["max_vocab"]
    if level == "bpe" and vocab_size is None:
        raise UsageError("--level bpe needs --vocab-size N: how many tokens to learn (at least 257)")
    if level != "bpe" and vocab_size is not None:
        raise UsageError(
            f"--vocab-size {vocab_size} applies to --level bpe only, got --level {level} "
            "(the word and char levels take --max-vocab)"
        )
    if level == "bpe" and max_vocab is not None:
        raise UsageError(f"--level bpe is sized by --vocab-size, not --max-vocab (got --max-vocab {max_vocab})")
    if o["split_punctuation"] and level != "word":
        raise UsageError(f"--split-punctuation applies to --level word only, got --level {level}")
    _check_eos_level(o["eos"], level)
    try:  # the API's remaining rules (--vocab-size below 257, --max-vocab 1, ...)
        fastlm.tokenizer._check_vocab_size(vocab_size, level)
        fastlm.tokenizer._check_options(
            level, o["min_count"], max_vocab, o["lowercase"], o["split_punctuation"], o["eos"]
        )
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


def _option_text(option, path):
    """The text of the file an option names; errors name the option."""
    _input_path(option, path)
    try:
        return read_text(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{option}: {_message(error)}") from None


def _held_out_ids(option, path, text, tokenizer):
    """The ids of a --val or --test text, which must hold tokens the model knows."""
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise ValueError(f"{option} {path} holds {len(ids)} {tokenizer.level} tokens; scoring needs at least 2")
    unknown = {tokenizer.UNK_ID} | ({tokenizer[tokenizer.eos]} if tokenizer.eos is not None else set())
    if all(int(i) in unknown for i in np.unique(ids)):
        raise ValueError(
            f"{option} {path} holds no token of the training vocabulary (all {len(ids):,} are "
            f"{' or '.join(tokenizer.id_to_token(i) for i in sorted(unknown))}): not the corpus's kind of text?"
        )
    return ids


def _training_tokenizer(s, text):
    if s.ids:
        return _read_tokenizer(s.tokenizer)
    return _fit_tokenizer(text, s)


def _fit_tokenizer(text, options):
    """Tokenizer.fit with the tokenizer options of `train` or `encode --fit` (TOKENIZER_SETTINGS)."""
    return fastlm.Tokenizer.fit(text, **{name: getattr(options, name) for name in TOKENIZER_SETTINGS})


def _take_tokenizer_settings(settings, typed, tokenizer, path):
    """With --ids the tokenizer is the --tokenizer file's: its options are recorded as the run's, and an
    option given (typed, or by the --preset) that the file's tokenizer does not have is an error."""
    given = set(typed) | (set(preset_settings(settings["preset"])) if settings["preset"] else set())
    for name in TOKENIZER_SETTINGS:
        # vocab_size is an option of BPE's fit only; the other levels' sizes follow from the text
        actual = (
            (tokenizer.vocab_size if tokenizer.level == "bpe" else None)
            if name == "vocab_size"
            else getattr(tokenizer, name)
        )
        if name in given and settings[name] != actual:
            source = f"--preset {settings['preset']} sets" if name not in typed else "given"
            raise ValueError(
                f"{_shown(name, settings[name])} ({source}) does not match the tokenizer the --ids were "
                f"encoded with ({path}), which has {_shown(name, actual)}"
            )
        settings[name] = actual


def _record_test(out, path, test_ids):
    """Score the saved model on the --test text and add the result to its trainer.json (as "test"):
    the model fastlm.load(out) gives, as `fastlm eval` would score it."""
    model = _load(out)
    result = _metrics(model.evaluate(test_ids))
    arrays, trainer = model_dir.load_training_state(out)
    model_dir.write(
        out, model, tokenizer=model.tokenizer, training=(arrays, {**trainer, "test": {"file": path, **result}})
    )
    return result


def _metrics(result):
    """The metrics `fastlm eval --json` prints and trainer.json's "test" holds, as plain numbers."""
    return {k: int(result[k]) if k == "tokens" else float(result[k]) for k in EVAL_KEYS}


def cmd_train(args):
    out = Path(args.out)
    comm = _mpi_world(args)
    _check_out(out, args.resume, writer=comm is None or comm.Get_rank() == 0)
    typed = _typed_settings(args)
    if args.resume:
        model = _load(out)
        # FileNotFoundError when there is no checkpoint. The trainer alone: fit reads the optimizer's
        # arrays when it resumes, and a copy read here would stay alive for the whole run.
        _, trainer = model_dir.load_training_state(out, optimizer=False)
        settings = _resumed_settings(out, trainer, typed, comm)
        tokenizer, saved = model.tokenizer, trainer.get("settings", {})
    else:
        settings, saved = _new_settings(typed), {}
    _check_combinations(settings, typed)
    if not args.resume and not settings["ids"]:
        _check_tokenizer_options(settings)
    s = argparse.Namespace(**settings)
    if s.ids and (s.corpus or s.dataset):
        raise UsageError("pass either CORPUS text files (or --dataset) or --ids, not both")
    if s.ids and not s.tokenizer and not args.resume:
        raise UsageError(
            "--ids needs --tokenizer (the tokenizer.json, or a model directory, the ids were encoded with)"
        )
    if s.tokenizer and not s.ids:  # it would be ignored: CORPUS text gets a tokenizer fitted on it
        raise UsageError(
            f"--tokenizer {s.tokenizer} goes with --ids (the tokenizer a token file was encoded with); "
            "CORPUS text is read by a tokenizer fitted on it (--level, --min-count, --max-vocab, ...)"
        )
    if s.ids:
        _input_path("--ids", s.ids)
    held_out = {option: _option_text(option, path) for option, path in (("--val", s.val), ("--test", s.test)) if path}
    text, source = (None, s.ids) if s.ids else _training_text(s.corpus, s.dataset)
    if text is not None and not text.strip():
        raise ValueError(f"the corpus is empty: {source}")
    if not args.resume:
        tokenizer = _training_tokenizer(s, text)
        if s.ids:
            _take_tokenizer_settings(settings, typed, tokenizer, s.tokenizer)
        model = fastlm.LSTMLM(
            len(tokenizer),
            s.embed,
            s.hidden,
            s.layers,
            dropout=s.dropout,
            seed=s.seed,
            cutoffs=s.cutoffs,
            div_value=s.div_value,
            tie_weights=s.tie_weights,
            init_range=s.init_range,
        )
    val_ids = _held_out_ids("--val", s.val, held_out["--val"], tokenizer) if s.val else None
    test_ids = _held_out_ids("--test", s.test, held_out["--test"], tokenizer) if s.test else None
    ids = fastlm.open_ids(s.ids, vocab_size=len(tokenizer)) if s.ids else tokenizer.encode(text)
    n_val = 0 if s.val else int(len(ids) * s.val_fraction)
    train_ids = ids
    if n_val >= 2:
        train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    if len(train_ids) < s.seq_len + 1:
        held = f" ({len(train_ids):,} after holding out {n_val:,} for validation)" if n_val >= 2 else ""
        raise ValueError(
            f"the corpus is too short: {len(ids):,} {tokenizer.level} tokens{held}; "
            f"--seq-len {s.seq_len} needs at least {s.seq_len + 1}"
        )
    if saved.get("data_tokens", len(train_ids)) != len(train_ids):
        raise ValueError(
            f"{out} was trained on {saved['data_tokens']:,} tokens, this corpus gives {len(train_ids):,}: "
            "resume with the same CORPUS files and --val-fraction"
        )
    validation = "" if val_ids is None else f", validating on {len(val_ids):,}" + (f" ({s.val})" if s.val else "")
    print(
        f"corpus: {source}: {len(ids):,} {tokenizer.level} tokens, vocabulary {len(tokenizer):,}; "
        f"training on {len(train_ids):,}{validation or ', validating on 0'}"
        + (f", testing on {len(test_ids):,} ({s.test})" if test_ids is not None else "")
    )
    decoder = f"; adaptive softmax, cutoffs {','.join(map(str, model.cutoffs))}" if model.cutoffs else ""
    tied = ", tied embedding and decoder" if model.tie_weights else ""
    print(
        f"model: embed {model.embed_dim}, hidden {model.hidden_size}, layers {model.num_layers}{tied}{decoder}; "
        f"{fastlm.get_num_threads()} threads, {fastlm.build_info()['simd']}; saving to {out.absolute()}",
        flush=True,
    )
    if not args.resume and (out / model_dir.CONFIG_FILE).exists():
        print(f"fastlm train: note: replacing the model in {out} (--resume continues it instead)", file=sys.stderr)
    started = time.perf_counter()
    history = model.fit(
        train_ids,
        seq_len=s.seq_len,
        batch_size=s.batch_size,
        epochs=s.epochs,
        lr=s.lr,
        stride=s.stride,
        val_ids=val_ids,
        clip_norm=s.clip_norm,
        checkpoint_dir=out,
        resume=args.resume,
        tokenizer=tokenizer,
        progress=args.progress,
        max_batches=args.max_steps,
        callback=_epoch_line(s.epochs),
        comm=comm,
        comm_timeout=distributed.DEFAULT_TIMEOUT if args.comm_timeout is None else args.comm_timeout,
        sparse_embedding=s.sparse_embedding,
        optimizer=s.optimizer,
        momentum=s.momentum,
        nesterov=s.nesterov,
        lr_decay=s.lr_decay,
        lr_decay_epoch=s.lr_decay_epoch,
        stateful=s.stateful,
        metadata={RECORD_KEY: settings},
    )
    elapsed = time.perf_counter() - started
    if comm is not None and comm.Get_rank() > 0:
        return 0
    if "interrupted" in history:  # --max-steps stopped it before the last epoch's end
        print(
            f"stopped after {args.max_steps} steps (--max-steps), {len(history['epoch'])} of {s.epochs} epochs "
            f"complete, in {elapsed:.1f} s; checkpoint saved in {out} (--resume continues)"
        )
    else:
        print(f"trained in {elapsed:.1f} s; model saved in {out}")
    if val_ids is not None:
        result = model.evaluate(val_ids, seq_len=s.seq_len, batch_size=s.batch_size)
        print(
            f"validation: loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}, "
            f"accuracy {result['accuracy']:.3f}"
        )
    if test_ids is not None and "interrupted" not in history:
        result = _record_test(out, s.test, test_ids)
        print(
            f"test: loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}, "
            f"accuracy {result['accuracy']:.3f} ({result['tokens']:,} tokens of {s.test} scored, each after the "
            "one before it; saved in trainer.json)"
        )
    if args.sample_tokens:
        model.tokenizer = tokenizer
        _print_sample(model, s.seed, args.sample_tokens)
    return 0


def _text_chunks(paths, size=1 << 20):
    """The files' text joined by newlines, a chunk at a time (for fitting a tokenizer on a corpus of any size)."""
    for k, path in enumerate(paths):
        if k:
            yield "\n"
        yield from fastlm.tokenizer._file_chunks(path, "utf-8", "strict", size)


def cmd_encode(args):
    try:
        return _encode(args)
    except fastlm.tokenizer.TextDecodeError as error:  # its message's advice is the Python API's
        raise _not_utf8(error.path, error.offset) from None


def _encode(args):
    out, tokenizer_path = _output_path("--out", args.out), Path(args.tokenizer)
    for path in args.corpus:
        _input_path("CORPUS", path)
    if args.fit:
        _check_tokenizer_options(vars(args))
        if not tokenizer_path.is_dir():
            _output_path("--tokenizer", tokenizer_path)
        tokenizer = _fit_tokenizer(_text_chunks(args.corpus), args)
        tokenizer.save(tokenizer_path / model_dir.TOKENIZER_FILE if tokenizer_path.is_dir() else tokenizer_path)
    else:
        tokenizer = _read_tokenizer(tokenizer_path)
    started = time.perf_counter()
    header = token_file.encode_files(args.corpus, tokenizer, out)
    print(
        f"{out}: {header['tokens']:,} {tokenizer.level} tokens of {', '.join(args.corpus)}, vocabulary "
        f"{header['vocab_size']:,}, {header['dtype'].name} ids, in {time.perf_counter() - started:.1f} s"
    )
    return 0


def _load(directory):
    """The model saved in directory, which must include its tokenizer (the commands read and write text)."""
    model = fastlm.load(directory)
    if model.tokenizer is None:
        raise FileNotFoundError(
            f"{Path(directory) / 'tokenizer.json'} is missing: without it the model cannot read or write text"
        )
    return model


def unescape(text):
    """The escapes a shell leaves in an argument such as --stop "\\n": \\n, \\t, \\r and \\\\."""
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    out, k = [], 0
    while k < len(text):
        if text[k] == "\\" and k + 1 < len(text) and text[k + 1] in escapes:
            out.append(escapes[text[k + 1]])
            k += 2
        else:
            out.append(text[k])
            k += 1
    return "".join(out)


def _sampling_options(args):
    """The sampling options `fastlm generate` passes on, streamed or not."""
    return dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )


def _joined(prompt, separator, text):
    """The prompt and its continuation: with the word separator between them, unless the text
    starts a new line (a word model's <eos>) or is empty, where it would be trailing white space."""
    return prompt + (separator if text[:1].strip() else "") + text


def _stream(model, args, stop, separator):
    """Print the continuation as it is sampled; Ctrl-C ends the line and the command (exit 130)."""
    pieces = model.stream(args.prompt, stop=stop, **_sampling_options(args))
    print(args.prompt, end="", flush=True)
    try:
        for k, piece in enumerate(pieces):
            print(_joined("", separator, piece) if k == 0 else piece, end="", flush=True)
    finally:
        print(flush=True)
    return 0


def cmd_generate(args):
    _input_path("DIR", args.directory, "model directory")
    model = _load(args.directory)
    stop = [unescape(s) for s in args.stop] if args.stop else None
    if stop is not None and "" in stop:
        raise UsageError('--stop "" would stop before any text: give the string to stop at, such as --stop "\\n"')
    separator = " " if model.tokenizer.level == "word" and args.prompt[-1:].strip() else ""
    if args.stream:
        if args.num_samples != 1:
            raise UsageError(f"--stream prints one sample; got --num-samples {args.num_samples}")
        return _stream(model, args, stop, separator)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = model.generate_text(args.prompt, num_samples=args.num_samples, stop=stop, **_sampling_options(args))
    for warning in caught:
        print(f"fastlm generate: note: {warning.message}", file=sys.stderr)
    for k, text in enumerate([texts] if isinstance(texts, str) else texts):
        if k:
            print("---")
        print(_joined(args.prompt, separator, text))
    return 0


def cmd_eval(args):
    path = _model_and_text_paths("eval", args.directory, args.file)
    model = _load(args.directory)
    ids, unknown = model.tokenizer.encode(read_text(path), return_unknown=True)
    if len(ids) < 2:
        raise ValueError(f"{path} holds {len(ids)} {model.tokenizer.level} tokens; scoring needs at least 2")
    result = model.evaluate(ids, seq_len=args.seq_len, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(_metrics(result)))
        return 0
    print(f"tokens      {result['tokens']:,} ({unknown:,} unknown, scored as <unk>)")
    print(f"loss        {result['loss']:.4f} nats/token")
    print(f"perplexity  {result['perplexity']:.3f}")
    print(f"bits/token  {result['bits_per_token']:.4f}")
    print(f"accuracy    {result['accuracy']:.4f}")
    print(f"top-{result['top_k']} acc.  {result['top_k_accuracy']:.4f}")
    print(f"precision   {result['precision']:.4f} (macro)")
    print(f"recall      {result['recall']:.4f} (macro)")
    print(f"f1          {result['f1']:.4f} (macro)")
    return 0


SCORE_BLOCK_LINES = 4096  # lines scored per call: stdin is read as it comes


def _utf8_lines(stream, name):
    """The stream's lines; text that is not UTF-8 is an error naming the source and the byte."""
    try:
        yield from stream
    except UnicodeDecodeError as error:  # (decoded a chunk at a time: error.start is no position in the file)
        raise ValueError(
            f"{name} is not UTF-8 text (invalid byte {error.object[error.start]:#04x}); convert it to UTF-8 first"
        ) from None


def _line_blocks(stream):
    block = []
    for line in stream:
        block.append(line.rstrip("\r\n"))
        if len(block) == SCORE_BLOCK_LINES:
            yield block
            block = []
    if block:
        yield block


def cmd_score(args):
    _model_and_text_paths("score", args.directory, args.file)
    model = _load(args.directory)
    bos, eos = not args.no_bos, not args.no_eos
    if (bos or eos) and boundary_id(model.tokenizer) is None:
        raise UsageError(
            f"{'--bos' if bos else '--eos'} (the default) needs a sentence-boundary token, and this model's "
            "word-level tokenizer has none (it was trained without --eos): pass --no-bos --no-eos, or train "
            "with --eos '<eos>'"
        )
    source = open(args.file, encoding="utf-8") if args.file else sys.stdin
    lines_before = 0  # of the blocks already scored
    try:
        for lines in _line_blocks(_utf8_lines(source, args.file or "standard input")):
            try:
                _print_scores(model, lines, bos, eos, args.json)
            except UnscorableSentence as error:  # named by its line, in the command line's words
                line = f"line {lines_before + error.index + 1} ({error.sentence!r}) has no token to score"
                if not error.empty:
                    why = " with --no-bos --no-eos: its first token is context only"
                elif eos:
                    why = ": it is empty, and with --no-bos its boundary alone is context only"
                else:
                    why = ": it is empty and --no-eos scores no boundary after it"
                raise ValueError(line + why) from None
            lines_before += len(lines)
    finally:
        if args.file:
            source.close()
    return 0


def _print_scores(model, lines, bos, eos, as_json):
    """One block of lines scored: a log10 probability per line, or (as_json) a JSON object per line
    with its tokens' scores."""
    if not as_json:
        print("\n".join(f"{value:.6f}" for value in model.score(lines, bos=bos, eos=eos)), flush=True)
        return
    for line, scores, ids in zip(lines, model.full_scores(lines, bos=bos, eos=eos), scored_ids(model, lines, bos, eos)):
        tokens = [
            {"token": model.tokenizer.id_to_token(int(i)), "log10_prob": p, "unknown": unknown}
            for i, (p, unknown) in zip(ids, scores)
        ]
        print(json.dumps({"text": line, "log10_prob": sum(p for p, _ in scores), "tokens": tokens}, ensure_ascii=False))


def scored_ids(model, lines, bos, eos):
    """The ids each line's scores belong to (full_scores gives the scores only)."""
    boundary = boundary_id(model.tokenizer)
    for line in lines:
        ids = list(sentence_ids(model.tokenizer, line, boundary)) + ([boundary] if eos else [])
        yield ids if bos else ids[1:]


def cmd_export(args):
    """The model as an ONNX file (fastlm.onnx_export); the path and the onnx package are checked
    before the model is read."""
    from fastlm import onnx_export

    _input_path("DIR", args.directory, "model directory")
    _output_path("--onnx", args.onnx)
    onnx_export.check_output_path(args.onnx, "--onnx")
    try:
        onnx_export.import_onnx()
    except ImportError as error:
        print(f"fastlm export: error: {error}", file=sys.stderr)
        return 1
    model = fastlm.load(args.directory)
    path = model.to_onnx(args.onnx)
    print(
        f"{path}: ONNX opset {onnx_export.OPSET}, inputs ids (batch, time) int64, h0 and c0 "
        f"({model.num_layers}, batch, {model.hidden_size}); outputs log_probs (batch, time, {model.vocab_size}), hn, cn"
    )
    return 0


def cmd_bench(args):
    from fastlm.benchmark import (
        CONFIGS,
        fastlm_train_step,
        median_seconds,
        shape,
        torch_train_seconds,
        training_flops_per_token,
    )

    threads = fastlm.get_num_threads()
    print(
        f"training step (forward, loss, backward, Adam), median of {args.repeats}; {threads} threads, "
        f"{fastlm.build_info()['simd']}"
    )
    print(f"{'config':8} {'(V, E, H, L, T, B)':32} {'backend':8} {'tokens/s':>10} {'GFLOP/s':>8} {'vs numpy':>9}")
    for name in args.configs:
        c = CONFIGS[name]
        tokens = c.batch * c.steps
        rates = {
            backend: tokens / median_seconds(fastlm_train_step(c, backend), args.repeats)
            for backend in ("cpp", "numpy")
        }
        if args.torch:
            # In a process of its own, where PyTorch keeps its own OpenMP settings.
            seconds = torch_train_seconds(c, threads, args.repeats)
            if seconds is None:
                print("  (PyTorch not installed: skipped)")
            else:
                rates["torch"] = tokens / seconds
        for backend, rate in rates.items():
            gflops = rate * training_flops_per_token(c) / 1e9
            print(f"{name:8} {str(shape(c)):32} {backend:8} {rate:10,.0f} {gflops:8.1f} {rate / rates['numpy']:8.2f}x")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastlm",
        description="Train, sample and evaluate LSTM language models on the CPU.",
        epilog="Run 'fastlm COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"fastlm {fastlm.__version__}")
    parser.add_argument(  # `fastlm --threads 1 eval ...` as well as `fastlm eval ... --threads 1`
        "--threads",
        dest="threads_before_command",
        type=POSITIVE_INT,
        default=None,
        metavar="N",
        help="threads, for any command (the same as COMMAND ... --threads N; default: all cores)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a model on text files (or on a dataset shipped with fastlm)",
        description="Train a language model and save it, with a checkpoint after every "
        "epoch, then print a sample. With no CORPUS and no --dataset, trains on the Python "
        "reference-manual topics that ship with every Python (--dataset python_docs, "
        "~460 KB).",
    )
    train.add_argument(
        "corpus", nargs="*", metavar="CORPUS", help=f"UTF-8 text files (default: --dataset {DEFAULT_DATASET})"
    )
    train.add_argument(
        "--dataset",
        choices=fastlm.datasets.NAMES,
        default=None,
        help="a corpus shipped with fastlm, instead of CORPUS files: tinyshakespeare (1.1 MB) or "
        f"python_docs (default: {DEFAULT_DATASET} when no CORPUS is given)",
    )
    train.add_argument(
        "--preset",
        type=PRESET,
        default=None,
        metavar="NAME",
        help=f"a published recipe ({', '.join(presets.NAMES)}: Zaremba et al. 2014's Penn Treebank "
        "configurations, see fastlm.presets): sets the model, optimizer, schedule, batching, word level and "
        "<eos> line ends; options given as well override it (default: none)",
    )
    train.add_argument(
        "--val",
        default=None,
        metavar="FILE",
        help="validation text file (scored after every epoch), instead of --val-fraction (default: none)",
    )
    train.add_argument(
        "--test",
        default=None,
        metavar="FILE",
        help="test text file, scored once training ends; the result is printed and saved in trainer.json "
        "(default: none)",
    )
    train.add_argument(
        "--level", choices=["char", "word", "bpe"], default=None, help="token level (default: char; bpe: subwords)"
    )
    train.add_argument(
        "--vocab-size",
        type=POSITIVE_INT,
        default=None,
        metavar="N",
        help="--level bpe: tokens to learn, at least 257 (required with bpe; default: none)",
    )
    train.add_argument(
        "--eos",
        type=EOS,
        default=None,
        metavar="TOKEN",
        help='word level: every line end becomes this token, as in PTB and WikiText (e.g. "<eos>"; '
        "default: none, line ends are not tokens)",
    )
    train.add_argument(
        "--min-count", type=POSITIVE_INT, default=None, metavar="N", help="rarer tokens become <unk> (default: 1)"
    )
    train.add_argument(
        "--max-vocab",
        type=POSITIVE_INT,
        default=None,
        metavar="N",
        help="keep at most this many tokens (default: no limit)",
    )
    train.add_argument(
        "--lowercase", action=argparse.BooleanOptionalAction, default=None, help="lower-case the text (default: off)"
    )
    train.add_argument(
        "--split-punctuation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="word level: split punctuation off words (default: off)",
    )
    train.add_argument(
        "--seq-len",
        type=POSITIVE_INT,
        default=None,
        metavar="T",
        help="time steps per window (default: 100)",
    )
    train.add_argument(
        "--stride",
        type=POSITIVE_INT,
        default=None,
        metavar="N",
        help="tokens between window starts; 1 = every position (default: seq-len)",
    )
    train.add_argument(
        "--batch-size",
        type=POSITIVE_INT,
        default=None,
        metavar="B",
        help="windows per batch (default: 32)",
    )
    train.add_argument(
        "--stateful",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read the corpus as --batch-size contiguous streams and carry the LSTM state from batch to "
        "batch (truncated BPTT, as the recipes do; default: off, shuffled windows)",
    )
    train.add_argument(
        "--epochs",
        type=POSITIVE_INT,
        default=None,
        metavar="N",
        help="passes over the corpus; with --resume, the total, which may grow (default: 8)",
    )
    train.add_argument("--embed", type=POSITIVE_INT, default=None, metavar="E", help="embedding width (default: 64)")
    train.add_argument("--hidden", type=POSITIVE_INT, default=None, metavar="H", help="LSTM hidden size (default: 256)")
    train.add_argument("--layers", type=POSITIVE_INT, default=None, metavar="L", help="LSTM layers (default: 2)")
    train.add_argument(
        "--dropout",
        type=FRACTION,
        default=None,
        metavar="P",
        help="dropout on the input of every LSTM layer (the embedding output included) and before the "
        "decoder (default: 0)",
    )
    train.add_argument(
        "--tie-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the decoder shares the embedding matrix (needs --embed equal to --hidden; default: off)",
    )
    train.add_argument(
        "--init-range",
        type=POSITIVE_FLOAT,
        default=None,
        metavar="R",
        help="every parameter uniform in [-R, R] (default: PyTorch's initialisation)",
    )
    train.add_argument(
        "--cutoffs",
        type=CUTOFFS,
        default=None,
        metavar="C1,C2,...",
        help="adaptive softmax: ids below C1 in the head, [C1, C2), ... and [last, vocabulary) in "
        "clusters of their own (default: off, the full softmax)",
    )
    train.add_argument(
        "--div-value",
        type=POSITIVE_FLOAT,
        default=None,
        metavar="D",
        help="adaptive softmax: cluster i's projection is hidden // D**(i+1) wide (default: 4)",
    )
    train.add_argument(
        "--sparse-embedding",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="update only the embedding rows each batch uses (torch.optim.SparseAdam's rule): for "
        "large vocabularies (default: off)",
    )
    train.add_argument(
        "--optimizer",
        type=OPTIMIZER,
        default=None,
        metavar="{adam,sgd}",
        help="adam (torch.optim.Adam) or sgd (torch.optim.SGD) (default: adam)",
    )
    train.add_argument("--lr", type=POSITIVE_FLOAT, default=None, help="learning rate (default: 0.002)")
    train.add_argument(
        "--momentum",
        type=NONNEGATIVE_FLOAT,
        default=None,
        metavar="M",
        help="--optimizer sgd: momentum (default: 0)",
    )
    train.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--optimizer sgd: Nesterov momentum (needs --momentum > 0; default: off)",
    )
    train.add_argument(
        "--lr-decay",
        type=DECAY,
        default=None,
        metavar="F",
        help="multiply the lr by F when the validation loss stops improving, or with --lr-decay-epoch "
        "every epoch from then on (default: none, constant lr)",
    )
    train.add_argument(
        "--lr-decay-epoch",
        type=POSITIVE_INT,
        default=None,
        metavar="K",
        help="the epoch schedule of Zaremba et al.: epoch e trains with lr * F**max(e - K + 1, 0) (default: none)",
    )
    train.add_argument(
        "--clip-norm",
        type=POSITIVE_FLOAT,
        default=None,
        metavar="NORM",
        help="clip the gradients' global norm (default: 5)",
    )
    train.add_argument(
        "--val-fraction",
        type=FRACTION,
        default=None,
        metavar="F",
        help="share of the corpus (its end) held out for validation, when there is no --val (default: 0.05)",
    )
    train.add_argument(
        "--max-steps",
        type=POSITIVE_INT,
        default=None,
        metavar="N",
        help="stop (with a checkpoint) after this many batches (default: no limit)",
    )
    train.add_argument(
        "--seed", type=NONNEGATIVE_INT, default=None, help="initialisation, order and sampling seed (default: 0)"
    )
    train.add_argument(
        "--sample-tokens",
        type=NONNEGATIVE_INT,
        default=300,
        metavar="N",
        help="length of the sample printed at the end; 0 = none (default: 300)",
    )
    train.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="model directory to write (required: fastlm writes nowhere you did not name)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the training checkpointed in --out: every setting (corpus, model, tokenizer, "
        "training) comes from the checkpoint; a larger --epochs trains on past the original end",
    )
    train.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="progress bar on stderr (default: on in a terminal)",
    )
    train.add_argument(
        "--ids",
        default=None,
        metavar="FILE",
        help="train on a token file written by `fastlm encode` (read through a memory map) "
        "instead of CORPUS; needs --tokenizer (default: none)",
    )
    train.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR_OR_FILE",
        help="with --ids: the tokenizer.json (or a model directory) the ids were encoded with (default: none)",
    )
    train.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training on the ranks of `mpiexec -n N` (needs mpi4py: "
        "pip install 'fastlm[mpi]'); --batch-size is per rank",
    )
    train.add_argument(
        "--comm-timeout",
        type=POSITIVE_FLOAT,
        default=None,  # given without --distributed: refused
        metavar="SECONDS",
        help="with --distributed: a rank that waits this long for the others at one step (a rank hangs) "
        f"ends every rank with an error naming the step (default: {distributed.DEFAULT_TIMEOUT:g})",
    )
    train.set_defaults(run=cmd_train)

    encode = commands.add_parser(
        "encode",
        help="encode text files into a token file for `train --ids`",
        description="Stream UTF-8 text files through a tokenizer into a token file "
        "(little-endian uint16 or int32 ids after a 64-byte header), chunk by chunk, "
        "so corpora larger than memory can be trained on.",
    )
    encode.add_argument("corpus", nargs="+", metavar="CORPUS", help="UTF-8 text files (joined by newlines)")
    encode.add_argument(
        "--tokenizer",
        required=True,
        metavar="DIR_OR_FILE",
        help="tokenizer.json or a model directory; with --fit, where to save the new tokenizer (required)",
    )
    encode.add_argument("--out", required=True, metavar="FILE", help="the token file to write (required)")
    encode.add_argument(
        "--fit", action="store_true", help="fit a new tokenizer on CORPUS first (streamed) and save it to --tokenizer"
    )
    encode.add_argument(
        "--level",
        choices=["char", "word", "bpe"],
        default="word",
        help="with --fit: token level (default: word; bpe: subwords, with --vocab-size)",
    )
    encode.add_argument(
        "--vocab-size",
        type=POSITIVE_INT,
        default=None,
        metavar="N",
        help="with --fit --level bpe: tokens to learn, at least 257 (required with bpe; default: none)",
    )
    encode.add_argument(
        "--min-count",
        type=POSITIVE_INT,
        default=1,
        metavar="N",
        help="with --fit: drop tokens seen fewer than N times (default: 1)",
    )
    encode.add_argument(
        "--max-vocab",
        type=POSITIVE_INT,
        default=None,
        metavar="N",
        help="with --fit: keep the N most frequent tokens (default: all)",
    )
    encode.add_argument("--lowercase", action="store_true", help="with --fit: lower-case the text")
    encode.add_argument(
        "--eos",
        type=EOS,
        default=None,
        metavar="TOKEN",
        help='with --fit, word level: every line end becomes this token (e.g. "<eos>"; default: none)',
    )
    encode.add_argument("--split-punctuation", action="store_true", help="with --fit: punctuation as tokens")
    encode.set_defaults(run=cmd_encode)

    generate = commands.add_parser(
        "generate",
        help="write text with a trained model",
        description="Continue a prompt with text sampled from a saved model.",
    )
    generate.add_argument("directory", metavar="DIR", help="model directory written by fastlm train or save()")
    generate.add_argument("--prompt", default="", help="text to continue (default: none)")
    generate.add_argument(
        "--max-new-tokens", type=NONNEGATIVE_INT, default=200, metavar="N", help="tokens to add (default: 200)"
    )
    generate.add_argument(
        "--temperature",
        type=NONNEGATIVE_FLOAT,
        default=1.0,
        metavar="T",
        help="sampling temperature; 1 = the model's own distribution, lower is more "
        "conservative, 0 = greedy (default: 1, as generate_text)",
    )
    generate.add_argument(
        "--top-k",
        type=POSITIVE_INT,
        default=None,
        metavar="K",
        help="sample among the K most likely tokens (default: all)",
    )
    generate.add_argument(
        "--top-p",
        type=PROBABILITY,
        default=None,
        metavar="P",
        help="sample from the smallest set of tokens with probability >= P (default: 1, all)",
    )
    generate.add_argument(
        "--num-samples", type=POSITIVE_INT, default=1, metavar="N", help="independent samples (default: 1)"
    )
    generate.add_argument("--seed", type=NONNEGATIVE_INT, default=None, help="sampling seed (default: random)")
    generate.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="end the text before TEXT (repeatable; \\n, \\t are escapes; default: none)",
    )
    generate.add_argument(
        "--stream", action="store_true", help="print the text as it is sampled (Ctrl-C ends it; default: off)"
    )
    generate.set_defaults(run=cmd_generate)

    evaluate = commands.add_parser(
        "eval",
        help="perplexity and accuracy of a model on a text file",
        description="Score a UTF-8 text file: loss, perplexity, bits per token, top-1 accuracy.",
    )
    evaluate.add_argument("directory", metavar="DIR", help="model directory")
    evaluate.add_argument("file", metavar="FILE", help="UTF-8 text file")
    evaluate.add_argument("--seq-len", type=POSITIVE_INT, default=100, metavar="T", help="chunk length (default: 100)")
    evaluate.add_argument(
        "--batch-size",
        type=POSITIVE_INT,
        default=32,
        metavar="B",
        help="kept for compatibility: the text is scored as one stream, every token with its "
        "full left context (default: 32)",
    )
    evaluate.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: " + ", ".join(EVAL_KEYS) + " (default: a table)",
    )
    evaluate.set_defaults(run=cmd_eval)

    score = commands.add_parser(
        "score",
        help="log10 probability of each line of a text",
        description="Score every line of FILE (or of standard input) as a sentence, as "
        "KenLM's query does: one log10 probability per line, the boundary (eos) after it "
        "included.",
    )
    score.add_argument("directory", metavar="DIR", help="model directory")
    score.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        default=None,
        help="UTF-8 text file, one sentence per line (default: standard input)",
    )
    score.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line with per-token scores (default: one number per line)",
    )
    score.add_argument(
        "--no-bos", action="store_true", help="do not score the first token as following a sentence boundary"
    )
    score.add_argument("--no-eos", action="store_true", help="do not score the sentence boundary after the last token")
    score.set_defaults(run=cmd_score)

    export = commands.add_parser(
        "export",
        help="write a model as an ONNX graph",
        description="Write the model in DIR as an ONNX graph (Gather -> LSTM per layer -> "
        "MatMul + Add -> LogSoftmax) with inputs ids (batch, time) int64, h0 and c0 (layers, "
        "batch, hidden) and outputs log_probs (batch, time, vocabulary), hn and cn, for ONNX "
        "Runtime and other runtimes: scoring with zero h0 and c0, generation one token at a time "
        "carrying hn and cn. Needs the onnx package: pip install 'fastlm[onnx]'.",
    )
    export.add_argument("directory", metavar="DIR", help="model directory")
    export.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX file to write (required)")
    export.set_defaults(run=cmd_export)

    bench = commands.add_parser(
        "bench",
        help="training speed: C++ core vs NumPy reference (vs PyTorch)",
        description="Time one training step (forward, loss, backward, Adam) on random "
        "batches for the benchmark configurations (V, E, H, L, T, B): A = (10000, 128, 128, "
        "1, 100, 32), B = (10000, 200, 200, 2, 35, 20), C = (10000, 650, 650, 2, 35, 20), "
        "D = (65, 64, 512, 2, 100, 32); large vocabularies with an adaptive softmax on "
        "Zipf(1.1) ids (GFLOP/s count the full softmax's work): W = (50000, 256, 256, 1, 100, "
        "32) with cutoffs 2000, 10000, X = (250000, 512, 512, 2, 35, 32) with cutoffs 4000, "
        "20000, 100000.",
    )
    bench.add_argument(
        "--configs",
        nargs="+",
        choices=["A", "B", "C", "D", "W", "X"],
        default=["A", "D"],
        help="configurations (default: A D)",
    )
    bench.add_argument("--repeats", type=POSITIVE_INT, default=3, metavar="N", help="timed repeats (default: 3)")
    bench.add_argument(
        "--torch", action="store_true", help="also time PyTorch, if installed, in a process of its own (default: off)"
    )
    bench.set_defaults(run=cmd_bench)
    for command in (train, generate, evaluate, score, encode, export, bench):
        command.set_defaults(parser=command)  # main reports a UsageError as this parser's own errors
        command.add_argument(
            "--threads",
            type=POSITIVE_INT,
            default=None,
            metavar="N",
            help="threads (default: all cores; on a machine where other programs are busy, "
            "fewer can be faster: see README, 'Threads')",
        )
    return parser


def _message(error):
    """One line saying what went wrong, without the exception machinery."""
    if isinstance(error, KeyError) and error.args:
        message = error.args[0]
    elif isinstance(error, OSError) and error.filename is not None and error.strerror:
        message = f"{error.filename}: {error.strerror}"
    elif isinstance(error, MemoryError):
        message = f"out of memory ({error or 'allocation failed'}); try a smaller model or --batch-size"
    else:
        message = str(error) or type(error).__name__
    return " ".join(str(message).split())


def _check_no_empty_path(args):
    """An empty path (a variable left unset) names nothing: a usage error, where Path('') would
    read or write the working directory."""
    for action in args.parser._actions:
        if action.metavar not in ("DIR", "FILE", "CORPUS"):
            continue
        value = getattr(args, action.dest, None)
        if "" in (value if isinstance(value, list) else [value]):
            name = action.option_strings[0] if action.option_strings else action.metavar
            what = "directory" if action.metavar == "DIR" else "file"
            args.parser.error(f"argument {name}: an empty path names no {what}")


def main(argv=None):
    args, extra = build_parser().parse_known_args(argv)
    if extra:  # reported by the command's parser, with its usage (argparse's own says "fastlm: error")
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _check_no_empty_path(args)
    threads = args.threads if args.threads is not None else args.threads_before_command
    if threads is not None and not 1 <= threads <= max_threads():
        args.parser.error(
            f"argument --threads: {threads} is not between 1 and {max_threads()} ({MAX_THREADS_PER_CORE} per core)"
        )
    try:
        if threads is not None:
            fastlm.set_num_threads(threads)
        return args.run(args)
    except KeyboardInterrupt as error:
        out = getattr(error, "checkpoint_dir", None)  # fit checkpointed before raising
        comm = getattr(args, "comm", None)
        if out is not None and (comm is None or comm.Get_rank() == 0):
            print(f"interrupted: checkpoint saved in {out}; continue with: fastlm train --out {out} --resume")
        elif out is None:
            print(f"fastlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (head, less) closed the pipe: stop quietly, as Unix tools do
        with contextlib.suppress(OSError, ValueError):  # Python's flush at exit would fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the code a tool killed by the signal gives
    except USER_ERRORS as error:
        message = f"fastlm {args.command}: error: {_message(error)}"
        comm = getattr(args, "comm", None)
        if comm is not None and comm.Get_size() > 1 and not getattr(error, "fastlm_on_every_rank", False):
            # this rank's error alone: the others would wait for ever
            code = 2 if isinstance(error, UsageError) else 1
            distributed.print_and_abort(comm, message, code)
            return code  # MPICH's MPI_Abort can return before the job ends: say nothing more
        if isinstance(error, UsageError):
            args.parser.error(_message(error))  # the usage line, then the message; exit 2
        print(message, file=sys.stderr, flush=True)
        return 1
