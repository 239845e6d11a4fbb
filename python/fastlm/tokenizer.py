"""Word- and character-level tokenizer: text <-> 1-D int32 token ids.

Pure Python + NumPy; needs nothing from the C++ core.

Levels
    ``"word"``  tokens are what ``str.split()`` returns: runs of non-whitespace, split at
                any Unicode whitespace (the classic Keras recipe). With
                ``split_punctuation=True`` a token is instead a run of letters, digits,
                underscores and combining marks, or any other single non-space character
                (plus the combining marks that follow it): ``"Hello, world!"`` gives
                ``Hello , world !`` and ``"don't"`` gives ``don ' t``.
    ``"char"``  tokens are Unicode code points (not grapheme clusters: ``"é"`` written as
                ``e`` + U+0301 is two tokens). Whitespace is kept.
    ``"bpe"``   byte-level BPE subwords (GPT-2's scheme, fastlm/bpe.py), learnt by Hugging
                Face ``tokenizers`` (``pip install 'fastlm[bpe]'``) up to ``vocab_size``
                entries, ``<unk>`` included. Any text round-trips exactly.

Line ends
    ``eos="<eos>"`` (word level) reads the text as lines, the Penn Treebank / WikiText
    convention: every line becomes ``line.split() + ["<eos>"]`` (a line is what ends at
    ``"\n"``, and a last line without one counts too), and ``decode`` turns ``<eos>``
    back into a newline. The end-of-line token is an ordinary entry of the vocabulary,
    counted like any word.

Special token
    ``"<unk>"`` always has id 0 (``Tokenizer.UNK_ID``, ``tok.unk_id``). Every token not in
    the vocabulary -- never seen, or dropped by ``min_count`` / ``max_vocab`` -- encodes
    to it, and ``decode`` renders id 0 as the string ``"<unk>"``. At word level the
    literal word ``<unk>`` in a text (as in the Penn Treebank) also encodes to id 0.

Vocabulary order
    ``"<unk>"`` first, then by descending training count, ties broken by the token string
    (code point order). Fitting the same text always gives the same ids.

Round trips
    Char level: ``decode(encode(t)) == t`` exactly for text whose characters are all in the
    vocabulary (and already lower case when ``lowercase=True``). BPE: for every text (lower
    case when ``lowercase=True``), whitespace included. Word level: the tokens
    come back joined by single spaces -- whitespace (newlines included) is normalised.
    No Unicode normalisation (NFC/NFKC) is applied at either level.

Streaming
    ``fit`` accepts a str or any iterable of str chunks (taken as their concatenation;
    chunks may split words anywhere). ``fit_file`` and ``encode_file`` read a file in
    chunks of ``chunk_size`` bytes, re-cut just after whitespace so that no word or
    character is split, so memory stays bounded by the chunk size plus the vocabulary
    plus the output ids (at word level also by the longest run without whitespace; char
    level cuts runs longer than 4M characters anyway, where with ``lowercase=True`` a
    capital sigma right at such a cut could lowercase to "σ" instead of final "ς").
    Files are decoded without newline translation: a ``"\\r\\n"`` file gives ``"\\r"``
    tokens at char level. Bytes invalid in the encoding raise ValueError naming the file
    and byte offset; pass ``errors="replace"`` to read them as U+FFFD instead.

Files
    ``save`` writes JSON atomically: ``{"type": "fastlm.Tokenizer", "format": 1, "level",
    "lowercase", "split_punctuation", "min_count", "max_vocab", "unk_token", "unk_id",
    "vocab": [...], "counts": [...]}``; a tokenizer with an end-of-line token adds
    ``"eos"`` and writes format 2, so that an older fastlm refuses it rather than
    encoding without line ends; a BPE tokenizer writes format 3 with ``"bpe"``, the
    Hugging Face tokenizer's own JSON (its ids are fastlm's minus one: fastlm's id 0 is
    ``<unk>``), and ``"vocab"`` in fastlm's id order. ``load`` raises FileNotFoundError for a missing
    file and ValueError, naming the file and the problem, for anything else it cannot use (a
    file of more than ``MAX_FILE_BYTES``, 256 MiB, unless given ``max_bytes``, is not read).
"""

from __future__ import annotations

import codecs
import errno
import functools
import json
import os
import re
import sys
import unicodedata
from collections import Counter
from itertools import repeat

import numpy as np

from fastlm import bpe
from fastlm.atomic import atomic_write, open_regular_file, read_bounded
from fastlm.checks import check_bool, check_choice, check_int, check_str

UNK = "<unk>"
FORMAT = 3  # newest version of the JSON written by Tokenizer.save (2: with "eos", 3: level "bpe")
LEVELS = ("word", "char", "bpe")

