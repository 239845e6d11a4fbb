"""Tokenizer(level="bpe"): byte-level BPE through Hugging Face tokenizers (the [bpe] extra).

Round trips of any text, files and chunked input equal to the whole, tokenizer.json and model
directories, determinism, bad input, the install hint without the library, and a model trained
on BPE ids generating, streaming, scoring and evaluating.
"""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastlm
from fastlm import bpe, cli
from fastlm.tokenizer import Tokenizer

pytest.importorskip("tokenizers", reason="level='bpe' needs Hugging Face tokenizers: pip install 'fastlm[bpe]'")

TRAIN = fastlm.datasets.tinyshakespeare()[:30000]
ODD = (
    "  leading spaces, trailing spaces   \n\n\n\ttabs\t\tand\r\nCRLF\r\n"
    "emoji 😀👍🏽 👨‍👩‍👧 🇫🇷, naïve café, 日本語のテキスト, Ἀθῆναι, नमस्ते, مرحبا\n"
    "a literal <unk> and <eos>, NBSP\u00a0here, zero\u200bwidth, e\u0301, \x00 control\x7f "
)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.fit(TRAIN, level="bpe", vocab_size=400)


def test_fit_learns_the_vocabulary_size_asked(tok):
    assert tok.level == "bpe" and len(tok) == 400 and tok.vocab[0] == "<unk>" and tok.unk_id == 0
    assert repr(tok) == "Tokenizer(level='bpe', size=400, lowercase=False)"
    ids = tok.encode(TRAIN)
    assert ids.dtype == np.int32 and ids.min() >= 1 and ids.max() < 400  # never <unk>
    assert len(ids) < 0.6 * len(TRAIN.encode())  # merges: fewer tokens than bytes
    tokens = tok.tokenize("said the king's")
    assert "".join(tokens) == "".join(bpe.BYTE_CHARS[b] for b in b"said the king's")
    assert "Ġthe" in tokens and "'s" in tokens  # a space stays with the word after it; GPT-2's contractions


@pytest.mark.parametrize("text", [ODD, "", " ", "\n", "x", TRAIN[:2000], "<unk>"])
def test_round_trip_is_exact(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_any_text_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_id_0_decodes_as_unk_and_cut_characters_as_replacement(tok):
    assert tok.decode([0]) == "<unk>"
    emoji = tok.encode("😀")
    assert len(emoji) > 1  # four bytes, never merged in this English corpus
    assert tok.decode(emoji[:-1]) == "\ufffd"


def test_lowercase(tok):
    lower = Tokenizer.fit(TRAIN, level="bpe", vocab_size=300, lowercase=True)
    assert lower.decode(lower.encode("The KING")) == "the king"


def test_deterministic():
    a = Tokenizer.fit(TRAIN, level="bpe", vocab_size=350).to_json_bytes()
    b = Tokenizer.fit(TRAIN, level="bpe", vocab_size=350).to_json_bytes()
    assert a == b


def test_chunks_and_files_equal_the_whole(tok, tmp_path, monkeypatch):
    text = TRAIN[:20000] + ODD
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    whole = tok.encode(text)
    assert np.array_equal(tok.encode_file(path, chunk_size=97), whole)
    assert np.array_equal(np.concatenate(list(tok.encode_file_chunks(path, chunk_size=61))), whole)
    monkeypatch.setattr("fastlm.tokenizer._PIECE_CHARS", 1000)  # cut in-memory text too
    assert np.array_equal(tok.encode(text), whole)
    fitted = Tokenizer.fit(TRAIN, level="bpe", vocab_size=400)
    assert Tokenizer.fit_file(_write(tmp_path / "t.txt", TRAIN), level="bpe", vocab_size=400, chunk_size=333) == fitted
    assert Tokenizer.fit([TRAIN[i : i + 37] for i in range(0, len(TRAIN), 37)], level="bpe", vocab_size=400) == fitted


def _write(path, text):
    path.write_bytes(text.encode("utf-8"))
    return path


def test_safe_cuts_split_as_the_whole_does():
    assert bpe.safe_cut("a b") == 1 and bpe.safe_cut("ab  c") == 0 and bpe.safe_cut("a\n b") == 0
    assert "".join(bpe.pieces(["ab cd", " ef", "gh  ij k"], 1)) == "ab cd efgh  ij k"


def test_save_and_load_identically(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["format"] == 3 and data["level"] == "bpe" and data["vocab"][0] == "<unk>"
    assert data["bpe"]["model"]["type"] == "BPE" and len(data["bpe"]["model"]["vocab"]) == 399
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded == tok and loaded.to_json_bytes() == tok.to_json_bytes()
    assert np.array_equal(loaded.encode(ODD), tok.encode(ODD)) and loaded.decode(tok.encode(ODD)) == ODD


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format=2), "format 2 has no level 'bpe'"),
        (lambda d: d.update(vocab=d["vocab"][:-1]), "vocab must be '<unk>' followed by the BPE's tokens"),
        (lambda d: d["bpe"]["pre_tokenizer"].update(add_prefix_space=True), "not byte-level"),
        (lambda d: d["bpe"]["model"]["vocab"].pop("Ġ"), "vocab ids are not 0, 1"),
        (lambda d: d.pop("bpe"), "level='bpe' and bpe"),
    ],
)
def test_load_refuses_a_broken_bpe(tok, tmp_path, change, message):
    data = json.loads(tok.to_json_bytes())
    change(data)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        Tokenizer.load(tmp_path / "tokenizer.json")


