"""Byte-level BPE subword tokens for Tokenizer(level="bpe"), backed by Hugging Face
``tokenizers`` (the optional extra: ``pip install 'fastlm[bpe]'``).

GPT-2's scheme: the text's UTF-8 bytes, each shown as one printable character (``Ġ`` is
the space byte, ``Ċ`` the newline), split into words by GPT-2's regular expression (a space
stays with the word after it) and merged by the learnt pairs. All 256 bytes are in the
vocabulary, so every text encodes without an unknown token and decodes back to itself,
byte for byte. fastlm's ids are the Hugging Face ids plus one: id 0 is fastlm's ``<unk>``,
which encoding never produces.

Decoding maps ids to their bytes here (no call into the library); the bytes of a run of ids
may end inside a character, which ``decode`` shows as U+FFFD and ``stream_decoder`` holds
back until the character is complete.
"""

from __future__ import annotations

import codecs
import json

import numpy as np

INSTALL = "pip install 'fastlm[bpe]'"
UNK_BYTES = b"<unk>"  # what id 0 decodes to, as at the other levels
MIN_VOCAB = 1 + 256  # <unk> and the 256 bytes: fewer could not encode every text


def library():
    """Hugging Face tokenizers, imported when first needed: ImportError saying what to install without it."""
    try:
        import tokenizers
    except ImportError:
        raise ImportError(f"level='bpe' needs Hugging Face tokenizers, an optional dependency: {INSTALL}") from None
    return tokenizers


def _byte_characters():
    """GPT-2's byte -> printable character map (bytes_to_unicode), as a list indexed by byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_CHARS = _byte_characters()
CHAR_BYTES = {c: b for b, c in enumerate(BYTE_CHARS)}


def train(pieces, vocab_size, min_count, lowercase):
    """The Hugging Face JSON (a dict) of a byte-level BPE learnt on pieces (str), with
    vocab_size - 1 tokens (fastlm's <unk> makes vocab_size), or fewer when the text has too
    few pairs to merge (the caller says so)."""
    hf = library()
    tokenizer = hf.Tokenizer(hf.models.BPE())
    if lowercase:
        tokenizer.normalizer = hf.normalizers.Lowercase()
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_count,
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(pieces, trainer=trainer)
    return json.loads(tokenizer.to_str())


def safe_cut(text):
    """Index of the last space with a non-space on both sides (0 if none): GPT-2's regular
    expression never matches across it and starts a word there whatever came before, so
    text[:i] and text[i:] split into the same words as text does."""
    end = len(text) - 1
    while True:
        i = text.rfind(" ", 1, end)
        if i < 1:
            return 0
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i
        end = i


def pieces(chunks, min_chars):
    """Regroup str chunks into pieces of >= min_chars characters cut only at safe_cut points,
    so that encoding piece by piece gives the ids of the whole. Concatenated, the pieces
    equal the chunks concatenated."""
    parts, size = [], 0
    for chunk in chunks:
        if not chunk:
            continue
        parts.append(chunk)
        size += len(chunk)
        if size < min_chars:
            continue
        text = "".join(parts)
        cut = safe_cut(text)
        if cut:
            yield text[:cut]
            text = text[cut:]
        parts, size = [text], len(text)
    if size:
        yield "".join(parts)


class BytePairs:
    """A trained byte-level BPE: encode text to fastlm ids, ids to bytes."""

    def __init__(self, data):
        """data: the Hugging Face JSON as a dict; ValueError when it is not a byte-level BPE."""
        if not isinstance(data, dict):
            raise ValueError(f"'bpe' must be the Hugging Face tokenizer's JSON object, got {type(data).__name__}")
        model, pre = data.get("model"), data.get("pre_tokenizer")
        if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise ValueError("'bpe' holds no BPE model (model.type 'BPE' with a vocab)")
        if not isinstance(pre, dict) or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") is not False:
            raise ValueError("'bpe' is not byte-level without a prefix space, so it would not round-trip text")
        if data.get("added_tokens"):
            raise ValueError("'bpe' has added tokens; fastlm's byte-level BPE has none (<unk> is fastlm's own)")
        vocab = model["vocab"]
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError("'bpe' vocab ids are not 0, 1, ..., n - 1")
        tokens = [""] * len(vocab)
        for token, i in vocab.items():
            tokens[i] = token
        missing = sorted(set(BYTE_CHARS) - set(vocab))
        if missing:
            raise ValueError(f"'bpe' lacks {len(missing)} of the 256 byte tokens, so some text could not be encoded")
        try:
            self.token_bytes = [UNK_BYTES] + [bytes(CHAR_BYTES[c] for c in t) for t in tokens]
        except KeyError as error:
            raise ValueError(f"'bpe' token holds {error.args[0]!r}, which stands for no byte") from None
        self.tokens = tuple(tokens)
        self.data = data
        try:
            self.hf = library().Tokenizer.from_str(json.dumps(data))
        except ImportError:
            raise
        except Exception as error:  # the library's own exception type
            raise ValueError(f"'bpe' is not a valid Hugging Face tokenizer: {error}") from None

    def encode(self, text):
        """fastlm ids (int32) of text."""
        return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.int32) + 1

    def tokens_of(self, text):
        return self.hf.encode(text, add_special_tokens=False).tokens

    def to_bytes(self, ids):
        return b"".join(map(self.token_bytes.__getitem__, ids))


class StreamDecoder:
    """Text of ids given a few at a time: bytes ending inside a character wait for the rest."""

    def __init__(self, byte_pairs):
        self.byte_pairs = byte_pairs
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def decode(self, ids):
        return self.decoder.decode(self.byte_pairs.to_bytes(np.asarray(ids).tolist()))

    def flush(self):
        """Bytes still held (a character cut off at the end) as U+FFFD, as decode shows them."""
        return self.decoder.decode(b"", final=True)