_CHUNK_BYTES = 1 << 20  # bytes read per step by fit_file / encode_file
_PIECE_CHARS = 1 << 20  # characters tokenized per step for in-memory text and iterables
_MAX_RUN_CHARS = 1 << 22  # char level: a run this long without whitespace is cut anyway
_LAST_SPACE = re.compile(r"\s\S*\Z")
# Tokenizer.load's default bound on a file's size, checked before it is read: the JSON of a
# vocabulary of millions of words with their counts fits well inside it, and a file that is
# not a tokenizer (a corpus passed by mistake) is refused without being read whole.
MAX_FILE_BYTES = 256 << 20


# ---------------------------------------------------------------- argument checks


def check_eos(eos, level):
    """eos (the end-of-line token) checked for a tokenizer of level: None, or one word without
    whitespace other than <unk>, and only at word level. Tokenizer.fit's rule, which the CLI's
    --eos applies too."""
    if eos is None:
        return None
    if not isinstance(eos, str):
        raise TypeError(f"eos must be a str or None, got {type(eos).__name__}")
    if not eos:
        raise ValueError("eos must be a non-empty token such as '<eos>', got an empty string")
    if any(c.isspace() for c in eos):
        raise ValueError(f"eos must be one word without whitespace, got {eos!r}")
    if eos == UNK:
        raise ValueError(f"eos cannot be {UNK!r}: that is the unknown token")
    if level != "word":
        raise ValueError(f"eos applies to level='word' only (level={level!r} keeps newlines as tokens)")
    return eos


def _check_options(level, min_count, max_vocab, lowercase, split_punctuation, eos=None):
    if level == "bpe" and max_vocab is not None:
        raise ValueError(f"level='bpe' is sized by vocab_size, not max_vocab (got max_vocab={max_vocab!r})")
    options = {
        "level": check_choice("level", level, LEVELS),
        "min_count": check_int("min_count", min_count, 1),
        "max_vocab": check_int("max_vocab", max_vocab, 2, allow_none=True),
        "lowercase": check_bool("lowercase", lowercase),
        "split_punctuation": check_bool("split_punctuation", split_punctuation),
        "eos": check_eos(eos, level),
    }
    if level != "word" and options["split_punctuation"]:
        raise ValueError("split_punctuation applies to level='word' only")
    return options


def _check_vocab_size(vocab_size, level):
    if level != "bpe":
        if vocab_size is not None:
            raise ValueError(
                f"vocab_size applies to level='bpe' only (got vocab_size={vocab_size!r} with level={level!r}; "
                "word and char levels take max_vocab)"
            )
        return None
    if vocab_size is None:
        raise ValueError("level='bpe' needs vocab_size: how many tokens to learn, <unk> included")
    vocab_size = check_int("vocab_size", vocab_size, 1, 2**31 - 1)  # ids are int32
    if vocab_size < bpe.MIN_VOCAB:
        raise ValueError(
            f"vocab_size must be at least {bpe.MIN_VOCAB} for level='bpe' (<unk> and the 256 bytes every "
            f"text is made of), got {vocab_size}"
        )
    return vocab_size


# ---------------------------------------------------------------- splitting text

_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


@functools.cache
def _punctuation_regexes():
    """Tokens for split_punctuation=True: <unk>, word runs (with combining marks), or one other char.

    Two compiled forms: the complete one, and one without the combining marks beyond the
    Basic Multilingual Plane, which is much faster (re tests those ranges one by one)
    and gives the same tokens on text without such characters.
    """
    category = unicodedata.category
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):
        is_mark = cp <= sys.maxunicode and category(chr(cp))[0] == "M"
        if is_mark and start is None:
            start = cp
        elif not is_mark and start is not None:
            ranges.append((start, cp - 1))
            start = None

    def compiled(marks):
        m = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in marks)
        return re.compile(rf"<unk>|[\w{m}]+|[^\s\w{m}][{m}]*")

    return compiled([r for r in ranges if r[1] <= 0xFFFF]), compiled(ranges)


def _word_tokens(text, lowercase, split_punctuation, eos=None):
    """The words of text; with eos, that token after every "\n" (the last line's is _final_eos's job)."""
    if lowercase:
        text = text.lower()
    if eos is None or "\n" not in text:
        return _split_words(text, split_punctuation)
    if not split_punctuation:  # a literal eos in the text is the same token either way
        return text.replace("\n", f" {eos} ").split()
    lines = text.split("\n")
    tokens = []
    for line in lines[:-1]:
        tokens += _split_words(line, True)
        tokens.append(eos)
    return tokens + _split_words(lines[-1], True)


def _split_words(text, split_punctuation):
    if not split_punctuation:
        return text.split()
    bmp, full = _punctuation_regexes()
    return (bmp if text.isascii() or not _ASTRAL.search(text) else full).findall(text)