@pytest.mark.parametrize(
    "kw, error, message",
    [
        (dict(vocab_size=0), ValueError, r"vocab_size must be an integer in \[1, 2147483647\], got 0"),
        (dict(vocab_size=-3), ValueError, "vocab_size must be an integer in .*, got -3"),
        (dict(vocab_size=2.5), TypeError, "vocab_size must be an integer"),
        (dict(vocab_size=100), ValueError, "vocab_size must be at least 257"),
        (dict(vocab_size=10**6), ValueError, "vocab_size=1000000 is larger than this text allows: .* stops at"),
        (dict(), ValueError, "level='bpe' needs vocab_size"),
        (dict(vocab_size=300, max_vocab=300), ValueError, "sized by vocab_size, not max_vocab"),
        (dict(vocab_size=300, eos="<eos>"), ValueError, "eos applies to level='word' only"),
        (dict(vocab_size=300, split_punctuation=True), ValueError, "split_punctuation applies to level='word'"),
    ],
)
def test_bad_options(kw, error, message):
    with pytest.raises(error, match=message):
        Tokenizer.fit("the cat sat on the mat", level="bpe", **kw)


def test_vocab_size_is_for_bpe_only():
    with pytest.raises(ValueError, match="vocab_size applies to level='bpe' only"):
        Tokenizer.fit("the cat", level="word", vocab_size=300)
    with pytest.raises(ValueError, match="empty corpus"):
        Tokenizer.fit("", level="bpe", vocab_size=300)


def test_without_the_library_the_error_says_what_to_install(tok, tmp_path, monkeypatch):
    tok.save(tmp_path / "tokenizer.json")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers now fails
    with pytest.raises(ImportError, match=r"pip install 'fastlm\[bpe\]'"):
        Tokenizer.fit("the cat", level="bpe", vocab_size=300)
    with pytest.raises(ImportError, match=r"pip install 'fastlm\[bpe\]'"):
        Tokenizer.load(tmp_path / "tokenizer.json")


def test_stream_decoder_holds_back_cut_characters(tok):
    text = "héllo 😀 wörld 日本"
    ids = tok.encode(text)
    decoder = tok.stream_decoder()
    pieces = [decoder.decode(ids[i : i + 1]) for i in range(len(ids))] + [decoder.flush()]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert pieces.count("") >= 3  # the emoji's first bytes, among others, waited for the rest


# ---------------------------------------------------------------- a model on BPE ids


@pytest.fixture(scope="module")
def model(tok):
    threads = fastlm.get_num_threads()
    fastlm.set_num_threads(1)
    model = fastlm.LSTMLM(len(tok), 16, 16, seed=1)
    model.tokenizer = tok
    model.fit(tok.encode(TRAIN[:8000] + ODD * 20), seq_len=16, batch_size=8, epochs=1, lr=1e-2, progress=False)
    fastlm.set_num_threads(threads)
    return model


def test_generate_stream_score_and_evaluate(model, tok):
    # Hot sampling from a barely trained model draws many lone bytes of multi-byte characters: the
    # pieces still join to the text generate_text decodes at once (a character split between two
    # pieces would show as U+FFFD in the stream only).
    for seed in range(3):
        pieces = list(model.stream("ROMEO:", max_new_tokens=40, seed=seed, temperature=1.5))
        assert "".join(pieces) == model.generate_text("ROMEO:", max_new_tokens=40, seed=seed, temperature=1.5)
    assert "\n" not in model.generate_text("ROMEO:", max_new_tokens=40, seed=0, stop="\n")
    assert np.isfinite(model.score("First Citizen:")) and model.perplexity("First Citizen:") > 1
    result = model.evaluate(tok.encode(TRAIN[8000:10000]), seq_len=16)
    assert np.isfinite(result["loss"]) and result["tokens"] == len(tok.encode(TRAIN[8000:10000])) - 1


