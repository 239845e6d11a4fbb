"""fastlm.Tokenizer: levels, options, Unicode, streaming equals in-memory, files, bad input."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastlm import tokenizer as tokenizer_module
from fastlm.tokenizer import Tokenizer

TEXT = "the cat sat on the mat.\nThe dog sat on the log!\n\tthe end  "
UNICODE = (
    "naïve café — 日本語のテキスト 😀👍🏽 e\u0301 (combining) Ἀθῆναι ΟΔΟΣ İstanbul\r\n"
    "emoji 👨‍👩‍👧 flags 🇫🇷 नमस्ते مرحبا\n"
)


def chunked(text, sizes):
    """Cut text into consecutive pieces of the given sizes (cycled)."""
    out, i, k = [], 0, 0
    while i < len(text):
        out.append(text[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return out


# ---------------------------------------------------------------- basics and round trips


def test_word_level_round_trip_normalises_whitespace():
    tok = Tokenizer.fit(TEXT)
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32 and ids.ndim == 1 and len(ids) == len(TEXT.split())
    assert tok.decode(ids) == " ".join(TEXT.split())


def test_char_level_round_trip_is_exact():
    for text in (TEXT, UNICODE):
        tok = Tokenizer.fit(text, level="char")
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and len(ids) == len(text)
        assert tok.decode(ids) == text
        assert tok.decode(list(ids)) == text


def test_vocabulary_order_and_access():
    tok = Tokenizer.fit("b a c b a b d")
    assert tok.vocab == ("<unk>", "b", "a", "c", "d")  # specials, count desc, ties by string
    assert tok.counts == (0, 3, 2, 1, 1)
    assert len(tok) == tok.vocab_size == 5
    assert tok.unk_id == Tokenizer.UNK_ID == 0 and tok.vocab[0] == Tokenizer.UNK == "<unk>"
    assert tok["a"] == 2 and "a" in tok and "z" not in tok
    with pytest.raises(KeyError):
        tok["z"]
    assert tok.token_to_id("z") == 0 and tok.token_to_id("c") == 3
    assert tok.id_to_token(4) == "d"
    with pytest.raises(IndexError):
        tok.id_to_token(5)
    char = Tokenizer.fit("bbaac", level="char")
    assert char.vocab == ("<unk>", "a", "b", "c")


def test_fit_is_deterministic():
    words = " ".join(f"w{i % 37}" for i in range(1000))
    assert Tokenizer.fit(words).vocab == Tokenizer.fit(words).vocab


def test_empty_text_encodes_to_empty_array():
    for level in ("word", "char"):
        ids = Tokenizer.fit("a b", level=level).encode("")
        assert ids.dtype == np.int32 and ids.shape == (0,)
    assert Tokenizer.fit("a b").decode([]) == ""


# ---------------------------------------------------------------- unknown tokens


def test_unknown_words_and_chars_map_to_unk_and_are_reported():
    tok = Tokenizer.fit("the cat sat")
    ids, unknown = tok.encode("the zebra sat on it", return_unknown=True)
    assert ids.tolist() == [tok["the"], 0, tok["sat"], 0, 0]
    assert unknown == 3 and tok.count_unknown("the zebra sat on it") == 3
    assert tok.unknown_tokens("the zebra sat on zebra it") == ["zebra", "on", "it"]
    assert tok.decode(ids) == "the <unk> sat <unk> <unk>"
    assert tok.count_unknown("the cat") == 0

    char = Tokenizer.fit("abc", level="char")
    ids, unknown = char.encode("abxc😀", return_unknown=True)
    assert ids.tolist() == [char["a"], char["b"], 0, char["c"], 0] and unknown == 2
    assert char.unknown_tokens("xax😀") == ["x", "😀"]
    assert char.decode(ids) == "ab<unk>c<unk>"


def test_literal_unk_word_is_the_unk_token():
    tok = Tokenizer.fit("a <unk> b <unk> a", split_punctuation=False)
    assert tok.vocab == ("<unk>", "a", "b") and tok.counts[0] == 2
    assert tok.encode("<unk> a").tolist() == [0, 1]
    punct = Tokenizer.fit("a <unk>, b", split_punctuation=True)
    assert punct.vocab.count("<unk>") == 1 and punct.encode("x<unk>").tolist() == [0, 0]


# ---------------------------------------------------------------- options


def test_min_count_and_max_vocab():
    text = "a a a a b b b c c d"
    tok = Tokenizer.fit(text, min_count=2)
    assert tok.vocab == ("<unk>", "a", "b", "c") and tok.counts[0] == 1  # one "d"
    assert tok.encode("d").tolist() == [0]
    tok = Tokenizer.fit(text, max_vocab=3)  # <unk> counts towards max_vocab
    assert tok.vocab == ("<unk>", "a", "b") and len(tok) == 3 and tok.counts[0] == 3
    tok = Tokenizer.fit("b a", max_vocab=2)  # tie broken by the token string
    assert tok.vocab == ("<unk>", "a")
    char = Tokenizer.fit("aaabbc", level="char", min_count=2, max_vocab=2)
    assert char.vocab == ("<unk>", "a") and char.encode("abc").tolist() == [1, 0, 0]


def test_lowercase():
    tok = Tokenizer.fit("The THE the Cat", lowercase=True)
    assert tok.vocab == ("<unk>", "the", "cat")
    assert tok.encode("tHe CAT").tolist() == [1, 2]
    assert Tokenizer.fit("The the", lowercase=False).vocab == ("<unk>", "The", "the")
    char = Tokenizer.fit("AaBb", level="char", lowercase=True)
    assert char.vocab == ("<unk>", "a", "b") and char.decode(char.encode("ABab")) == "abab"


def test_split_punctuation():
    text = "Hello, world! Don't stop... (really)"
    assert Tokenizer.fit(text).tokenize(text) == ["Hello,", "world!", "Don't", "stop...", "(really)"]
    tok = Tokenizer.fit(text, split_punctuation=True)
    assert tok.tokenize(text) == [
        "Hello",
        ",",
        "world",
        "!",
        "Don",
        "'",
        "t",
        "stop",
        ".",
        ".",
        ".",
        "(",
        "really",
        ")",
    ]
    assert tok.decode(tok.encode("world, hello!")) == "world , <unk> !"
    # combining marks stay in their word; Devanagari vowel signs and viramas too
    assert tok.tokenize("cafe\u0301! नमस्ते.") == ["cafe\u0301", "!", "नमस्ते", "."]
    # a symbol keeps the marks that follow it (emoji + variation selector)
    assert tok.tokenize("ok\u2764\ufe0f") == ["ok", "\u2764\ufe0f"]
    assert tok.tokenize("日本語、テキスト。") == ["日本語", "、", "テキスト", "。"]
    # marks beyond the Basic Multilingual Plane (variation selector 17, a Brahmi vowel sign)
    assert tok.tokenize("a\U000e0100b, \U00011005\U0001103a!😀\U000e0101") == [
        "a\U000e0100b",
        ",",
        "\U00011005\U0001103a",
        "!",
        "😀\U000e0101",
    ]


def test_unicode_word_level():
    tok = Tokenizer.fit(UNICODE)
    assert "😀👍🏽" in tok and "日本語のテキスト" in tok and "e\u0301" in tok
    assert tok.decode(tok.encode(UNICODE)) == " ".join(UNICODE.split())
    assert "\u3000" not in Tokenizer.fit("a\u3000b\xa0c").vocab  # Unicode whitespace splits


def test_unicode_char_level_is_code_points():
    tok = Tokenizer.fit("e\u0301😀", level="char")
    assert set(tok.vocab[1:]) == {"e", "\u0301", "😀"}
    assert len(tok.encode("e\u0301😀")) == 3
    surrogate = "a\udc80b"  # e.g. text read with errors="surrogateescape"
    tok = Tokenizer.fit(surrogate, level="char")
    assert tok.decode(tok.encode(surrogate)) == surrogate


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize(
    "options",
    [
        dict(level="word"),
        dict(level="char", lowercase=True),
        dict(level="word", split_punctuation=True, min_count=2, max_vocab=40),
    ],
)
def test_save_load_round_trip(tmp_path, options):
    tok = Tokenizer.fit(UNICODE * 2 + TEXT, **options)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded == tok and loaded.vocab == tok.vocab
    for key, value in options.items():
        assert getattr(loaded, key) == value
    assert np.array_equal(loaded.encode(UNICODE), tok.encode(UNICODE))
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == 1 and data["vocab"][0] == "<unk>"  # no eos: format 1
    assert {"level", "lowercase", "split_punctuation", "min_count", "max_vocab"} <= data.keys()
    assert os.listdir(tmp_path) == ["tokenizer.json"]  # no temporary file left behind
    tok.save(str(path))  # overwrite in place
    assert Tokenizer.load(str(path)) == tok


def test_save_with_lone_surrogate(tmp_path):
    tok = Tokenizer.fit("a\udc80b", level="char")
    tok.save(tmp_path / "t.json")
    assert Tokenizer.load(tmp_path / "t.json") == tok


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.load(tmp_path / "nope.json")
    good = Tokenizer.fit("a b b").to_dict()

    def write(name, content):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        return path

    cases = {
        "truncated": (json.dumps(good)[:-5].encode(), "corrupted JSON"),
        "binary": (b"\xff\xfe\x00garbage", "not UTF-8"),
        "list": ([1, 2], "JSON object"),
        "wrong_type": ({**good, "type": "something"}, "not a fastlm tokenizer"),
        "future": ({**good, "format": tokenizer_module.FORMAT + 1}, "newer"),
        "bad_format": ({**good, "format": "1"}, "format"),
        "no_vocab": ({k: v for k, v in good.items() if k != "vocab"}, "missing 'vocab'"),
        "vocab_not_list": ({**good, "vocab": "abc"}, "'vocab' must be a list"),
        "no_unk": ({**good, "vocab": ["a", "b"], "counts": None}, "<unk>"),
        "duplicates": ({**good, "vocab": ["<unk>", "a", "a"]}, "duplicate"),
        "bad_token": ({**good, "vocab": ["<unk>", 3, "b"]}, "vocab entry 1"),
        "bad_level": ({**good, "level": "byte"}, "level"),
        "bad_flag": ({**good, "lowercase": "yes"}, "lowercase"),
        "bad_counts": ({**good, "counts": [0, 1]}, "counts"),
        "char_not_single": ({**good, "level": "char", "vocab": ["<unk>", "ab"], "counts": None}, "single"),
    }
    for name, (content, message) in cases.items():
        path = write(name + ".json", content)
        with pytest.raises(ValueError, match=message) as info:
            Tokenizer.load(path)
        assert str(path) in str(info.value), name


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_load_refuses_what_is_not_a_regular_file(tmp_path, kind):
    """A directory has nothing to read, a FIFO would block the open and /dev/zero never ends
    (read whole, it exhausts the memory): each is named before a byte is read."""
    path = tmp_path / "tok.json"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(os.devnull)
    expected = {"directory": "a directory", "fifo": "a FIFO", "device": "a character device"}[kind]
    with pytest.raises(ValueError, match=f"tok.json is {expected}, not a regular file"):
        Tokenizer.load(path)


def test_load_refuses_a_file_larger_than_its_bound_before_reading_it(tmp_path):
    path = tmp_path / "tok.json"
    Tokenizer.fit("a b b").save(path)
    size = path.stat().st_size
    with pytest.raises(ValueError, match=rf"tok\.json: {size:,} bytes, more than a tokenizer file may hold \(100;"):
        Tokenizer.load(path, max_bytes=100)
    assert Tokenizer.load(path, max_bytes=size) == Tokenizer.fit("a b b")
    with open(path, "ab") as f:  # a sparse file beyond the default bound, refused by its size
        f.truncate(tokenizer_module.MAX_FILE_BYTES + 1)
    with pytest.raises(ValueError, match="more than a tokenizer file may hold"):
        Tokenizer.load(path)
    with pytest.raises(ValueError, match=r"max_bytes must be a positive integer, got 0"):
        Tokenizer.load(path, max_bytes=0)


# ---------------------------------------------------------------- streaming equals in-memory

STREAM_TEXT = (
    "Ünïcödé wörds 😀😀 and CJK 日本語テキスト  split\nacross ΟΔΟΣ chunks, e\u0301e\u0301! " * 3
    + "a_very_long_word_that_spans_many_chunks_" * 5
    + "\n end"
)


@pytest.mark.parametrize(
    "options",
    [
        dict(level="word"),
        dict(level="word", lowercase=True),
        dict(level="word", split_punctuation=True, lowercase=True),
        dict(level="char"),
        dict(level="char", lowercase=True, min_count=2),
    ],
)
def test_file_and_chunked_fit_encode_equal_in_memory(tmp_path, monkeypatch, options):
    path = tmp_path / "corpus.txt"
    path.write_bytes(STREAM_TEXT.encode("utf-8"))
    reference = Tokenizer.fit(STREAM_TEXT, **options)
    expected = reference.encode(STREAM_TEXT)
    # chunk_size 1..7 bytes cuts through every multi-byte character and most words
    for chunk_size in (1, 2, 3, 5, 7, 64, 1 << 20):
        tok = Tokenizer.fit_file(path, chunk_size=chunk_size, **options)
        assert tok == reference, chunk_size
        assert np.array_equal(tok.encode_file(path, chunk_size=chunk_size), expected), chunk_size
    # iterables of str chunks, regrouped into small pieces so the cutting is exercised
    monkeypatch.setattr(tokenizer_module, "_PIECE_CHARS", 3)
    for sizes in ([1], [2, 5], [7, 1, 3], [1000]):
        assert Tokenizer.fit(chunked(STREAM_TEXT, sizes), **options) == reference
        assert Tokenizer.fit(iter(chunked(STREAM_TEXT, sizes)), **options) == reference
    assert np.array_equal(reference.encode(STREAM_TEXT), expected)  # in-memory str in 3-char slices


def test_char_level_cuts_long_runs_without_whitespace(tmp_path, monkeypatch):
    text = "x" * 50 + "日本語😀" * 20 + " tail"
    path = tmp_path / "run.txt"
    path.write_text(text, encoding="utf-8")
    reference = Tokenizer.fit(text, level="char")
    monkeypatch.setattr(tokenizer_module, "_MAX_RUN_CHARS", 8)
    monkeypatch.setattr(tokenizer_module, "_PIECE_CHARS", 4)
    for chunk_size in (1, 3, 10):
        assert Tokenizer.fit_file(path, level="char", chunk_size=chunk_size) == reference
        assert reference.decode(reference.encode_file(path, chunk_size=chunk_size)) == text
    assert Tokenizer.fit(chunked(text, [3]), level="char") == reference
    assert reference.decode(reference.encode(text)) == text
    pieces = list(tokenizer_module._whole_pieces(chunked(text, [3]), 1, 8))
    assert "".join(pieces) == text and max(map(len, pieces)) <= 10


@settings(max_examples=60, deadline=None, derandomize=True)  # the same cases on every run
@given(
    text=st.text(alphabet=st.sampled_from(list("ab Σσ\n\t😀é\u0301日,.İ")), max_size=60),
    chunk_size=st.integers(1, 9),
    level=st.sampled_from(["word", "char"]),
    lowercase=st.booleans(),
)
def test_streaming_property(tmp_path_factory, text, chunk_size, level, lowercase):
    if not text.split() if level == "word" else not text:
        return
    path = tmp_path_factory.mktemp("prop") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    reference = Tokenizer.fit(text, level=level, lowercase=lowercase)
    assert Tokenizer.fit_file(path, level=level, lowercase=lowercase, chunk_size=chunk_size) == reference
    assert np.array_equal(reference.encode_file(path, chunk_size=chunk_size), reference.encode(text))


def test_encode_file_output_growth(tmp_path):
    # more tokens than the preallocation estimate: the output array must grow correctly
    path = tmp_path / "short_words.txt"
    text = "a b " * 20000
    path.write_text(text, encoding="utf-8")
    tok = Tokenizer.fit("a b")
    ids = tok.encode_file(path, chunk_size=1000)
    assert len(ids) == 40000 and np.array_equal(ids, tok.encode(text))
    # char level: lowercasing "İ" (one byte in ISO 8859-9) gives two code points
    path = tmp_path / "turkish.txt"
    path.write_bytes("İ".encode("iso8859-9") * 500)
    tok = Tokenizer.fit("i\u0307", level="char", lowercase=True)
    ids = tok.encode_file(path, encoding="iso8859-9", chunk_size=64)
    assert len(ids) == 1000 and tok.decode(ids) == "i\u0307" * 500


def test_file_newlines_are_kept(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"ab\r\ncd\r\n")
    tok = Tokenizer.fit_file(path, level="char")
    assert "\r" in tok and tok.decode(tok.encode_file(path)) == "ab\r\ncd\r\n"


# ---------------------------------------------------------------- bad input


def test_bad_arguments():
    for kwargs in (
        dict(level="byte"),
        dict(level="WORD"),
        dict(min_count=0),
        dict(min_count=-1),
        dict(max_vocab=1),
        dict(max_vocab=0),
        dict(level="char", split_punctuation=True),
    ):
        with pytest.raises(ValueError):
            Tokenizer.fit("a b", **kwargs)
    for kwargs in (dict(min_count=1.5), dict(min_count=True), dict(max_vocab="10"), dict(lowercase=1)):
        with pytest.raises(TypeError):
            Tokenizer.fit("a b", **kwargs)


def test_empty_corpus():
    for text in ("", "   \n\t ", [], ["", ""], iter([" ", "\n"])):
        with pytest.raises(ValueError, match="empty corpus"):
            Tokenizer.fit(text)
    with pytest.raises(ValueError, match="empty corpus"):
        Tokenizer.fit("", level="char")
    with pytest.raises(ValueError, match="min_count"):
        Tokenizer.fit("a b c", min_count=2)


def test_non_str_input():
    tok = Tokenizer.fit("a b")
    for bad in (b"a b", 42, None, ["a", 3], [b"a b"]):
        with pytest.raises(TypeError):
            Tokenizer.fit(bad)
    for bad in (b"a b", 42, None, ["a"]):
        with pytest.raises(TypeError):
            tok.encode(bad)
        with pytest.raises(TypeError):
            tok.count_unknown(bad)
    with pytest.raises(TypeError):
        Tokenizer.fit_file(3.5)


def test_bad_ids_for_decode():
    tok = Tokenizer.fit("a b")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="outside"):
        tok.decode(np.array([-1], dtype=np.int64))
    with pytest.raises(TypeError):
        tok.decode([0.5, 1.0])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode([[1, 2]])


def test_missing_files(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Tokenizer.fit_file(missing)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Tokenizer.fit("a b").encode_file(missing)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 1 << 20])
def test_invalid_utf8_names_file_and_offset(tmp_path, chunk_size):
    prefix = "héllo wörld 😀 ".encode()
    path = tmp_path / "bad.txt"
    path.write_bytes(prefix + b"\xff rest")
    with pytest.raises(ValueError, match=rf"bad\.txt.*byte offset {len(prefix)}\b"):
        Tokenizer.fit_file(path, chunk_size=chunk_size)
    tok = Tokenizer.fit("héllo", level="char")
    with pytest.raises(ValueError, match=rf"byte offset {len(prefix)}\b"):
        tok.encode_file(path, chunk_size=chunk_size)
    # a multi-byte character cut off by the end of the file
    path.write_bytes(prefix + "😀".encode()[:2])
    with pytest.raises(ValueError, match=rf"byte offset {len(prefix)}\b"):
        Tokenizer.fit_file(path, chunk_size=chunk_size)
    # errors="replace" reads it anyway
    path.write_bytes(prefix + b"\xff rest")
    tok = Tokenizer.fit_file(path, level="char", errors="replace", chunk_size=chunk_size)
    assert "\ufffd" in tok


# ---------------------------------------------------------------- line ends (eos), PTB style

PTB_LIKE = " the cat <unk> sat \n\nthe dog\r\n sat on N mats\n<unk> <unk>"


def lines_with_eos(text, eos="<eos>", lowercase=False):
    """The issue's definition: every line (ending at "\\n", the last one too) is line.split() + [eos]."""
    import io

    text = text.lower() if lowercase else text
    return [token for line in io.StringIO(text, newline="\n") for token in line.split() + [eos]]