def _check_eos_not_in_text(eos, occurrences):
    """Fitting refuses a line-end token the text holds as a word: every occurrence would read as a
    line end and decode as a newline, the word itself lost."""
    if occurrences > 0:
        raise ValueError(
            f"eos={eos!r} occurs {occurrences:,} time{'s' if occurrences != 1 else ''} in the text as a word, "
            "where it would read as a line end and decode as a newline; pass a token the text does not "
            "hold" + (", such as '<eos>'" if eos != "<eos>" else "")
        )


def _with_last_character(pieces, seen):
    """Pass pieces through, keeping the last character of the text in seen[0] (None while empty)."""
    for piece in pieces:
        if piece:
            seen[0] = piece[-1]
        yield piece


def _final_eos(eos, last_character):
    """A last line that does not end in "\n" still ends with eos (as ``for line in file`` reads it)."""
    return [eos] if eos is not None and last_character is not None and last_character != "\n" else []


def _codepoints(text):
    """The code points of a str as a uint32 array (lone surrogates allowed)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _end_of_last_space(s):
    """Index just after the last whitespace character of s, or 0 if s has none."""
    if s[-1].isspace():
        return len(s)
    start = max(0, len(s) - 256)
    m = _LAST_SPACE.search(s, start)
    if m is None and start > 0:
        m = _LAST_SPACE.search(s)
    return m.start() + 1 if m else 0


def _whole_pieces(chunks, min_chars, max_run):
    """Regroup str chunks into pieces of >= min_chars chars, each ending just after whitespace.

    Concatenated, the pieces equal the chunks concatenated. Cutting only after whitespace
    keeps every word whole, and keeps str.lower() (whose final-sigma rule looks at
    neighbouring letters) equal piece by piece and on the whole. Text without whitespace
    is carried on until whitespace or the end of the text, or, when max_run is given
    (char level), cut at a chunk end once max_run chars have gathered -- the one place
    where lowercasing a piece could differ from lowercasing the whole (a capital sigma
    right at the cut).
    """
    buf, size, cut_at = [], 0, None  # cut_at: (index into buf, offset) just after the last whitespace
    for chunk in chunks:
        if not chunk:
            continue
        buf.append(chunk)
        size += len(chunk)
        end = _end_of_last_space(chunk)
        if end:
            cut_at = (len(buf) - 1, end)
        if size < min_chars:
            continue
        if cut_at is None:
            if max_run is None or size < max_run:
                continue
            cut_at = (len(buf) - 1, len(chunk))
        k, end = cut_at
        head = buf[:k]
        head.append(buf[k][:end])
        rest = buf[k][end:]
        yield "".join(head)
        buf = ([rest] if rest else []) + buf[k + 1 :]
        size = sum(map(len, buf))
        cut_at = None  # nothing after the last whitespace holds whitespace
    if buf:
        yield "".join(buf)


def _str_chunks(text):
    """Bounded slices of an in-memory str."""
    for start in range(0, len(text), _PIECE_CHARS):
        yield text[start : start + _PIECE_CHARS]


def _checked_chunks(iterable):
    for i, chunk in enumerate(iterable):
        if not isinstance(chunk, str):
            raise TypeError(
                f"text chunk {i} must be a str, got {type(chunk).__name__}"
                + (
                    " (open files in text mode, or use Tokenizer.fit_file)"
                    if isinstance(chunk, (bytes, bytearray))
                    else ""
                )
            )
        yield chunk


def _text_pieces(text, level):
    """Pieces of a str or of an iterable of str chunks (checked here, so TypeError comes early)."""
    if isinstance(text, str):
        return _regroup(_str_chunks(text), 1, level)
    if isinstance(text, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"text must be a str or an iterable of str, got {type(text).__name__}; "
            "decode it first, or use Tokenizer.fit_file"
        )
    if isinstance(text, os.PathLike):
        raise TypeError(
            f"text must be a str or an iterable of str, got {type(text).__name__}; use Tokenizer.fit_file for files"
        )
    try:
        chunks = iter(text)
    except TypeError:
        raise TypeError(f"text must be a str or an iterable of str, got {type(text).__name__}") from None
    return _regroup(_checked_chunks(chunks), _PIECE_CHARS, level)


class TextDecodeError(ValueError):
    """A file's bytes that are not valid in its encoding: path, encoding and the byte offset."""

    def __init__(self, message, path, encoding, offset):
        super().__init__(message)
        self.path, self.encoding, self.offset = path, encoding, offset


