"""One rule for bad arguments everywhere (fastlm.checks): the same mistake raises the same
exception type from every public entry point -- TypeError for a wrong type, ValueError for a
wrong value -- with a message naming the argument and the value; the CLI reports the same
message as a usage error."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastlm
from fastlm import checks, cli

V = 5
IDS = (np.arange(60) % V).astype(np.int32)


def tiny_model():
    model = fastlm.LSTMLM(V, 4, 4)
    model.tokenizer = fastlm.Tokenizer.fit("a b c d", level="word")
    return model


def tiny_tokenizer():
    return fastlm.Tokenizer.fit("a b c d", level="word")


# entry point -> a call taking the one argument under test as keyword arguments
ENTRY_POINTS = {
    "LSTMLM": lambda **kw: fastlm.LSTMLM(**{"vocab_size": V, **kw}),
    "fit": lambda **kw: tiny_model().fit(IDS, **{"seq_len": 4, "epochs": 1, "progress": False, **kw}),
    "evaluate": lambda **kw: tiny_model().evaluate(IDS, **kw),
    "generate": lambda **kw: tiny_model().generate(IDS[:3], **{"max_new_tokens": 2, "seed": 0, **kw}),
    "generate_text": lambda **kw: tiny_model().generate_text("a", **{"max_new_tokens": 2, "seed": 0, **kw}),
    "Tokenizer.fit": lambda **kw: fastlm.Tokenizer.fit("a b c", **kw),
    "Tokenizer.encode_file": lambda path, **kw: tiny_tokenizer().encode_file(path, **kw),
    "Tokenizer.id_to_token": lambda **kw: tiny_tokenizer().id_to_token(**kw),
    "save_ids": lambda **kw: fastlm.save_ids("never-written.bin", IDS, **kw),  # checked before any writing
    "open_ids": lambda path, **kw: fastlm.open_ids(path, **kw),
}

# the kinds of argument, and for each, mistakes with the exception they must raise
MISTAKES = {
    "positive int": [
        (2.5, TypeError),
        (2.0, TypeError),
        ("2", TypeError),
        (True, TypeError),
        (None, TypeError),
        (np.float64(3), TypeError),
        (0, ValueError),
        (-1, ValueError),
    ],
    "positive int or None": [(2.5, TypeError), ("2", TypeError), (False, TypeError), (0, ValueError), (-2, ValueError)],
    "int >= 0": [(1.5, TypeError), (1.0, TypeError), ("1", TypeError), (True, TypeError), (-1, ValueError)],
    "int >= 0 or None": [(1.5, TypeError), ("1", TypeError), (-1, ValueError)],
    "positive number": [
        ("0.1", TypeError),
        (True, TypeError),
        (None, TypeError),
        (0, ValueError),
        (-0.5, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
    ],
    "number >= 0": [
        ("0.1", TypeError),
        (True, TypeError),
        (-0.5, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
    ],
    "fraction [0, 1)": [
        ("0.1", TypeError),
        (False, TypeError),
        (1.0, ValueError),
        (-0.1, ValueError),
        (math.nan, ValueError),
    ],
    "probability (0, 1] or None": [
        ("0.5", TypeError),
        (True, TypeError),
        (0.0, ValueError),
        (1.5, ValueError),
        (math.nan, ValueError),
    ],
    "bool": [(1, TypeError), ("yes", TypeError), (None, TypeError)],
    "number > 1": [
        ("4", TypeError),
        (True, TypeError),
        (1.0, ValueError),
        (0.5, ValueError),
        (math.inf, ValueError),
        (math.nan, ValueError),
    ],
    "positive number or None": [
        ("0.1", TypeError),
        (True, TypeError),
        (0, ValueError),
        (-0.5, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
    ],
}

ARGUMENTS = [  # (entry point, argument, kind)
    *[("LSTMLM", name, "positive int") for name in ("vocab_size", "embed_dim", "hidden_size", "num_layers")],
    ("LSTMLM", "dropout", "fraction [0, 1)"),
    ("LSTMLM", "seed", "int >= 0"),
    ("LSTMLM", "head_bias", "bool"),
    ("LSTMLM", "div_value", "number > 1"),
    ("LSTMLM", "tie_weights", "bool"),
    ("LSTMLM", "init_range", "positive number or None"),
    ("fit", "sparse_embedding", "bool"),
    *[("fit", name, "positive int") for name in ("epochs", "batch_size", "seq_len")],
    *[("fit", name, "positive int or None") for name in ("stride", "max_batches")],
    ("fit", "lr_patience", "int >= 0"),
    ("fit", "lr", "positive number"),
    ("fit", "weight_decay", "number >= 0"),
    ("fit", "momentum", "number >= 0"),
    ("fit", "nesterov", "bool"),
    ("fit", "lr_decay_epoch", "positive int or None"),
    ("fit", "comm_timeout", "positive number or None"),
    *[("fit", name, "bool") for name in ("shuffle", "stateful", "resume", "progress", "restore_best")],
    *[("evaluate", name, "positive int") for name in ("seq_len", "batch_size")],
    *[(entry, "max_new_tokens", "int >= 0") for entry in ("generate", "generate_text")],
    *[(entry, "num_samples", "positive int") for entry in ("generate", "generate_text")],
    *[(entry, "top_k", "positive int or None") for entry in ("generate", "generate_text")],
    *[(entry, "seed", "int >= 0 or None") for entry in ("generate", "generate_text")],
    *[(entry, "temperature", "number >= 0") for entry in ("generate", "generate_text")],
    *[(entry, "top_p", "probability (0, 1] or None") for entry in ("generate", "generate_text")],
    ("Tokenizer.fit", "min_count", "positive int"),
    *[("Tokenizer.fit", name, "bool") for name in ("lowercase", "split_punctuation")],
    ("Tokenizer.encode_file", "chunk_size", "positive int"),
    ("Tokenizer.id_to_token", "token_id", "int >= 0"),
    ("save_ids", "vocab_size", "positive int"),
    ("open_ids", "vocab_size", "positive int or None"),
]

CASES = [
    pytest.param(entry, argument, value, error, id=f"{entry}-{argument}={value!r}")
    for entry, argument, kind in ARGUMENTS
    for value, error in MISTAKES[kind]
]


@pytest.mark.parametrize("entry, argument, value, error", CASES)
def test_same_mistake_same_exception_everywhere(entry, argument, value, error, tmp_path):
    call = ENTRY_POINTS[entry]
    if entry == "Tokenizer.encode_file":
        path = tmp_path / "text.txt"
        path.write_text("a b c")
        call = lambda **kw: ENTRY_POINTS[entry](path, **kw)  # noqa: E731
    if entry == "open_ids":
        path = tmp_path / "ids.bin"
        fastlm.save_ids(path, IDS, V)
        call = lambda **kw: ENTRY_POINTS[entry](path, **kw)  # noqa: E731
    with pytest.raises(error) as info:
        call(**{argument: value})
    message = str(info.value)
    assert message.startswith(f"{argument} must "), message  # names the argument ...
    assert repr(value) in message or str(value) in message, message  # ... and the value


def test_every_kind_is_exercised():
    assert {kind for _, _, kind in ARGUMENTS} == set(MISTAKES)


# the CLI: the same rule through argparse, reported as usage errors (exit 2) naming the option

# (argv before the option, option, kind, the check the Python API applies to the same argument)
INT, NUMBER = (int, checks.check_int), (float, checks.check_number)
CLI_OPTIONS = [
    (["train"], "--epochs", "positive int", INT, 1),
    (["train"], "--seq-len", "positive int", INT, 1),
    (["train"], "--batch-size", "positive int", INT, 1),
    (["train"], "--seed", "int >= 0", INT, 0),
    (["train"], "--lr", "positive number", NUMBER, "(0, inf)"),
    (["train"], "--dropout", "fraction [0, 1)", NUMBER, "[0, 1)"),
    (["train"], "--momentum", "number >= 0", NUMBER, "[0, inf)"),
    (["train"], "--init-range", "positive number", NUMBER, "(0, inf)"),
    (["train"], "--clip-norm", "positive number", NUMBER, "(0, inf)"),
    (["train"], "--lr-decay-epoch", "positive int", INT, 1),
    (["train"], "--comm-timeout", "positive number", NUMBER, "(0, inf)"),
    (["generate", "m"], "--max-new-tokens", "int >= 0", INT, 0),
    (["generate", "m"], "--top-k", "positive int", INT, 1),
    (["generate", "m"], "--temperature", "number >= 0", NUMBER, "[0, inf)"),
    (["generate", "m"], "--top-p", "probability (0, 1] or None", NUMBER, "(0, 1]"),
    (["eval", "m", "f"], "--seq-len", "positive int", INT, 1),
    (["bench"], "--repeats", "positive int", INT, 1),
]
CLI_CASES = [
    pytest.param(argv, option, text, check, bound, id=f"{argv[0]}{option}={text}")
    for argv, option, kind, check, bound in CLI_OPTIONS
    for text in [
        "two",
        *(str(value) for value, _ in MISTAKES[kind] if isinstance(value, (int, float)) and not isinstance(value, bool)),
    ]
]


@pytest.mark.parametrize("argv, option, text, check, bound", CLI_CASES)
def test_cli_reports_the_python_message(capsys, argv, option, text, check, bound):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args([*argv, option, text])
    assert info.value.code == 2
    err = capsys.readouterr().err
    convert, check = check
    try:
        value = convert(text)
    except ValueError:  # not a number at all: the API sees the text
        value = text
    with pytest.raises((TypeError, ValueError)) as api:
        check("the value", value, bound)
    assert f"argument {option}: {api.value}" in err, err


# the checks themselves


def test_numpy_scalars_are_numbers():
    assert checks.check_int("n", np.int64(3), 1) == 3 and type(checks.check_int("n", np.uint8(3), 1)) is int
    assert checks.check_number("x", np.float32(0.5), "(0, 1]") == 0.5
    assert checks.check_bool("flag", np.bool_(True)) is True


@pytest.mark.parametrize(
    "interval, inside, outside",
    [
        ("(0, 1]", [1e-9, 1.0], [0.0, 1.0001]),
        ("[0, 1)", [0.0, 0.999], [1.0, -1e-9]),
        ("[-1, 1]", [-1, 1], [-1.5, 1.5]),
        ("(0, inf)", [1e300], [0, math.inf]),
    ],
)
def test_intervals(interval, inside, outside):
    for value in inside:
        assert checks.check_number("x", value, interval) == value
    for value in outside:
        with pytest.raises(ValueError, match=r"^x must "):
            checks.check_number("x", value, interval)


def test_choice():
    assert checks.check_choice("level", "word", ("word", "char")) == "word"
    with pytest.raises(ValueError, match=r"level must be one of 'word', 'char', got 'byte'"):
        checks.check_choice("level", "byte", ("word", "char"))
    with pytest.raises(TypeError, match=r"level must be one of 'word', 'char', got None"):
        checks.check_choice("level", None, ("word", "char"))