def test_model_directory_and_pickle_keep_the_bpe(model, tmp_path):
    assert pickle.loads(pickle.dumps(model.tokenizer)) == model.tokenizer
    assert pickle.loads(pickle.dumps(model)).tokenizer.decode(model.tokenizer.encode(ODD)) == ODD
    model.save(tmp_path / "m")
    loaded = fastlm.load(tmp_path / "m")
    assert loaded.tokenizer == model.tokenizer
    assert loaded.generate_text("ROMEO:", max_new_tokens=20, seed=3) == model.generate_text(
        "ROMEO:", max_new_tokens=20, seed=3
    )


def test_cli_trains_with_bpe(tmp_path, capsys):
    corpus = _write(tmp_path / "corpus.txt", TRAIN[:6000])
    argv = ["train", corpus, "--level", "bpe", "--vocab-size", "300", "--epochs", "1", "--out", tmp_path / "m"]
    tiny = ["--hidden", "16", "--embed", "8", "--layers", "1", "--seq-len", "16", "--batch-size", "8"]
    code = cli.main([str(a) for a in argv + tiny + ["--sample-tokens", "10"]])
    assert code == 0, capsys.readouterr().err
    assert "bpe tokens, vocabulary 300" in capsys.readouterr().out
    assert fastlm.load(tmp_path / "m").tokenizer == Tokenizer.fit(TRAIN[:6000], level="bpe", vocab_size=300)
    argv = ["train", corpus, "--level", "word", "--vocab-size", "300", "--out", tmp_path / "w"]
    with pytest.raises(SystemExit) as exit:  # a usage error
        cli.main([str(a) for a in argv])
    assert exit.value.code == 2 and "--vocab-size 300 applies to --level bpe only" in capsys.readouterr().err


def test_cli_encodes_with_a_bpe_tokenizer_for_ids_training(tmp_path, capsys):
    """A corpus larger than memory: `fastlm encode --fit --level bpe --vocab-size N` streams it into a
    BPE tokenizer and a token file; `train --ids` records the tokenizer's size as the run's, so that a
    --resume (or a typed --vocab-size) is compared with it."""
    corpus = _write(tmp_path / "corpus.txt", TRAIN[:6000])
    tokenizer, ids = tmp_path / "tok.json", tmp_path / "ids.bin"
    argv = ["encode", corpus, "--fit", "--level", "bpe", "--vocab-size", "300", "--tokenizer", tokenizer]
    code = cli.main([str(a) for a in [*argv, "--out", ids]])
    assert code == 0, capsys.readouterr().err
    expected = Tokenizer.fit(TRAIN[:6000], level="bpe", vocab_size=300)
    assert Tokenizer.load(tokenizer) == expected
    assert np.array_equal(fastlm.open_ids(ids, vocab_size=300), expected.encode(TRAIN[:6000]))
    tiny = ["--hidden", "8", "--embed", "8", "--layers", "1", "--seq-len", "16", "--batch-size", "8", "--epochs", "1"]
    common = ["train", "--ids", ids, "--tokenizer", tokenizer, *tiny, "--sample-tokens", "0", "--no-progress"]
    code = cli.main([str(a) for a in [*common, "--vocab-size", "400", "--out", tmp_path / "bad"]])
    err = capsys.readouterr().err
    assert code == 1 and "--vocab-size 400 (given) does not match" in err and "--vocab-size 300" in err, err
    code = cli.main([str(a) for a in [*common, "--out", tmp_path / "m"]])
    assert code == 0, capsys.readouterr().err
    trainer = json.loads((fastlm.model_dir.save_path(tmp_path / "m") / "trainer.json").read_text())
    assert trainer["metadata"][cli.RECORD_KEY]["vocab_size"] == 300
    with pytest.raises(SystemExit) as exit:  # a usage error
        cli.main(
            [str(a) for a in ["encode", corpus, "--fit", "--level", "bpe", "--tokenizer", tokenizer, "--out", ids]]
        )
    assert exit.value.code == 2 and "--level bpe needs --vocab-size N" in capsys.readouterr().err