def _file_chunks(path, encoding, errors, chunk_size):
    """Decoded str chunks of a file, read chunk_size bytes at a time; decode errors name the byte offset."""
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    offset = 0  # bytes handed to the decoder so far
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk_size)
            try:
                pending = len(decoder.getstate()[0])  # bytes of a character split by the last read
            except (TypeError, IndexError):
                pending = 0
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start
                bad = e.object[e.start : e.end]
                raise TextDecodeError(
                    f"{path}: not valid {encoding} at byte offset {at} "
                    f"(byte {bad[:4]!r}: {e.reason}); pass errors='replace' to read it "
                    "with U+FFFD in place of undecodable bytes",
                    path,
                    encoding,
                    at,
                ) from e
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def _file_pieces(path, level, encoding, errors, chunk_size):
    return _regroup(_file_chunks(path, encoding, errors, chunk_size), 1, level)


def _regroup(chunks, min_chars, level):
    """Pieces that tokenize as the whole does: cut after whitespace, or for BPE before a word's space."""
    if level == "bpe":
        return bpe.pieces(chunks, min_chars)
    return _whole_pieces(chunks, min_chars, _max_run(level))


def _max_run(level):
    return _MAX_RUN_CHARS if level == "char" else None


# ---------------------------------------------------------------- the tokenizer


