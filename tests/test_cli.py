"""The `fastlm` command: train | generate | eval | score | export | bench, and its handling of bad input.

Exit codes: 0 success; 2 usage errors (argparse's, including out-of-range option values, and what the
command line gets wrong that argparse cannot see: options that do not go together, a path that does
not exist or is of the wrong kind, arguments swapped), after the command's usage line; 1 other
failures, with exactly one line "fastlm COMMAND: error: ..." on stderr. Never a traceback. A failing
command writes nothing. Most tests call fastlm.cli.main in-process (fast); a few run the real
`python -m fastlm` and `fastlm` executables.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys

import pytest
from helpers import run_cli, snapshot

from fastlm import cli
from fastlm.model_dir import save_path
from fastlm.threads import max_threads

# A tiny model that trains in well under a second.
TINY = [
    "--hidden",
    "16",
    "--embed",
    "8",
    "--layers",
    "1",
    "--seq-len",
    "20",
    "--batch-size",
    "8",
    "--sample-tokens",
    "20",
]
WORDS = (
    "the a cat dog sat ran on under mat tree house river quickly slowly and then big small red green "
    "bird fish saw heard it they we"
).split()


def write_corpus(path, lines=300, seed=0):
    rng = random.Random(seed)
    path.write_text(
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(lines)) + "\n", encoding="utf-8"
    )
    return path


def assert_error(code, err, command, *fragments):
    """Exit 1 with one line on stderr, starting "fastlm COMMAND: error:" and naming the problem."""
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastlm {command}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


def assert_usage(code, err, command, *fragments):
    """Exit 2, reported as argparse reports its own usage errors: the command's usage, then one line
    "fastlm COMMAND: error: ..." naming the argument and value."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"usage: fastlm {command} "), err
    assert lines[-1].startswith(f"fastlm {command}: error: "), err
    for fragment in fragments:
        assert fragment in lines[-1], err