@pytest.mark.parametrize("text", [PTB_LIKE, PTB_LIKE + "\n", "\n", "a", "a\n\n", TEXT, UNICODE])
def test_eos_ends_every_line(text):
    tok = Tokenizer.fit(text, eos="<eos>")
    expected = lines_with_eos(text)
    assert tok.tokenize(text) == expected
    assert [tok.vocab[i] for i in tok.encode(text)] == [t if t in tok else "<unk>" for t in expected]
    assert tok.counts[tok["<eos>"]] == expected.count("<eos>")
    # Streaming, cut anywhere, and files read in tiny chunks give the same.
    assert Tokenizer.fit(chunked(text, [1, 2, 5]), eos="<eos>") == tok


def test_eos_in_files_with_small_chunks(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(PTB_LIKE * 3, encoding="utf-8", newline="")
    tok = Tokenizer.fit(PTB_LIKE * 3, eos="<eos>", lowercase=True)
    for chunk_size in (1, 3, 64):
        assert Tokenizer.fit_file(path, eos="<eos>", lowercase=True, chunk_size=chunk_size) == tok
        assert np.array_equal(tok.encode_file(path, chunk_size=chunk_size), tok.encode(PTB_LIKE * 3))


def test_literal_unk_is_the_unknown_token_and_eos_decodes_to_newlines():
    tok = Tokenizer.fit(PTB_LIKE, eos="<eos>")
    assert "<unk>" not in tok.vocab[1:]
    ids = tok.encode("<unk> cat\nzebra")
    assert ids.tolist() == [0, tok["cat"], tok["<eos>"], 0, tok["<eos>"]]
    assert tok.decode(ids) == "<unk> cat\n<unk>\n"
    # Text made of whole lines comes back line for line (words joined by single spaces).
    lines = "the cat sat\n\nthe dog\n"
    assert tok.decode(tok.encode(lines)) == lines
    assert np.array_equal(tok.encode(tok.decode(tok.encode(PTB_LIKE))), tok.encode(PTB_LIKE))


def test_eos_with_split_punctuation_and_lowercase():
    text = "Hello, World!\nBye."
    tok = Tokenizer.fit(text, eos="</s>", split_punctuation=True, lowercase=True)
    assert tok.tokenize(text) == ["hello", ",", "world", "!", "</s>", "bye", ".", "</s>"]


def test_eos_survives_max_vocab_and_min_count():
    text = "a a a b b b c c c\nd d d"
    tok = Tokenizer.fit(text, eos="<eos>", max_vocab=3, min_count=3)
    assert "<eos>" in tok and len(tok) == 3
    assert tok.decode(tok.encode("a\n")) == "a\n"


def test_eos_saved_and_loaded(tmp_path):
    tok = Tokenizer.fit(PTB_LIKE, eos="<eos>")
    tok.save(tmp_path / "tok.json")
    data = json.loads((tmp_path / "tok.json").read_text(encoding="utf-8"))
    assert data["eos"] == "<eos>" and data["format"] == 2
    loaded = Tokenizer.load(tmp_path / "tok.json")
    assert loaded == tok and loaded.eos == "<eos>"
    assert np.array_equal(loaded.encode(PTB_LIKE), tok.encode(PTB_LIKE))
    # Without eos the file stays format 1, readable by earlier versions.
    Tokenizer.fit(PTB_LIKE).save(tmp_path / "plain.json")
    plain = json.loads((tmp_path / "plain.json").read_text(encoding="utf-8"))
    assert plain["format"] == 1 and "eos" not in plain
    data["format"] = 1
    (tmp_path / "bad.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="format 1 has no eos"):
        Tokenizer.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(eos=""), ValueError, "eos must be a non-empty token"),
        (dict(eos="<e os>"), ValueError, "eos must be one word"),
        (dict(eos="<unk>"), ValueError, "eos cannot be '<unk>'"),
        (dict(eos=1), TypeError, "eos must be a str or None"),
        (dict(eos="<eos>", level="char"), ValueError, "eos applies to level='word' only"),
        # a word of the text: each "b" would read as a line end and come back as a newline
        (dict(eos="b"), ValueError, "eos='b' occurs 1 time in the text as a word"),
        (dict(eos="b", split_punctuation=True), ValueError, "eos='b' occurs 1 time"),
    ],
)
def test_bad_eos(kwargs, error, message):
    with pytest.raises(error, match=message):
        Tokenizer.fit("a b\nc", **kwargs)


def test_constructor_needs_eos_in_the_vocabulary():
    with pytest.raises(ValueError, match="eos token '<eos>' is not in the vocabulary"):
        Tokenizer(["<unk>", "a"], eos="<eos>")


def test_save_keeps_lone_surrogates_apart_from_the_pair_they_spell(tmp_path):
    """'\\ud83d\\ude00' (two lone surrogates) and '\\U0001F600' (the character they encode as a
    pair) are different tokens; JSON \\u escapes would read both back as the latter."""
    for level in ("word", "char"):
        tok = Tokenizer.fit("\ud83d\ude00 \U0001f600 a \ud83d", level=level)
        tok.save(tmp_path / "t.json")
        loaded = Tokenizer.load(tmp_path / "t.json")
        assert loaded == tok and loaded.vocab == tok.vocab
        text = "\U0001f600 \ud83d\ude00"
        assert list(loaded.encode(text)) == list(tok.encode(text))