class Tokenizer:
    """A fitted vocabulary: encode text to int32 ids and decode ids back to text.

    Build one with ``Tokenizer.fit`` / ``Tokenizer.fit_file`` (or ``Tokenizer.load``);
    the constructor takes a ready vocabulary whose first entry is ``"<unk>"``.
    """

    UNK = UNK
    UNK_ID = 0

    def __init__(
        self,
        vocab,
        level="word",
        *,
        lowercase=False,
        split_punctuation=False,
        min_count=1,
        max_vocab=None,
        counts=None,
        eos=None,
        bpe=None,
    ):
        options = _check_options(level, min_count, max_vocab, lowercase, split_punctuation, eos)
        byte_pairs = self._check_bpe(bpe, level)
        vocab = tuple(vocab)
        if len(vocab) < 2 or vocab[0] != UNK:
            raise ValueError(f"vocab must start with {UNK!r} and hold at least one more token")
        for i, token in enumerate(vocab):
            if not isinstance(token, str):
                raise TypeError(f"vocab entry {i} must be a str, got {type(token).__name__}")
            if i > 0 and level == "char" and len(token) != 1:
                raise ValueError(f"vocab entry {i} ({token!r}) is not a single character, as level='char' needs")
            if i > 0 and level == "word" and (not token or any(c.isspace() for c in token)):
                raise ValueError(
                    f"vocab entry {i} ({token!r}) is empty or holds whitespace, so no word-level text can produce it"
                )
        if byte_pairs is not None and vocab[1:] != byte_pairs.tokens:
            raise ValueError("vocab must be '<unk>' followed by the BPE's tokens in id order")
        index = {token: i for i, token in enumerate(vocab)}
        if options["eos"] is not None and options["eos"] not in index:
            raise ValueError(f"eos token {options['eos']!r} is not in the vocabulary")
        if len(index) != len(vocab):
            duplicates = sorted({t for t in vocab if vocab.count(t) > 1}) if len(vocab) < 10000 else []
            raise ValueError(f"vocab holds duplicate tokens {duplicates}".replace(" []", ""))
        if options["max_vocab"] is not None and len(vocab) > options["max_vocab"]:
            raise ValueError(f"vocab has {len(vocab)} tokens, more than max_vocab={options['max_vocab']}")
        if counts is not None:
            counts = tuple(counts)
            if len(counts) != len(vocab):
                raise ValueError(f"counts has {len(counts)} entries for {len(vocab)} tokens")
            counts = tuple(check_int(f"counts[{i}]", c, 0) for i, c in enumerate(counts))
        self.level = options["level"]
        self.lowercase = options["lowercase"]
        self.split_punctuation = options["split_punctuation"]
        self.min_count = options["min_count"]
        self.max_vocab = options["max_vocab"]
        self.eos = options["eos"]
        self._vocab = vocab
        self._counts = counts
        self._index = index
        self._char_table = None  # code point -> id, built on first char-level encode
        self._char_codepoints = None  # id -> code point, built on first char-level decode
        self._bpe = byte_pairs

    @staticmethod
    def _check_bpe(data, level):
        """The BytePairs of level 'bpe' (data: the Hugging Face JSON, a dict or str), else None."""
        if (level == "bpe") != (data is not None):
            raise ValueError("level='bpe' and bpe (its Hugging Face JSON) go together")
        if data is None:
            return None
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as error:
                raise ValueError(f"bpe is not JSON: {error}") from None
        return bpe.BytePairs(data)

    # ------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls,
        text,
        level="word",
        *,
        min_count=1,
        max_vocab=None,
        lowercase=False,
        split_punctuation=False,
        eos=None,
        vocab_size=None,
    ):
        """Fit a vocabulary on text: a str, or an iterable of str chunks (read as their concatenation).

        min_count: tokens seen fewer times map to <unk> (BPE: pairs seen fewer times are not
        merged). max_vocab: keep at most this many entries, <unk> included (the most frequent
        tokens). eos: a token (such as "<eos>") that ends every line, word level only.
        vocab_size: level="bpe" only, the number of entries to learn, <unk> and the 256 bytes
        included (Hugging Face tokenizers, ``pip install 'fastlm[bpe]'``; ValueError when the
        text has too few pairs to merge for it). The same text and options always give the
        same tokenizer. Raises ValueError for an empty corpus or bad options, TypeError for
        input that is not text.
        """
        options = _check_options(level, min_count, max_vocab, lowercase, split_punctuation, eos)
        vocab_size = _check_vocab_size(vocab_size, level)
        return cls._fit_pieces(_text_pieces(text, level), options, vocab_size)

    @classmethod
    def fit_file(
        cls,
        path,
        level="word",
        *,
        min_count=1,
        max_vocab=None,
        lowercase=False,
        split_punctuation=False,
        eos=None,
        vocab_size=None,
        encoding="utf-8",
        errors="strict",
        chunk_size=_CHUNK_BYTES,
    ):
        """Fit on a text file read in chunks of chunk_size bytes (memory bounded by the chunk and the vocabulary).

        The same vocabulary as ``fit(open(path, encoding=encoding, newline="").read(), ...)``.
        Bytes that are not valid in the encoding raise ValueError naming the file and byte
        offset, unless errors="replace" (or another codecs error handler) is given.
        """
        options = _check_options(level, min_count, max_vocab, lowercase, split_punctuation, eos)
        vocab_size = _check_vocab_size(vocab_size, level)
        chunk_size = check_int("chunk_size", chunk_size, 1)
        path = os.fspath(path)
        return cls._fit_pieces(_file_pieces(path, level, encoding, errors, chunk_size), options, vocab_size)

    @classmethod
    def _fit_bpe(cls, pieces, options, vocab_size):
        bpe.library()  # the install hint before any text is read
        seen = [None]
        data = bpe.train(_with_last_character(pieces, seen), vocab_size, options["min_count"], options["lowercase"])
        if seen[0] is None:
            raise ValueError("empty corpus: the text holds no tokens to fit a vocabulary on")
        learnt = 1 + len(data["model"]["vocab"])
        if learnt < vocab_size:
            raise ValueError(
                f"vocab_size={vocab_size} is larger than this text allows: byte-level BPE on it stops at "
                f"{learnt} tokens (<unk>, 256 bytes and {learnt - bpe.MIN_VOCAB} merges of pairs seen at least "
                f"min_count={options['min_count']} times); pass vocab_size <= {learnt} or more text"
            )
        byte_pairs = bpe.BytePairs(data)
        return cls([UNK, *byte_pairs.tokens], counts=None, bpe=data, **options)

    @classmethod
    def _fit_pieces(cls, pieces, options, vocab_size=None):
        if options["level"] == "bpe":
            return cls._fit_bpe(pieces, options, vocab_size)
        level, min_count, max_vocab = options["level"], options["min_count"], options["max_vocab"]
        keep = (max_vocab - 1) if max_vocab is not None else None
        if level == "word":
            counter, last, line_ends = Counter(), [None], 0
            eos = options["eos"]
            for piece in _with_last_character(pieces, last):
                counter.update(_word_tokens(piece, options["lowercase"], options["split_punctuation"], eos))
                line_ends += piece.count("\n")
            final_eos = _final_eos(eos, last[0])
            counter.update(final_eos)
            if eos is not None:
                _check_eos_not_in_text(eos, counter[eos] - line_ends - len(final_eos))
            total = sum(counter.values())
            items = sorted(
                ((t, c) for t, c in counter.items() if (c >= min_count or t == eos) and t != UNK),
                key=lambda tc: (-tc[1], tc[0]),
            )
            if eos is not None and keep is not None and eos not in dict(items[:keep]):
                # The line end is kept whatever its count: encoding must be able to produce it.
                items = sorted(items[: keep - 1] + [(eos, counter[eos])], key=lambda tc: (-tc[1], tc[0]))
            items = items[:keep]
            tokens = [t for t, _ in items]
            kept = [c for _, c in items]
        else:
            counts = np.zeros(0, dtype=np.int64)
            for piece in pieces:
                if options["lowercase"]:
                    piece = piece.lower()
                piece_counts = np.bincount(_codepoints(piece))
                if len(piece_counts) > len(counts):
                    counts = np.concatenate([counts, np.zeros(len(piece_counts) - len(counts), np.int64)])
                counts[: len(piece_counts)] += piece_counts
            total = int(counts.sum())
            cps = np.flatnonzero(counts >= min_count)
            cps = cps[np.lexsort((cps, -counts[cps]))][:keep]
            tokens = [chr(cp) for cp in cps.tolist()]
            kept = counts[cps].tolist()
        if total == 0:
            raise ValueError("empty corpus: the text holds no tokens to fit a vocabulary on")
        if not tokens:
            raise ValueError(
                f"no token occurs at least min_count={min_count} times in the corpus ({total} tokens); lower min_count"
            )
        return cls([UNK] + tokens, counts=[total - sum(kept)] + kept, **options)

    # ------------------------------------------------------------ vocabulary access

    def __len__(self):
        return len(self._vocab)

    @property
    def vocab_size(self):
        return len(self._vocab)

    @property
    def unk_id(self):
        """Id of "<unk>": always 0."""
        return self.UNK_ID

    @property
    def vocab(self):
        """All tokens in id order (a tuple; vocab[0] == "<unk>")."""
        return self._vocab

    @property
    def counts(self):
        """Training count of each token in id order (counts[0]: training tokens mapped to <unk>), or None."""
        return self._counts

    def __getitem__(self, token):
        """Id of a token in the vocabulary; KeyError if it is not (see token_to_id for a lenient lookup)."""
        return self._index[token]

    def __contains__(self, token):
        return token in self._index

    def token_to_id(self, token):
        """Id of a token; unk_id if it is not in the vocabulary (as encode would map it)."""
        return self._index.get(token, self.UNK_ID)

    def id_to_token(self, token_id):
        """The token with this id; IndexError outside [0, len(self))."""
        token_id = check_int("token_id", token_id, 0)
        if token_id >= len(self._vocab):
            raise IndexError(f"token id {token_id} outside the vocabulary [0, {len(self._vocab)})")
        return self._vocab[token_id]

    def __eq__(self, other):
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self):
        options = f"level={self.level!r}, size={len(self)}, lowercase={self.lowercase}"
        if self.level == "word":
            options += f", split_punctuation={self.split_punctuation}"
        if self.eos is not None:
            options += f", eos={self.eos!r}"
        return f"Tokenizer({options})"

    # ------------------------------------------------------------ encoding

    def tokenize(self, text):
        """The token strings of text, before lookup (word level: lowercased / punctuation split as configured)."""
        text = check_str("text", text)
        if self.level == "word":
            return _word_tokens(text, self.lowercase, self.split_punctuation, self.eos) + _final_eos(
                self.eos, text[-1] if text else None
            )
        if self.level == "bpe":
            return self._bpe.tokens_of(text)
        return list(text.lower() if self.lowercase else text)

    def encode(self, text, return_unknown=False):
        """Token ids of a str as a 1-D int32 array; tokens not in the vocabulary get unk_id (0).

        With return_unknown=True returns (ids, number of positions encoded as <unk>).
        """
        text = check_str("text", text)
        capacity = len(text) if self.level == "char" else len(text) // 4 + 16
        ids = self._encode_pieces(_text_pieces(text, self.level), capacity)
        return (ids, int(np.count_nonzero(ids == self.UNK_ID))) if return_unknown else ids

    def encode_file(self, path, *, encoding="utf-8", errors="strict", chunk_size=_CHUNK_BYTES, return_unknown=False):
        """Token ids of a text file, read in chunks of chunk_size bytes; 1-D int32 array.

        Equal to ``encode(open(path, encoding=encoding, newline="").read())`` but memory
        beyond the returned array stays bounded by a few chunks.
        """
        chunk_size = check_int("chunk_size", chunk_size, 1)
        path = os.fspath(path)
        size = os.stat(path).st_size
        # A code point takes at least one byte, so the byte count bounds char-level output;
        # words average well over 4 bytes with their separator. The array grows if needed.
        capacity = size + 16 if self.level == "char" else size // 4 + 1024
        ids = self._encode_pieces(_file_pieces(path, self.level, encoding, errors, chunk_size), capacity)
        return (ids, int(np.count_nonzero(ids == self.UNK_ID))) if return_unknown else ids

    def encode_file_chunks(self, paths, *, encoding="utf-8", errors="strict", chunk_size=_CHUNK_BYTES):
        """The ids of one text file, or of several joined by newlines, a chunk at a time: an
        iterator of 1-D int32 arrays whose concatenation is encode_file(path) (for several,
        encode of the texts joined by "\n"), for corpora whose ids do not fit in memory."""
        chunk_size = check_int("chunk_size", chunk_size, 1)
        paths = [paths] if isinstance(paths, (str, bytes, os.PathLike)) else list(paths)

        def chunks():
            for k, path in enumerate(paths):
                if k:
                    yield "\n"
                yield from _file_chunks(os.fspath(path), encoding, errors, chunk_size)

        last = [None]  # cut across files too: BPE may merge a file's last newline with the one joining it
        for piece in _with_last_character(_regroup(chunks(), 1, self.level), last):
            yield self._encode_pieces([piece], len(piece) + 16, final_eos=False)  # a token has a character
        if _final_eos(self.eos, last[0]):
            yield np.array([self._index[self.eos]], dtype=np.int32)

    def _encode_pieces(self, pieces, capacity, final_eos=True):
        # np.empty leaves the pages untouched, so an over-estimate costs no resident memory;
        # ndarray.resize reallocates in place (mremap for large arrays) when growing and
        # shrinking, so the result is never copied.
        out = np.empty(max(capacity, 1), dtype=np.int32)
        n = 0
        last = [None]
        for piece in _with_last_character(pieces, last):
            if self.level == "char":
                values = _codepoints(piece.lower() if self.lowercase else piece)
            elif self.level == "bpe":
                values = self._bpe.encode(piece)
            else:
                values = _word_tokens(piece, self.lowercase, self.split_punctuation, self.eos)
            k = len(values)
            if n + k > len(out):
                out.resize(max(n + k, len(out) + len(out) // 2 + 1024), refcheck=False)
            if self.level == "char":
                self._char_ids(values, out=out[n : n + k])
            elif self.level == "bpe":
                out[n : n + k] = values
            else:
                out[n : n + k] = np.fromiter(map(self._index.get, values, repeat(self.UNK_ID)), dtype=np.int32, count=k)
            n += k
        if final_eos and _final_eos(self.eos, last[0]):
            out.resize(n + 1, refcheck=False)
            out[n] = self._index[self.eos]
            n += 1
        out.resize(n, refcheck=False)
        return out

    def _char_ids(self, codepoints, out=None):
        if self._char_table is None:
            cps = np.array([ord(t) for t in self._vocab[1:]], dtype=np.int64)
            table = np.full(int(cps.max()) + 2, self.UNK_ID, dtype=np.int32)  # last entry: beyond the vocabulary
            table[cps] = np.arange(1, len(self._vocab), dtype=np.int32)
            self._char_table = table
        return self._char_table.take(codepoints, mode="clip", out=out)

    def count_unknown(self, text):
        """How many tokens of text encode to <unk>."""
        return self.encode(text, return_unknown=True)[1]

    def unknown_tokens(self, text):
        """The distinct tokens of text that encode to <unk>, in order of first appearance."""
        tokens = self.tokenize(text)
        if self.level == "char":
            return list(dict.fromkeys(t for t in tokens if t not in self._index))
        return list(dict.fromkeys(t for t in tokens if self._index.get(t, self.UNK_ID) == self.UNK_ID))

    # ------------------------------------------------------------ decoding

    def decode(self, ids):
        """Text of token ids: word level joins tokens with single spaces (the eos token ends a line
        with "\n"); id 0 decodes as "<unk>"."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if ids.size == 0:
            return ""
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integer token ids, got dtype {ids.dtype}")
        low, high = ids.min(), ids.max()
        if low < 0 or high >= len(self._vocab):
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} outside the vocabulary [0, {len(self._vocab)})")
        if self.level == "bpe":  # a character cut off by the ids' ends shows as U+FFFD
            return self._bpe.to_bytes(ids.tolist()).decode("utf-8", "replace")
        if self.level == "word":
            tokens = list(map(self._vocab.__getitem__, ids.tolist()))
            if self.eos is None:
                return " ".join(tokens)
            ends = np.flatnonzero(ids == self._index[self.eos]).tolist()
            starts = [0] + [end + 1 for end in ends]
            return "\n".join(" ".join(tokens[a:b]) for a, b in zip(starts, ends + [len(tokens)]))
        if low == self.UNK_ID:  # "<unk>" is not one code point: join strings
            return "".join(map(self._vocab.__getitem__, ids.tolist()))
        if self._char_codepoints is None:
            self._char_codepoints = np.array([0] + [ord(t) for t in self._vocab[1:]], dtype="<u4")
        return self._char_codepoints[ids].tobytes().decode("utf-32-le", "surrogatepass")

    def stream_decoder(self):
        """For text handed out a few tokens at a time (fastlm.streaming): an object whose
        decode(ids) gives the text those ids add and flush() what is still held at the end.
        The pieces join to decode(all ids); BPE holds back a character's first bytes until
        its last arrive, so that no piece ends in half a character."""
        return bpe.StreamDecoder(self._bpe) if self._bpe is not None else _ContextDecoder(self)

    # ------------------------------------------------------------ files

    def to_dict(self):
        """Everything save() writes, as JSON-ready Python values."""
        data = {
            "type": "fastlm.Tokenizer",
            "format": 3 if self._bpe is not None else 1 if self.eos is None else 2,
            "level": self.level,
            "lowercase": self.lowercase,
            "split_punctuation": self.split_punctuation,
            "min_count": self.min_count,
            "max_vocab": self.max_vocab,
            "unk_token": UNK,
            "unk_id": self.UNK_ID,
            "vocab": list(self._vocab),
            "counts": list(self._counts) if self._counts is not None else None,
        }
        if self.eos is not None:
            data["eos"] = self.eos
        if self._bpe is not None:
            data["bpe"] = self._bpe.data
        return data

    @classmethod
    def from_dict(cls, data):
        """Inverse of to_dict; ValueError naming what is wrong for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("type") != "fastlm.Tokenizer":
            raise ValueError(f"not a fastlm tokenizer (type {data.get('type')!r}, expected 'fastlm.Tokenizer')")
        version = data.get("format")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"invalid format version {version!r}")
        if version > FORMAT:
            raise ValueError(
                f"tokenizer format {version} is newer than this fastlm reads (format {FORMAT}); upgrade fastlm"
            )
        missing = [
            key
            for key in ("level", "lowercase", "split_punctuation", "min_count", "max_vocab", "vocab")
            if key not in data
        ]
        if missing:
            raise ValueError(f"missing {', '.join(map(repr, missing))}")
        if version < 2 and data.get("eos") is not None:
            raise ValueError("format 1 has no eos token; the file says format 1 but holds one")
        if version < 3 and (data.get("level") == "bpe" or data.get("bpe") is not None):
            raise ValueError(f"format {version} has no level 'bpe'; the file says format {version} but holds one")
        if data.get("unk_token", UNK) != UNK or data.get("unk_id", 0) != 0:
            raise ValueError(f"unk token must be {UNK!r} with id 0")
        for key in ("vocab", "counts"):
            if key in data and data[key] is not None and not isinstance(data[key], list):
                raise ValueError(f"{key!r} must be a list, got {type(data[key]).__name__}")
        try:
            return cls(
                data["vocab"],
                data["level"],
                lowercase=data["lowercase"],
                split_punctuation=data["split_punctuation"],
                min_count=data["min_count"],
                max_vocab=data["max_vocab"],
                counts=data.get("counts"),
                eos=data.get("eos"),
                bpe=data.get("bpe"),
            )
        except TypeError as e:
            raise ValueError(str(e)) from None

    def to_json_bytes(self):
        """What save() writes: the tokenizer as UTF-8 JSON."""
        data = self.to_dict()
        try:
            return (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (text read with errors="surrogateescape"): written as their own
            # three-byte sequences. JSON's \u escapes would not do: a high and a low surrogate
            # escaped side by side read back as the one character they encode as a pair.
            return (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode("utf-8", "surrogatepass")

    def write_json(self, path):
        """Write the JSON to path as it is (save() makes it atomic; fastlm.model_dir stages it with a model)."""
        with open(path, "wb") as f:
            f.write(self.to_json_bytes())

    def save(self, path):
        """Write the tokenizer as JSON, atomically (a synced temporary file in the same directory, then a rename)."""
        atomic_write(path, self.write_json)

    @classmethod
    def load(cls, path, *, max_bytes=MAX_FILE_BYTES):
        """Read a tokenizer written by save().

        FileNotFoundError if path does not exist; ValueError naming the file and the problem
        for anything that is not a valid tokenizer file of a format this version reads,
        among them a path that is not a regular file (a directory, a FIFO, a device) and a
        file of more than max_bytes (fastlm.tokenizer.MAX_FILE_BYTES, 256 MiB, by default):
        both refused before a byte is read.
        """
        path = os.fspath(path)
        max_bytes = check_int("max_bytes", max_bytes, 1)
        try:
            f, size = open_regular_file(path)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "tokenizer file not found", path) from None
        with f:
            raw, size = read_bounded(f, size, max_bytes)
        if raw is None:
            raise ValueError(
                f"{path}: {size:,} bytes, more than a tokenizer file may hold ({max_bytes:,}; "
                "pass max_bytes to read a larger one)"
            )
        try:
            data = json.loads(raw.decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not a tokenizer file: not UTF-8 text ({e})") from None
        except ValueError as e:  # not JSON, or an integer past Python's 4300 digits
            raise ValueError(f"{path}: not a tokenizer file: corrupted JSON ({e})") from None
        except RecursionError:
            raise ValueError(f"{path}: not a tokenizer file: JSON nested too deeply") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


class _ContextDecoder:
    """Word and char levels: each few ids decoded with the id before them as context, so that
    word level's joining space lands between pieces, not at the start of the text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.previous = None

    def decode(self, ids):
        ids = np.asarray(ids, dtype=np.int32)
        if ids.size == 0:
            return ""
        context = np.array([] if self.previous is None else [self.previous], dtype=np.int32)
        self.previous = int(ids[-1])
        return self.tokenizer.decode(np.concatenate([context, ids]))[len(self.tokenizer.decode(context)) :]

    def flush(self):
        return ""