def assert_usage_error(code, err, *fragments):
    assert code == 2, err
    assert "usage: fastlm" in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def train_tiny(corpus, level, out):
    """`fastlm train` of a TINY model of level on corpus for one full epoch, its output hidden: out."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["train", str(corpus), "--level", level, "--epochs", "1", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, corpus):
    """A word-level model trained (one full epoch) by `fastlm train`."""
    return train_tiny(corpus, "word", tmp_path_factory.mktemp("model") / "m")


@pytest.fixture
def model_copy(model_dir, tmp_path):
    """A copy of the trained model directory that a test may damage."""
    return shutil.copytree(model_dir, tmp_path / "copy")


# ================================================================= help and usage


def test_help_of_each_command_lists_every_option_with_its_default(capsys):
    parser = cli.build_parser()
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "generate", "eval", "score", "encode", "export", "bench"}
    for name in commands:
        assert name in out
        code, out_command, _ = run_cli(capsys, name, "--help")
        assert code == 0 and out_command.startswith(f"usage: fastlm {name}")
        help_text = " ".join(out_command.split())
        for action in commands[name]._actions:
            if action.dest == "help":
                continue
            for option in action.option_strings or [action.metavar]:
                assert option in help_text, (name, option)
            if action.option_strings and action.nargs != 0:  # every option taking a value states its default
                assert ("required" if action.required else "default") in action.help, (name, action.option_strings)


def test_bench_help_describes_the_configurations(capsys):
    from fastlm.benchmark import CONFIGS, shape

    code, out, _ = run_cli(capsys, "bench", "--help")
    assert code == 0
    help_text = " ".join(out.split())
    for name, config in CONFIGS.items():
        assert f"{name} = {shape(config)}" in help_text
        if config.cutoffs:
            assert f"{name} = {shape(config)} with cutoffs {', '.join(map(str, config.cutoffs))}" in help_text


def test_an_extra_argument_is_a_usage_error_of_the_command(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", tmp_path, tmp_path / "f.txt", "extra")
    assert_usage(code, err, "eval", "unrecognized arguments: extra")


@pytest.mark.parametrize(
    "command, arguments, named",
    [
        ("train", ["--out", ""], "argument --out: an empty path names no directory"),
        ("train", ["", "--out", "x"], "argument CORPUS: an empty path names no file"),
        ("generate", [""], "argument DIR: an empty path names no directory"),
        ("eval", ["DIR", ""], "argument FILE: an empty path names no file"),
        ("export", ["DIR", "--onnx", ""], "argument --onnx: an empty path names no file"),
    ],
)
def test_an_empty_path_is_a_usage_error(capsys, tmp_path, monkeypatch, command, arguments, named):
    monkeypatch.chdir(tmp_path)  # an empty path would have meant this directory
    code, _, err = run_cli(capsys, command, *arguments)
    assert_usage(code, err, command, named)
    assert list(tmp_path.iterdir()) == []


def test_threads_beyond_four_per_core_is_a_usage_error(capsys, tmp_path):
    too_many = max_threads() + 1
    code, _, err = run_cli(capsys, "eval", tmp_path, tmp_path / "f.txt", "--threads", too_many)
    assert_usage(code, err, "eval", f"argument --threads: {too_many} is not between 1 and")


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys)
    assert_usage_error(code, err, "COMMAND")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["frobnicate"], "invalid choice"),
        (["train", "--bogus", "--out", "m"], "unrecognized arguments: --bogus"),
        (["train", "--epochs", "two"], "argument --epochs"),
        (["train", "--epochs", "0"], "argument --epochs"),
        (["train", "--batch-size", "0"], "argument --batch-size"),
        (["train", "--batch-size", "-4"], "argument --batch-size"),
        (["train", "--seq-len", "0"], "argument --seq-len"),
        (["train", "--lr", "0"], "argument --lr"),
        (["train", "--lr", "nan"], "argument --lr"),
        (["train", "--val-fraction", "1"], "argument --val-fraction"),
        (["train", "--dropout", "-0.1"], "argument --dropout"),
        (["train", "--level", "byte"], "argument --level"),
        (["generate"], "DIR"),
        (["generate", "m", "--temperature", "-1"], "argument --temperature"),
        (["generate", "m", "--temperature", "inf"], "argument --temperature"),
        (["generate", "m", "--top-p", "1.5"], "argument --top-p"),
        (["generate", "m", "--top-p", "0"], "argument --top-p"),
        (["generate", "m", "--top-k", "0"], "argument --top-k"),
        (["generate", "m", "--max-new-tokens", "-1"], "argument --max-new-tokens"),
        (["generate", "m", "--num-samples", "0"], "argument --num-samples"),
        (["eval", "m"], "FILE"),
        (["eval", "m", "f", "--seq-len", "0"], "argument --seq-len"),
        (["bench", "--configs", "Z"], "argument --configs"),
        (["bench", "--repeats", "0"], "argument --repeats"),
    ],
)
def test_bad_options_are_usage_errors(capsys, monkeypatch, tmp_path, argv, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert_usage_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []  # nothing written


# ================================================================= train, generate, eval


def test_train_saves_a_model_and_prints_a_sample(capsys, corpus, tmp_path):
    out = tmp_path / "m"
    code, stdout, err = run_cli(capsys, "train", corpus, "--epochs", "1", *TINY, "--max-steps", "5", "--out", out)
    assert code == 0, err
    assert f"corpus: {corpus}" in stdout and "vocabulary" in stdout
    assert "stopped after 5 steps (--max-steps), 0 of 1 epochs complete" in stdout
    assert "validation: loss" in stdout
    sample = stdout.split("--- sample ---\n")[1].split("--------------")[0]
    assert sample.strip()
    assert (out / "config.json").is_file()
    assert {"model.safetensors", "tokenizer.json", "optimizer.safetensors", "trainer.json"} <= {
        p.name for p in save_path(out).iterdir()
    }


def test_train_with_no_corpus_uses_the_python_docs_dataset(capsys, tmp_path):
    out = tmp_path / "m"
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--max-steps",
        "2",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--layers",
        "1",
        "--sample-tokens",
        "10",
        "--out",
        out,
    )
    assert code == 0, err
    assert "corpus: the python_docs dataset (fastlm.datasets.python_docs)" in stdout
    assert "--- sample ---" in stdout
    assert (save_path(out) / "model.safetensors").is_file()


def test_train_on_a_shipped_dataset(capsys, tmp_path):
    import fastlm

    out = tmp_path / "m"
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "tinyshakespeare",
        "--max-steps",
        "1",
        "--hidden",
        "8",
        "--embed",
        "4",
        "--layers",
        "1",
        "--sample-tokens",
        "0",
        "--out",
        out,
    )
    assert code == 0, err
    assert "corpus: the tinyshakespeare dataset (fastlm.datasets.tinyshakespeare): 1,115,394 char tokens" in stdout
    assert len(fastlm.load(out).tokenizer) == len(set(fastlm.datasets.tinyshakespeare())) + 1  # and <unk>


def test_train_takes_files_or_a_dataset_not_both(capsys, corpus, tmp_path):
    code, _, err = run_cli(capsys, "train", corpus, "--dataset", "tinyshakespeare", "--out", tmp_path / "m")
    assert_usage(code, err, "train", "give CORPUS files or --dataset, not both")
    assert not (tmp_path / "m").exists()
    code, _, err = run_cli(capsys, "train", "--dataset", "shakespeare", "--out", tmp_path / "m")
    assert code == 2 and "invalid choice: 'shakespeare'" in err


def test_train_replacing_a_model_says_so(capsys, corpus, model_copy):
    code, _, err = run_cli(capsys, "train", corpus, "--epochs", "1", *TINY, "--max-steps", "1", "--out", model_copy)
    assert code == 0 and "note: replacing the model" in err


def test_generate_is_reproducible_with_a_seed(capsys, model_dir):
    args = ("generate", model_dir, "--prompt", "the cat", "--max-new-tokens", "15", "--seed", "1")
    first, second = run_cli(capsys, *args), run_cli(capsys, *args)
    assert first[0] == 0 and first == second
    assert first[1].startswith("the cat ") and len(first[1].split()) > 2
    other = run_cli(capsys, *args[:-1], "2")
    assert other[0] == 0 and other[1] != first[1]


def test_generate_options(capsys, model_dir):
    code, out, err = run_cli(
        capsys,
        "generate",
        model_dir,
        "--num-samples",
        "2",
        "--max-new-tokens",
        "8",
        "--temperature",
        "1.2",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    )
    assert code == 0, err
    assert len(out.split("\n---\n")) == 2
    greedy = run_cli(capsys, "generate", model_dir, "--prompt", "the", "--temperature", "0", "--max-new-tokens", "8")
    assert greedy[0] == 0 and greedy == run_cli(
        capsys, "generate", model_dir, "--prompt", "the", "--temperature", "0", "--max-new-tokens", "8"
    )
    code, out, _ = run_cli(capsys, "generate", model_dir, "--prompt", "the dog", "--max-new-tokens", "0")
    assert code == 0 and out == "the dog\n"  # nothing after it: no trailing space
    code, out, _ = run_cli(capsys, "generate", model_dir, "--prompt", "the dog ", "--max-new-tokens", "1")
    assert code == 0 and out.startswith("the dog ") and not out.startswith("the dog  ")


def test_generate_notes_unknown_prompt_words(capsys, model_dir):
    code, out, err = run_cli(
        capsys, "generate", model_dir, "--prompt", "the zebra", "--max-new-tokens", "5", "--seed", "1"
    )
    assert code == 0
    assert out.startswith("the zebra ")
    assert err.startswith("fastlm generate: note: ") and "'zebra'" in err and "Traceback" not in err


def test_eval_prints_perplexity_and_accuracy(capsys, model_dir, tmp_path):
    text = write_corpus(tmp_path / "held_out.txt", lines=40, seed=1)
    code, out, err = run_cli(capsys, "eval", model_dir, text)
    assert code == 0, err
    values = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert 1 < float(values["perplexity"]) < len(WORDS) * 2
    assert 0 <= float(values["accuracy"]) <= 1
    assert {"tokens", "loss", "bits/token"} <= set(values)


def test_resume_continues_training(capsys, corpus, tmp_path):
    out = tmp_path / "m"
    common = [corpus, "--level", "word", *TINY, "--out", out]
    code, stdout, _ = run_cli(capsys, "train", *common, "--epochs", "1")
    assert code == 0 and "epoch 1/1" in stdout
    code, stdout, err = run_cli(
        capsys, "train", corpus, "--out", out, "--epochs", "2", "--resume", "--sample-tokens", "5"
    )  # settings come from the checkpoint
    assert code == 0, err
    assert "epoch 2/2" in stdout and "epoch 1/" not in stdout
    assert json.loads((save_path(out) / "trainer.json").read_text())["epoch"] == 2
    before = snapshot(out)
    code, _, err = run_cli(capsys, "train", *common, "--epochs", "2", "--resume")
    assert_usage(code, err, "train", "already been trained for 2 epochs")
    code, _, err = run_cli(capsys, "train", *common, "--epochs", "3", "--resume", "--seq-len", "30")
    assert_usage(code, err, "train", "cannot resume", "--seq-len 30 (the checkpoint's: --seq-len 20)")
    other = write_corpus(tmp_path / "other.txt", lines=200, seed=5)
    code, stdout, err = run_cli(capsys, "train", other, "--out", out, "--epochs", "3", "--resume")
    assert_usage(code, err, "train", "cannot resume", f"CORPUS {other} (the checkpoint's: CORPUS {corpus})")
    assert snapshot(out) == before


def test_resume_finishes_an_epoch_stopped_by_max_steps(capsys, corpus, tmp_path):
    out = tmp_path / "m"
    common = [corpus, "--level", "word", *TINY, "--out", out, "--epochs", "1"]
    code, stdout, _ = run_cli(capsys, "train", *common, "--max-steps", "2")
    assert code == 0 and "0 of 1 epochs complete" in stdout and "epoch 1/1" not in stdout
    code, stdout, _ = run_cli(capsys, "train", *common, "--resume")
    assert code == 0 and "epoch 1/1" in stdout


def test_bench(capsys, monkeypatch):
    from fastlm import benchmark

    monkeypatch.setitem(benchmark.CONFIGS, "D", benchmark.Config(13, 4, 8, 1, 5, 2))  # the real D is slow
    code, out, err = run_cli(capsys, "bench", "--configs", "D", "--repeats", "1")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith("D ")]
    assert [row[-4] for row in rows] == ["cpp", "numpy"]
    assert rows[1][-1] == "1.00x"


def test_bench_times_torch_in_a_process_of_its_own(capsys, monkeypatch):
    pytest.importorskip("torch", reason="PyTorch not installed (CI installs torch==2.13.0)")
    from fastlm import benchmark

    monkeypatch.setitem(benchmark.CONFIGS, "D", benchmark.Config(13, 4, 8, 1, 5, 2))  # passed on to the child
    code, out, err = run_cli(capsys, "bench", "--configs", "D", "--repeats", "1", "--torch")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith("D ")]
    assert [row[-4] for row in rows] == ["cpp", "numpy", "torch"]
    assert float(rows[2][-3].replace(",", "")) > 0


# ================================================================= bench: child processes


def test_a_failing_benchmark_child_raises_with_its_error():
    from fastlm import benchmark

    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        benchmark.run_child("1 / 0", (), dict(os.environ))


# ================================================================= train: bad input


@pytest.fixture
def bad_corpus(tmp_path):
    """name -> path of a corpus fastlm train must refuse, and the words its message must contain."""
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text(" \n\t\n")
    (tmp_path / "short.txt").write_text("a b c d e")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me ".encode("latin-1") * 50)
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "nul.txt").write_bytes(b"text\0with NUL bytes " * 50)
    (tmp_path / "adir").mkdir()
    return {
        "missing": (tmp_path / "missing.txt", ["argument CORPUS: ", "missing.txt does not exist"]),
        "directory": (tmp_path / "adir", ["argument CORPUS: ", "adir is a directory, not a file"]),
        "empty": (tmp_path / "empty.txt", ["empty"]),
        "whitespace only": (tmp_path / "blank.txt", ["empty"]),
        "shorter than seq_len + 1": (tmp_path / "short.txt", ["too short", "9 char tokens", "at least 21"]),
        "not UTF-8": (tmp_path / "latin1.txt", ["not UTF-8", "offset 3"]),
        "binary": (tmp_path / "binary.bin", ["binary.bin"]),
        "NUL bytes": (tmp_path / "nul.txt", ["NUL bytes"]),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "directory",
        "empty",
        "whitespace only",
        "shorter than seq_len + 1",
        "not UTF-8",
        "binary",
        "NUL bytes",
    ],
)
def test_train_refuses_bad_corpus_and_writes_nothing(capsys, bad_corpus, tmp_path, case):
    path, fragments = bad_corpus[case]
    out = tmp_path / "m"
    code, stdout, err = run_cli(capsys, "train", path, "--epochs", "1", *TINY, "--out", out)
    if case in ("missing", "directory"):  # a path of the wrong kind: a usage error
        assert_usage(code, err, "train", *fragments)
    else:  # a file whose text cannot be trained on
        assert_error(code, err, "train", *fragments)
    assert not out.exists()


def test_train_refuses_a_bad_corpus_without_touching_an_existing_model(capsys, bad_corpus, model_copy):
    before = snapshot(model_copy)
    code, _, err = run_cli(capsys, "train", bad_corpus["shorter than seq_len + 1"][0], *TINY, "--out", model_copy)
    assert_error(code, err, "train", "too short")
    assert snapshot(model_copy) == before


def test_train_refuses_one_bad_file_among_good_ones(capsys, corpus, bad_corpus, tmp_path):
    code, _, err = run_cli(capsys, "train", corpus, bad_corpus["missing"][0], *TINY, "--out", tmp_path / "m")
    assert_usage(code, err, "train", "argument CORPUS: ", "missing.txt does not exist")
    assert not (tmp_path / "m").exists()


def test_train_refuses_an_unreadable_corpus(capsys, corpus, tmp_path, monkeypatch):
    path = shutil.copy(corpus, tmp_path / "secret.txt")
    os.chmod(path, 0)
    if os.access(path, os.R_OK):  # root reads it anyway: fail the read as it fails for other users
        read_bytes = pathlib.Path.read_bytes

        def refuse(self):
            if self.name == "secret.txt":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return read_bytes(self)

        monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    code, _, err = run_cli(capsys, "train", path, *TINY, "--out", tmp_path / "m")
    assert_error(code, err, "train", "secret.txt: Permission denied")
    assert not (tmp_path / "m").exists()


def test_train_refuses_an_out_that_is_not_a_model_directory(capsys, corpus, tmp_path):
    code, _, err = run_cli(capsys, "train", corpus, *TINY, "--out", corpus)
    assert_usage(code, err, "train", f"argument --out: {corpus} is a file, not a model directory")
    other = tmp_path / "documents"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "train", corpus, *TINY, "--out", other)
    assert_usage(code, err, "train", "argument --out: ", "holding no fastlm model")
    assert snapshot(other) == {"notes.txt": b"mine"}


def test_resume_without_a_checkpoint(capsys, corpus, tmp_path, model_dir):
    code, _, err = run_cli(capsys, "train", corpus, *TINY, "--out", tmp_path / "nothing", "--resume")
    assert_usage(code, err, "train", "argument --out: nothing to resume")
    code, _, err = run_cli(capsys, "train", "--out", corpus, "--resume")
    assert_usage(code, err, "train", f"argument --out: {corpus} is a file, not a model directory")
    assert not (tmp_path / "nothing").exists()
    import fastlm

    plain = tmp_path / "plain"
    fastlm.load(model_dir).save(plain)  # a saved model without training state
    before = snapshot(plain)
    code, _, err = run_cli(capsys, "train", corpus, "--level", "word", *TINY, "--out", plain, "--resume")
    assert_error(code, err, "train", "no training checkpoint")
    assert snapshot(plain) == before


# ================================================================= generate and eval: bad model directories


def _set_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _set_model(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    _set_config(directory, model={**config["model"], **changes})


def _drop_last_token(directory):
    tokenizer = json.loads((save_path(directory) / "tokenizer.json").read_text())
    tokenizer["vocab"], tokenizer["counts"] = tokenizer["vocab"][:-1], tokenizer["counts"][:-1]
    (save_path(directory) / "tokenizer.json").write_text(json.dumps(tokenizer))


DAMAGE = {  # name -> (what to do to a model directory, words the message must contain)
    "no model.safetensors": (lambda d: (save_path(d) / "model.safetensors").unlink(), ["model.safetensors", "missing"]),
    "no config.json": (lambda d: (d / "config.json").unlink(), ["config.json", "missing"]),
    "no tokenizer.json": (lambda d: (save_path(d) / "tokenizer.json").unlink(), ["tokenizer.json", "missing"]),
    "corrupted config.json": (
        lambda d: (d / "config.json").write_text('{"format_version": 1, '),
        ["config.json", "corrupted"],
    ),
    "config.json not a config": (lambda d: (d / "config.json").write_text("[1, 2]"), ["config.json"]),
    "invalid model section": (lambda d: _set_model(d, vocab_size=-3), ["config.json", "vocab_size", "-3"]),
    "model section of the wrong kind": (lambda d: _set_config(d, model={"colour": "red"}), ["config.json"]),
    "garbage weights": (
        lambda d: (save_path(d) / "model.safetensors").write_bytes(os.urandom(300)),
        ["model.safetensors"],
    ),
    "truncated weights": (
        lambda d: (save_path(d) / "model.safetensors").write_bytes(
            (save_path(d) / "model.safetensors").read_bytes()[:-50]
        ),
        ["model.safetensors"],
    ),
    "future format_version": (lambda d: _set_config(d, format_version=99), ["format version 99", "upgrade"]),
    "corrupted tokenizer.json": (lambda d: (save_path(d) / "tokenizer.json").write_text("{oops"), ["tokenizer.json"]),
    "tokenizer vocabulary mismatch": (_drop_last_token, ["tokenizer.json", "do not belong together"]),
}


@pytest.mark.parametrize("command", ["generate", "eval"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_model_directory(capsys, model_copy, corpus, command, damage):
    apply, fragments = DAMAGE[damage]
    apply(model_copy)
    before = snapshot(model_copy)
    argv = [model_copy, "--max-new-tokens", "3"] if command == "generate" else [model_copy, corpus]
    code, stdout, err = run_cli(capsys, command, *argv)
    assert_error(code, err, command, *fragments)
    assert stdout == ""
    assert snapshot(model_copy) == before


@pytest.mark.parametrize("command", ["generate", "eval", "score"])
def test_missing_model_directory(capsys, tmp_path, corpus, command):
    argv = [tmp_path / "nope"] + ([corpus] if command != "generate" else [])
    code, _, err = run_cli(capsys, command, *argv)
    assert_usage(code, err, command, f"argument DIR: {tmp_path / 'nope'} does not exist")
    (tmp_path / "nope").mkdir()
    (tmp_path / "nope" / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, command, *argv)
    assert_usage(code, err, command, f"argument DIR: {tmp_path / 'nope'} is not a model directory (no config.json)")


@pytest.mark.parametrize("command", ["eval", "score"])
def test_a_missing_file_or_a_directory_as_the_text_is_a_usage_error(capsys, model_dir, bad_corpus, command):
    for case, message in [("missing", "does not exist"), ("directory", "is a directory, not a file")]:
        code, _, err = run_cli(capsys, command, model_dir, bad_corpus[case][0])
        assert_usage(code, err, command, f"argument FILE: {bad_corpus[case][0]} {message}")


def test_eval_refuses_bad_text(capsys, model_dir, bad_corpus):
    for case, fragment in [
        ("empty", "0 word tokens"),
        ("whitespace only", "0 word tokens"),
        ("not UTF-8", "not UTF-8"),
        ("NUL bytes", "NUL bytes"),
    ]:
        code, _, err = run_cli(capsys, "eval", model_dir, bad_corpus[case][0])
        assert_error(code, err, "eval", fragment)


# ================================================================= the real executables


def _run_process(*argv, cwd=None):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_python_dash_m(model_dir, tmp_path):
    result = _run_process(sys.executable, "-m", "fastlm", "--help")
    assert result.returncode == 0 and "usage: fastlm" in result.stdout
    for command in ("train", "generate", "eval", "bench"):
        assert command in result.stdout
    result = _run_process(sys.executable, "-m", "fastlm", "train", "--epochs", "0")
    assert result.returncode == 2 and "argument --epochs" in result.stderr
    result = _run_process(sys.executable, "-m", "fastlm", "eval", model_dir, tmp_path / "missing.txt")
    assert_usage(result.returncode, result.stderr, "eval", f"argument FILE: {tmp_path / 'missing.txt'} does not exist")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    result = _run_process(sys.executable, "-m", "fastlm", "eval", model_dir, tmp_path / "latin1.txt")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("fastlm eval: error: ") and len(result.stderr.splitlines()) == 1
    result = _run_process(
        sys.executable, "-m", "fastlm", "generate", model_dir, "--prompt", "the", "--seed", "1", "--max-new-tokens", "5"
    )
    assert result.returncode == 0 and result.stdout.startswith("the ")


def test_score_names_the_flags_a_model_without_eos_needs(capsys, model_dir, tmp_path):
    """A word model trained without --eos has no sentence boundary: the default --bos is refused with
    the command line's way out, and a one-word line under --no-bos --no-eos is named by its line."""
    lines = tmp_path / "lines.txt"
    lines.write_text("the cat\nthe\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "score", model_dir, lines)
    assert_usage(code, err, "score", "--bos (the default) needs a sentence-boundary token", "--no-bos --no-eos")
    assert out == ""
    code, out, err = run_cli(capsys, "score", model_dir, lines, "--no-bos", "--no-eos")
    assert code == 1 and "line 2 ('the') has no token to score with --no-bos --no-eos" in err, err


def test_a_closed_pipe_ends_the_command_quietly(model_dir, tmp_path):
    """`fastlm score DIR FILE | head`: once the reader has gone, the command stops with the code of
    SIGPIPE (141) and says nothing, instead of an error line about a broken pipe."""
    lines = tmp_path / "lines.txt"
    lines.write_text("the cat\n" * 30000, encoding="utf-8")  # far more output than a pipe holds
    process = subprocess.Popen(
        [sys.executable, "-m", "fastlm", "score", str(model_dir), str(lines), "--no-bos", "--no-eos"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if not process.stdout.read(20):
        pytest.fail(f"fastlm score printed nothing: {process.stderr.read().decode()}")
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and err == "", err


def test_console_script(corpus, tmp_path):
    fastlm = shutil.which("fastlm")
    if fastlm is None:
        pytest.skip("the fastlm console script is not on PATH")
    result = _run_process(
        fastlm, "train", corpus, "--epochs", "1", *TINY, "--max-steps", "3", "--out", "m", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "--- sample ---" in result.stdout and (tmp_path / "m" / "config.json").is_file()
    result = _run_process(fastlm, "generate", "m", "--top-p", "2", cwd=tmp_path)
    assert result.returncode == 2 and "argument --top-p" in result.stderr
    result = _run_process(fastlm, "generate", "does-not-exist", cwd=tmp_path)
    assert_usage(result.returncode, result.stderr, "generate")
    assert result.stderr.splitlines()[-1] == "fastlm generate: error: argument DIR: does-not-exist does not exist"


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_overflowing_weights_are_an_error_not_a_result(capsys, model_copy, corpus, command):
    """Finite weights whose logits overflow float32: eval printed "perplexity inf" and exited 0,
    generate emitted the last id forever."""
    import fastlm

    model = fastlm.load(model_copy)
    state = model.state_dict()
    state["decoder.weight"][:] = 3e38
    state["decoder.bias"][:] = 3e38
    model.load_state_dict(state)
    model.save(model_copy)
    argv = [corpus] if command == "eval" else ["--prompt", "the", "--max-new-tokens", "5"]
    code, out, err = run_cli(capsys, command, model_copy, *argv)
    assert_error(code, err, command, "NaN or infinity")
    assert "perplexity" not in out


# ================================================================= what a newcomer trips on (issue 12)


def test_version(capsys):
    import fastlm

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"fastlm {fastlm.__version__}"


def test_train_requires_out_and_writes_nothing_without_it(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", "--max-steps", "1")
    assert_usage_error(code, err, "--out")
    assert list(tmp_path.iterdir()) == []


def test_train_says_where_the_model_goes(capsys, monkeypatch, corpus, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", corpus, "--epochs", "1", *TINY, "--max-steps", "1", "--out", "rel/m")
    assert code == 0, err
    assert f"saving to {tmp_path / 'rel' / 'm'}\n" in out  # the absolute path, whatever the working directory
    assert (tmp_path / "rel" / "m" / "config.json").is_file()


@pytest.mark.parametrize("command", ["eval", "score"])
def test_swapped_arguments_are_a_usage_error_that_says_which_is_which(capsys, model_dir, corpus, command):
    code, _, err = run_cli(capsys, command, corpus, model_dir)
    assert_usage(
        code,
        err,
        command,
        f"arguments DIR {corpus} and FILE {model_dir} look swapped",
        f"fastlm {command} {model_dir} {corpus}",
    )


def test_a_file_given_as_the_model_directory(capsys, corpus, tmp_path):
    for argv in (
        ["generate", corpus],
        ["eval", corpus, corpus],
        ["score", corpus],
        ["export", corpus, "--onnx", tmp_path / "m.onnx"],
    ):
        code, _, err = run_cli(capsys, *argv)
        assert_usage(code, err, argv[0], f"argument DIR: {corpus} is a file, not a model directory")
    assert list(tmp_path.iterdir()) == []


def test_cli_and_generate_text_sample_at_the_same_temperature(monkeypatch, model_dir, capsys):
    import inspect

    import fastlm

    default = inspect.signature(fastlm.LSTMLM.generate_text).parameters["temperature"].default
    seen = []
    real = fastlm.LSTMLM.generate_text

    def recording(self, *args, **kw):
        seen.append(kw.get("temperature", default))
        return real(self, *args, **kw)

    monkeypatch.setattr(fastlm.LSTMLM, "generate_text", recording)
    assert run_cli(capsys, "generate", model_dir, "--max-new-tokens", "3", "--seed", "1")[0] == 0
    cli._print_sample(fastlm.load(model_dir), 0, 3)  # the sample `fastlm train` prints
    capsys.readouterr()
    assert seen == [default, default] and default == 1.0


@pytest.mark.parametrize("argv", [["train", "--out", "m"], ["generate", "m"], ["eval", "m", "f"], ["bench"]])
def test_every_command_takes_threads(argv):
    assert cli.build_parser().parse_args([*argv, "--threads", "3"]).threads == 3


def test_no_command_lacks_threads():
    """README: every command takes --threads N; a new subcommand must not be left out."""
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert {name for name, command in commands.items() if "--threads" not in command._option_string_actions} == set()


def test_threads_option_sets_the_thread_count(capsys, model_dir, corpus):
    import fastlm

    before = fastlm.get_num_threads()
    try:
        code, _, err = run_cli(capsys, "eval", model_dir, corpus, "--threads", "1")
        assert code == 0, err
        assert fastlm.get_num_threads() == 1
        fastlm.set_num_threads(before)
        code, _, err = run_cli(capsys, "--threads", "1", "eval", model_dir, corpus)  # before the command
        assert code == 0, err
        assert fastlm.get_num_threads() == 1
        code, _, err = run_cli(capsys, "--threads", "0", "eval", model_dir, corpus)
        assert_usage_error(code, err, "argument --threads: the value must be a positive integer, got 0")
    finally:
        fastlm.set_num_threads(before)


def test_the_readme_command_lines_parse():
    """Every concrete `fastlm ...` command in README.md's code blocks is accepted by the parser
    (a newcomer copies them: an option renamed or made required must show up here)."""
    import re
    import shlex

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", readme, flags=re.S | re.M)
    commands = [
        m.group(1)
        for block in blocks
        for line in block.splitlines()
        if (m := re.match(r"^(?:pip install \S+ && |mpiexec -n \d+ )?fastlm (.*)$", line))
        and "[" not in line
        and "|" not in line
    ]
    assert len(commands) >= 3, commands
    for command in commands:
        try:
            cli.build_parser().parse_args(shlex.split(command))
        except SystemExit as exit:  # --version and --help exit 0; usage errors exit 2
            assert exit.code == 0, command


def test_the_readme_python_blocks_use_only_names_they_define():
    """README.md's Python blocks, read in order as one session a newcomer types in, use no name
    that no block before defines (a fragment that needs `val_ids` or `train_text` from nowhere
    fails for everyone who copies it). Read, not run: the blocks train for minutes."""
    import builtins
    import re
    import symtable

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", readme, flags=re.S | re.M)
    assert len(blocks) >= 10, len(blocks)
    defined, undefined = set(dir(builtins)), []

    def symbols(table):
        yield from table.get_symbols()
        for child in table.get_children():
            yield from (s for s in symbols(child) if s.is_global())

    for block in blocks:
        table = symtable.symtable(block, "README.md", "exec")
        mine = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
        used = {s.get_name() for s in symbols(table) if s.is_referenced()}
        undefined += [(name, block.splitlines()[0]) for name in sorted(used - defined - mine)]
        defined |= mine
    assert not undefined, undefined


# ================================================================= score, generate --stream, export


@pytest.fixture(scope="module")
def char_model(tmp_path_factory, corpus):
    """A character-level model (its newline is the sentence boundary that score needs)."""
    return train_tiny(corpus, "char", tmp_path_factory.mktemp("char") / "m")


SENTENCES = ["the cat sat on the mat", "a big red bird", "", "they saw it QUICKLY"]


def test_score_prints_one_log10_score_per_line_of_a_file_or_of_stdin(capsys, char_model, tmp_path, monkeypatch):
    import fastlm

    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "score", char_model, text)
    assert code == 0, err
    scores = [float(v) for v in out.split("\n") if v]
    model = fastlm.load(char_model)
    assert scores == pytest.approx(model.score(SENTENCES), abs=1e-6)  # printed with 6 decimals
    assert all(s < 0 for s in scores) and scores[2] > scores[0]  # the empty line: its boundary alone
    monkeypatch.setattr(sys, "stdin", io.StringIO(text.read_text(encoding="utf-8")))
    code, from_stdin, err = run_cli(capsys, "score", char_model)
    assert code == 0, err
    assert from_stdin == out
    code, out, err = run_cli(capsys, "score", char_model, text, "--no-bos", "--no-eos")
    # the empty line has nothing to score without eos: named by its line number, counted from 1
    assert code == 1 and f"line 3 ({SENTENCES[2]!r}) has no token to score" in err, err
    assert "--no-eos scores no boundary after it" in err, err
    code, out, err = run_cli(capsys, "score", char_model, text, "--no-bos")  # the boundary alone: context
    assert code == 1 and "line 3 ('') has no token to score: it is empty, and with --no-bos" in err, err
    text.write_text("\n".join(s for s in SENTENCES if s) + "\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "score", char_model, text, "--no-bos", "--no-eos")
    assert code == 0, err
    expected = model.score([s for s in SENTENCES if s], bos=False, eos=False)
    assert [float(v) for v in out.split()] == pytest.approx(expected, abs=1e-6)


def test_score_refuses_text_that_is_not_utf8_naming_the_file(capsys, char_model, bad_corpus):
    path = bad_corpus["not UTF-8"][0]
    code, _, err = run_cli(capsys, "score", char_model, path)
    assert_error(code, err, "score", f"{path} is not UTF-8 text (invalid byte 0xe9)")


def test_score_json_gives_every_token_its_score(capsys, char_model, tmp_path):
    import fastlm

    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "score", char_model, text, "--json")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    model = fastlm.load(char_model)
    assert [r["text"] for r in records] == SENTENCES
    for record, score, full in zip(records, model.score(SENTENCES), model.full_scores(SENTENCES)):
        tokens = record["tokens"]
        assert len(tokens) == len(record["text"]) + 1  # every character, then the boundary
        for t, char in zip(tokens, record["text"] + "\n"):
            assert t["token"] == (model.tokenizer.vocab[model.tokenizer.unk_id] if t["unknown"] else char)
        assert [t["log10_prob"] for t in tokens] == pytest.approx([p for p, _ in full])
        assert [t["unknown"] for t in tokens] == [unknown for _, unknown in full]
        assert record["log10_prob"] == pytest.approx(sum(t["log10_prob"] for t in tokens))
        assert record["log10_prob"] == pytest.approx(score, abs=1e-5)
    unknown = [char for t, char in zip(records[3]["tokens"], SENTENCES[3]) if t["unknown"]]
    assert unknown == list("QUICKLY")  # capitals are not in the corpus


def test_generate_puts_no_space_before_a_new_line():
    """A word model's continuation that starts with its <eos> (a newline) or is empty follows the
    prompt directly: the separating space would be trailing white space."""
    assert cli._joined("the king", " ", "are here") == "the king are here"
    assert cli._joined("the king", " ", "\nare here") == "the king\nare here"
    assert cli._joined("the king", " ", "") == "the king"
    assert cli._joined("", "", "\nare") == "\nare"


@pytest.mark.parametrize("prompt", [[], ["--prompt", "the cat"]], ids=["no-prompt", "prompt"])
def test_generate_stream_prints_what_generate_prints(capsys, model_dir, prompt):
    argv = ["generate", model_dir, "--seed", "4", "--max-new-tokens", "30", *prompt]
    code, plain, err = run_cli(capsys, *argv)
    assert code == 0, err
    code, streamed, err = run_cli(capsys, *argv, "--stream")
    assert code == 0, err
    assert streamed == plain and len(plain.split()) >= 25


def test_generate_stream_stops_where_generate_stops(capsys, char_model):
    argv = ["generate", char_model, "--seed", "2", "--max-new-tokens", "300", "--prompt", "the "]
    code, unstopped, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "\n" in unstopped[len("the ") : -1]  # a newline to stop at
    for mode in ([], ["--stream"]):
        code, out, err = run_cli(capsys, *argv, "--stop", "\\n", *mode)
        assert code == 0, err
        assert out == unstopped.split("\n")[0] + "\n", mode
    code, out, err = run_cli(capsys, *argv, "--stream", "--num-samples", "2")
    assert_usage(code, err, "generate", "--stream prints one sample; got --num-samples 2")
    for mode in ([], ["--stream"]):  # refused before anything is printed
        code, out, err = run_cli(capsys, *argv, "--stop", "", *mode)
        assert_usage(code, err, "generate", '--stop "" would stop before any text')
        assert out == "", mode


def test_export_writes_an_onnx_file_onnx_runtime_runs(capsys, model_dir, tmp_path):
    pytest.importorskip("onnx", reason="onnx not installed: pip install 'fastlm[onnx]' (the [test] extra brings it)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install 'fastlm[onnx]'")
    import numpy as np

    import fastlm

    path = tmp_path / "model.onnx"
    code, out, err = run_cli(capsys, "export", model_dir, "--onnx", path)
    assert code == 0, err
    assert str(path) in out and "log_probs" in out
    model = fastlm.load(model_dir)
    ids = model.tokenizer.encode("the cat sat on the")
    L, H = model.num_layers, model.hidden_size
    state = np.zeros((L, 1, H), np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    log_probs, _, _ = session.run(None, {"ids": ids[None].astype(np.int64), "h0": state, "c0": state})
    np.testing.assert_allclose(np.exp(log_probs[0, -1]), model.next_token_probs(ids), atol=1e-6)


def test_export_bad_input(capsys, model_dir, tmp_path, monkeypatch):
    code, _, err = run_cli(capsys, "export", model_dir, "--onnx", tmp_path / "missing" / "m.onnx")
    assert_usage(code, err, "export", "argument --onnx: ", f"the directory {tmp_path / 'missing'} does not exist")
    code, _, err = run_cli(capsys, "export", model_dir, "--onnx", tmp_path)
    assert_usage(code, err, "export", f"argument --onnx: {tmp_path} is a directory")
    code, _, err = run_cli(capsys, "export", tmp_path / "no-model", "--onnx", tmp_path / "m.onnx")
    assert_usage(code, err, "export", f"argument DIR: {tmp_path / 'no-model'} does not exist")
    code, _, err = run_cli(capsys, "export", model_dir)
    assert_usage_error(code, err, "--onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as without the onnx package
    code, _, err = run_cli(capsys, "export", model_dir, "--onnx", tmp_path / "m.onnx")
    assert_error(code, err, "export", "pip install 'fastlm[onnx]'")
    assert list(tmp_path.iterdir()) == []
