"""`fastlm train` with the literature's recipes: --val/--test files, the optimizer, schedule,
tying, initialisation and <eos> options, --preset, resume taking every setting from the
checkpoint, `fastlm eval --json`, and the bad input of each. Every option is checked where
it lands (config.json, tokenizer.json, trainer.json), not by the exit code alone. Models are
tiny and epochs a few batches, so that the file runs in seconds."""

from __future__ import annotations

import json
import random

import pytest
from helpers import run_cli, snapshot

import fastlm
from fastlm import cli, model_dir, presets

WORDS = "the a cat dog sat ran on under mat tree house river big small red green bird fish saw heard".split()


def write_lines(path, lines, seed, words=WORDS):
    """PTB-like text: one sentence per line, lower case, a literal <unk> now and then."""
    rng = random.Random(seed)
    sentences = (" ".join(rng.choice([*words, "<unk>"]) for _ in range(rng.randint(4, 12))) for _ in range(lines))
    path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train / valid / test files, as PTB ships them."""
    directory = tmp_path_factory.mktemp("ptb")
    return {
        name: write_lines(directory / f"{name}.txt", lines, seed)
        for name, lines, seed in (("train", 150, 0), ("valid", 20, 1), ("test", 20, 2))
    }


SMALL = ["--embed", "8", "--hidden", "8", "--layers", "1", "--seq-len", "10", "--batch-size", "4"]
QUICK = ["--sample-tokens", "0", "--no-progress"]


def saved(directory):
    """(config.json's model, tokenizer.json, trainer.json) of a model directory's current save."""
    files = model_dir.save_path(directory)
    config = json.loads((directory / "config.json").read_text())["model"]
    return config, json.loads((files / "tokenizer.json").read_text()), json.loads((files / "trainer.json").read_text())


def test_every_recipe_option_reaches_the_model_and_fit(capsys, data, tmp_path):
    out = tmp_path / "m"
    options = [
        *["--level", "word", "--eos", "<eos>", "--optimizer", "sgd", "--momentum", "0.5", "--nesterov"],
        *["--tie-weights", "--embed", "12", "--hidden", "12", "--layers", "1", "--init-range", "0.2"],
        *["--dropout", "0.1", "--clip-norm", "0.5", "--lr", "1.5", "--lr-decay", "0.5", "--lr-decay-epoch", "2"],
        *["--stateful", "--seq-len", "10", "--batch-size", "4", "--epochs", "3"],
    ]
    code, stdout, err = run_cli(
        capsys, "train", data["train"], "--val", data["valid"], "--test", data["test"], *options, *QUICK, "--out", out
    )
    assert code == 0, err
    config, tokenizer, trainer = saved(out)
    assert (config["embed_dim"], config["hidden_size"], config["num_layers"]) == (12, 12, 1)
    assert config["tie_weights"] is True and config["init_range"] == 0.2 and config["dropout"] == 0.1
    assert tokenizer["level"] == "word" and tokenizer["eos"] == "<eos>"
    settings = trainer["settings"]
    assert {k: settings[k] for k in ("optimizer", "momentum", "nesterov", "clip_norm", "lr", "stateful")} == dict(
        optimizer="sgd", momentum=0.5, nesterov=True, clip_norm=0.5, lr=1.5, stateful=True
    )
    assert (settings["lr_decay"], settings["lr_decay_epoch"], settings["seq_len"], settings["batch_size"]) == (
        0.5,
        2,
        10,
        4,
    )
    assert trainer["history"]["lr"] == [1.5, 0.75, 0.375]  # the epoch schedule: halved from epoch 2 on
    # --val replaces --val-fraction: the whole training file is trained on, the validation file scored.
    tok = fastlm.load(out).tokenizer
    assert settings["data_tokens"] == len(tok.encode(data["train"].read_text()))
    assert all(loss is not None for loss in trainer["history"]["val_loss"])
    assert f"validating on {len(tok.encode(data['valid'].read_text())):,} ({data['valid']})" in stdout
    # --test: printed, and saved in trainer.json as what the saved model scores on it.
    expected = fastlm.load(out).evaluate(tok.encode(data["test"].read_text()))
    assert trainer["test"]["file"] == str(data["test"])
    for key in cli.EVAL_KEYS:
        assert trainer["test"][key] == expected[key], key
    assert f"test: loss {expected['loss']:.4f}, perplexity {expected['perplexity']:.2f}" in stdout
    # The command line's settings are recorded with the checkpoint, for --resume.
    record = trainer["metadata"][cli.RECORD_KEY]
    assert record["val"] == str(data["valid"]) and record["val_fraction"] is None and record["epochs"] == 3


def test_a_preset_sets_the_recipe_and_typed_options_override_it(capsys, data, tmp_path):
    out = tmp_path / "m"
    typed = ["--embed", "16", "--hidden", "16", "--epochs", "1", "--lr", "10"]
    code, stdout, err = run_cli(
        capsys, "train", data["train"], "--preset", "zaremba-small", *typed, *QUICK, "--out", out
    )
    assert code == 0, err
    preset = presets.get("zaremba-small")
    config, tokenizer, trainer = saved(out)
    for key, value in preset.tokenizer.items():
        assert tokenizer[key] == value, key
    for key, value in preset.model.items():
        assert config[key] == (16 if key in ("embed_dim", "hidden_size") else value), key
    for key, value in preset.fit.items():
        if key != "epochs":
            assert trainer["settings"][key] == (10.0 if key == "lr" else value), key
    assert trainer["history"]["epoch"] == [1]
    line = next(line for line in stdout.splitlines() if line.startswith("preset zaremba-small: "))
    assert "--optimizer sgd" in line and "--eos <eos>" in line and "--stateful" in line
    assert line.endswith("(overridden on the command line: --embed 16 --hidden 16 --lr 10.0 --epochs 1)"), line
    assert "--lr 20" not in line
    assert trainer["metadata"][cli.RECORD_KEY]["preset"] == "zaremba-small"


def test_every_preset_maps_onto_train_options():
    for name in presets.NAMES:
        settings = cli.preset_settings(name)
        assert settings and set(settings) <= set(cli.TRAIN_DEFAULTS)
        assert settings["level"] == "word" and settings["eos"] == "<eos>"


def test_every_train_option_is_a_recorded_setting_or_of_one_invocation():
    """--resume restores every setting in cli.TRAIN_DEFAULTS: an option missing there would silently
    take its default on resume instead of the run's value."""
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {action.dest for action in train._actions} - {"help"}
    assert dests == set(cli.TRAIN_DEFAULTS) | set(cli.PER_INVOCATION)
    for action in train._actions:
        if action.dest in cli.TRAIN_DEFAULTS and action.dest != "corpus":
            assert action.default is None, action.dest  # so that a typed value is told from the default


def test_resume_takes_the_epochs_and_every_setting_from_the_checkpoint(capsys, data, tmp_path):
    out = tmp_path / "m"
    first = ["--level", "word", "--eos", "<eos>", "--optimizer", "sgd", "--lr", "1", *SMALL, "--val", data["valid"]]
    code, stdout, err = run_cli(
        capsys, "train", data["train"], *first, "--epochs", "2", "--max-steps", "1", *QUICK, "--out", out
    )
    assert code == 0 and "0 of 2 epochs complete" in stdout, err
    # Interrupted in its first epoch, an --epochs 2 run resumes as such, with nothing given again.
    code, stdout, err = run_cli(capsys, "train", "--out", out, "--resume", *QUICK)
    assert code == 0, err
    assert "epoch 1/2" in stdout and "epoch 2/2" in stdout and "epoch 1/8" not in stdout
    config, tokenizer, trainer = saved(out)
    assert trainer["epoch"] == 2 and trainer["settings"]["optimizer"] == "sgd" and trainer["settings"]["lr"] == 1.0
    assert tokenizer["eos"] == "<eos>" and config["hidden_size"] == 8
    assert all(loss is not None for loss in trainer["history"]["val_loss"])  # the --val file, again
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", *QUICK)
    assert (
        code == 2
        and err.splitlines()[-1].startswith("fastlm train: error: ")
        and "already been trained for 2 epochs" in err
    )
    # A larger --epochs trains on; the same values given again are accepted.
    code, stdout, err = run_cli(
        capsys, "train", data["train"], "--out", out, "--resume", "--epochs", "3", "--lr", "1", *QUICK
    )
    assert code == 0, err
    assert "epoch 3/3" in stdout and "epoch 2/" not in stdout
    assert saved(out)[2]["metadata"][cli.RECORD_KEY]["epochs"] == 3  # the next --resume's total
    # Any other value that differs from the checkpoint's is an error naming the option and both values.
    before = snapshot(out)
    for typed, fragments in [
        (["--lr", "0.5"], ["--lr 0.5", "--lr 1.0"]),
        (["--optimizer", "adam"], ["--optimizer adam", "--optimizer sgd"]),
        (["--hidden", "16"], ["--hidden 16", "--hidden 8"]),
        (["--no-stateful", "--stateful"], ["--stateful", "--no-stateful"]),
        (["--eos", "</s>"], ["--eos </s>", "--eos <eos>"]),
        (["--preset", "zaremba-small"], ["--preset zaremba-small", "--preset (none)"]),
        (["--val", data["test"]], [f"--val {data['test']}", f"--val {data['valid']}"]),
        (["--val-fraction", "0.1"], ["--val-fraction 0.1", "--val-fraction (none)"]),
        ([data["test"]], [f"CORPUS {data['test']}", f"CORPUS {data['train']}"]),
    ]:
        code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--epochs", "4", *typed, *QUICK)
        assert code == 2 and err.splitlines()[-1].startswith("fastlm train: error: "), (typed, err)
        assert "cannot resume" in err and "leave these options out" in err, err
        for fragment in fragments:
            assert fragment in err, (typed, fragment, err)
    assert snapshot(out) == before


def test_eval_json_prints_one_object_of_the_metrics(capsys, data, tmp_path):
    out = tmp_path / "m"
    code, _, err = run_cli(
        capsys, "train", data["train"], "--level", "word", *SMALL, "--epochs", "1", *QUICK, "--out", out
    )
    assert code == 0, err
    code, stdout, err = run_cli(capsys, "eval", out, data["test"], "--json")
    assert code == 0, err
    assert stdout.count("\n") == 1
    result = json.loads(stdout)
    assert list(result) == ["loss", "perplexity", "accuracy", "bits_per_token", "tokens"]
    model = fastlm.load(out)
    expected = model.evaluate(model.tokenizer.encode(data["test"].read_text()))
    assert result == {key: expected[key] for key in result}
    assert 1 < result["perplexity"] < 2 * len(model.tokenizer) and isinstance(result["tokens"], int)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A text none of whose words the training file has."""
    return write_lines(tmp_path_factory.mktemp("foreign") / "foreign.txt", 10, 3, words=["zebra", "quux", "xylem"])


BAD = [  # (argv after `train TRAIN`, exit code, what the message must say)
    (["--optimizer", "adamw"], 2, ["argument --optimizer", "must be one of 'adam', 'sgd', got 'adamw'"]),
    (["--preset", "zaremba-huge"], 2, ["argument --preset", "unknown preset 'zaremba-huge'", "zaremba-small"]),
    (["--momentum", "-0.5"], 2, ["argument --momentum", "got -0.5"]),
    (["--eos", ""], 2, ["argument --eos", "eos must be a non-empty token"]),
    (["--optimizer", "sgd", "--nesterov"], 2, ["--nesterov needs --momentum > 0"]),
    (["--momentum", "0.9"], 2, ["--momentum 0.9 applies to --optimizer sgd", "--optimizer adam"]),
    (["--tie-weights", "--embed", "8", "--hidden", "16"], 2, ["--tie-weights", "--embed 8", "--hidden 16"]),
    (["--eos", "<eos>"], 2, ["--eos <eos>", "--level word", "--level char"]),
    (["--tie-weights", "--cutoffs", "5", "--embed", "8", "--hidden", "8"], 2, ["--tie-weights", "got --cutoffs 5"]),
    (["--lr-decay-epoch", "2"], 2, ["--lr-decay-epoch 2", "--lr-decay"]),
    (["--comm-timeout", "10"], 2, ["--comm-timeout 10 applies to --distributed training only"]),
    (["--stateful", "--stride", "5"], 2, ["--stride 5 spaces shuffled windows", "--stateful"]),
    (["--div-value", "2"], 2, ["--div-value 2.0", "give --cutoffs too"]),
    (["--val", "{missing}"], 2, ["argument --val: ", "missing.txt does not exist"]),
    (["--test", "{missing}"], 2, ["argument --test: ", "missing.txt does not exist"]),
    (["--val", "{directory}"], 2, ["argument --val: ", "is a directory, not a file"]),
    (["--level", "bpe"], 2, ["--level bpe needs --vocab-size N"]),
    (["--level", "bpe", "--vocab-size", "100"], 2, ["vocab_size must be at least 257"]),
    (["--level", "bpe", "--vocab-size", "300", "--max-vocab", "50"], 2, ["sized by --vocab-size, not --max-vocab"]),
    (["--vocab-size", "300"], 2, ["--vocab-size 300 applies to --level bpe only, got --level char"]),
    (["--split-punctuation"], 2, ["--split-punctuation applies to --level word only, got --level char"]),
    (["--level", "word", "--val", "{foreign}"], 1, ["--val", "foreign.txt", "no token of the training vocabulary"]),
    (["--level", "word", "--test", "{foreign}"], 1, ["--test", "foreign.txt", "no token of the training vocabulary"]),
    (["--val", "{valid}", "--val-fraction", "0.1"], 2, ["--val FILE or --val-fraction, not", "--val-fraction 0.1)"]),
]


@pytest.mark.parametrize("argv, exit_code, fragments", BAD, ids=[" ".join(argv) for argv, _, _ in BAD])
def test_bad_input_is_refused_before_anything_is_trained_or_written(
    capsys, data, foreign, tmp_path, argv, exit_code, fragments
):
    files = {"missing": tmp_path / "missing.txt", "directory": tmp_path, "foreign": foreign, "valid": data["valid"]}
    argv = [a.format(**files) for a in argv]
    out = tmp_path / "m"
    code, stdout, err = run_cli(capsys, "train", data["train"], *SMALL, *argv, *QUICK, "--out", out)
    assert code == exit_code, err
    assert "Traceback" not in err and "epoch" not in stdout
    if exit_code == 1:  # one line
        assert err.startswith("fastlm train: error: ") and err.count("\n") == 1, err
    else:  # a usage error: the usage, then one line
        assert err.startswith("usage: fastlm train ") and err.splitlines()[-1].startswith("fastlm train: error: "), err
    for fragment in fragments:
        assert fragment in err.splitlines()[-1], err
    assert not out.exists()


def test_a_presets_setting_in_conflict_is_named_as_the_presets(capsys, data, tmp_path):
    out = tmp_path / "m"
    code, stdout, err = run_cli(
        capsys, "train", data["train"], "--preset", "zaremba-small", "--level", "char", "--out", out
    )
    assert code == 2 and err.startswith("usage: fastlm train "), err
    assert "--eos <eos> (--preset zaremba-small sets)" in err.splitlines()[-1] and "--level char" in err, err
    assert not out.exists()


def test_resume_finds_moved_files_at_their_new_place(capsys, data, tmp_path):
    train, valid = (tmp_path / "train.txt", tmp_path / "valid.txt")
    train.write_bytes(data["train"].read_bytes())
    valid.write_bytes(data["valid"].read_bytes())
    out = tmp_path / "m"
    code, _, err = run_cli(
        capsys, "train", train, "--val", valid, "--level", "word", *SMALL, "--epochs", "1", *QUICK, "--out", out
    )
    assert code == 0, err
    moved = tmp_path / "moved"
    moved.mkdir()
    train, valid = train.rename(moved / "train.txt"), valid.rename(moved / "valid.txt")
    before = snapshot(out)
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--epochs", "2", *QUICK)
    assert code == 2 and f"the run's CORPUS file {tmp_path / 'train.txt'} is gone" in err, err
    code, _, err = run_cli(capsys, "train", train, "--out", out, "--resume", "--epochs", "2", *QUICK)
    assert code == 2 and f"the run's --val file {tmp_path / 'valid.txt'} is gone" in err, err
    assert snapshot(out) == before
    code, stdout, err = run_cli(
        capsys, "train", train, "--val", valid, "--out", out, "--resume", "--epochs", "2", *QUICK
    )
    assert code == 0 and "epoch 2/2" in stdout, err
    record = saved(out)[2]["metadata"][cli.RECORD_KEY]
    assert (record["corpus"], record["val"]) == ([str(train)], str(valid))  # where the next --resume looks


def test_resume_of_a_checkpoint_written_by_fit_takes_its_training_settings(capsys, data, tmp_path):
    """A checkpoint without fastlm train's record (fit's own, or an older fastlm's) resumes with the
    training loop's settings it holds, here SGD's, instead of the command line's defaults."""
    text = data["train"].read_text(encoding="utf-8")
    tok = fastlm.Tokenizer.fit(text, level="word")
    model = fastlm.LSTMLM(len(tok), 8, 8, 1)
    out = tmp_path / "m"
    model.fit(tok.encode(text), seq_len=10, batch_size=4, epochs=1, optimizer="sgd", lr=0.5, max_batches=1,
              checkpoint_dir=out, tokenizer=tok, progress=False)  # fmt: skip
    code, stdout, err = run_cli(
        capsys, "train", data["train"], "--val-fraction", "0", "--out", out, "--resume", "--epochs", "1", *QUICK
    )
    assert code == 0 and "epoch 1/1" in stdout, err
    settings = saved(out)[2]["settings"]
    assert (settings["optimizer"], settings["lr"], settings["seq_len"], settings["clip_norm"]) == ("sgd", 0.5, 10, None)


def test_with_ids_the_tokenizer_files_options_are_the_runs(capsys, data, tmp_path):
    """--ids trains with the --tokenizer file's tokenizer: its options are recorded (so that --resume
    compares against what was used), and a --preset or option it contradicts is an error."""
    plain = fastlm.Tokenizer.fit_file(data["train"], level="word")  # no <eos>
    plain.save(tmp_path / "plain.json")
    fastlm.save_ids(tmp_path / "ids.bin", plain.encode_file(data["train"]), len(plain))
    common = ["--ids", tmp_path / "ids.bin", "--tokenizer", tmp_path / "plain.json", *QUICK]
    code, _, err = run_cli(capsys, "train", *common, "--preset", "zaremba-small", "--out", tmp_path / "bad")
    assert code == 1 and "--eos <eos> (--preset zaremba-small sets) does not match" in err, err
    assert "plain.json" in err and "--eos (none)" in err and not (tmp_path / "bad").exists()
    code, _, err = run_cli(capsys, "train", *common, "--level", "char", *SMALL, "--out", tmp_path / "bad")
    assert code == 1 and "--level char (given) does not match" in err and "--level word" in err, err
    out = tmp_path / "m"
    code, _, err = run_cli(capsys, "train", *common, *SMALL, "--epochs", "1", "--out", out)
    assert code == 0, err
    record = saved(out)[2]["metadata"][cli.RECORD_KEY]
    assert (record["level"], record["eos"]) == ("word", None)  # the tokenizer's, not the defaults (char)
    code, stdout, err = run_cli(capsys, "train", "--out", out, "--resume", "--epochs", "2", "--level", "word", *QUICK)
    assert code == 0 and "epoch 2/2" in stdout, err


def test_encode_fits_a_tokenizer_with_eos_for_a_preset(capsys, data, tmp_path):
    tokenizer, ids = tmp_path / "tok.json", tmp_path / "ids.bin"
    code, _, err = run_cli(
        capsys, "encode", data["train"], "--fit", "--eos", "<eos>", "--tokenizer", tokenizer, "--out", ids
    )
    assert code == 0, err
    tok = fastlm.Tokenizer.load(tokenizer)
    assert tok.eos == "<eos>" and tok.encode("cat\ndog\n").tolist() == [
        tok["cat"],
        tok["<eos>"],
        tok["dog"],
        tok["<eos>"],
    ]
    code, _, err = run_cli(
        capsys, "encode", data["train"], "--fit", "--eos", "", "--tokenizer", tokenizer, "--out", ids
    )
    assert code == 2 and "argument --eos: eos must be a non-empty token" in err
    out = tmp_path / "m"
    small = ["--embed", "8", "--hidden", "8", "--layers", "1", "--epochs", "1"]
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--ids",
        ids,
        "--tokenizer",
        tokenizer,
        "--preset",
        "zaremba-small",
        *small,
        *QUICK,
        "--out",
        out,
    )
    assert code == 0 and "epoch 1/1" in stdout, err
    assert saved(out)[2]["settings"]["optimizer"] == "sgd"
