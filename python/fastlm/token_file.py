"""Token files: a corpus encoded once to token ids on disk and read through a memory map,
so corpora larger than memory train without being loaded.

Format (all little-endian): a 64-byte header, then the ids.

    bytes  0-7   magic b"FASTLMID"
           8-11  uint32 format version (1)
          12-15  uint32 bytes per id: 2 (uint16) or 4 (int32), the narrowest that holds the vocabulary
          16-23  uint64 vocabulary size (the tokenizer's)
          24-31  uint64 number of ids
          32-63  zero
    bytes 64-    the ids

Files are written to a temporary name, the header last, and renamed, so a crash never
leaves a half-written file under the final name; a file that was cut short afterwards
(a copy interrupted) is detected from its size.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np

from fastlm.atomic import atomic_write
from fastlm.checks import check_int

MAGIC = b"FASTLMID"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQQ")
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<i4")}
_CHECK_CHUNK = 1 << 22  # ids range-checked per step: bounded memory for any file size


def id_dtype(vocab_size):
    """The narrowest id type that holds every id of a vocabulary: uint16 up to 65,536 tokens, else int32."""
    vocab_size = check_int("vocab_size", vocab_size, 1, 2**31)
    return _DTYPES[2] if vocab_size <= 2**16 else _DTYPES[4]


def _header(vocab_size, count, dtype):
    return _HEADER.pack(MAGIC, VERSION, dtype.itemsize, vocab_size, count).ljust(HEADER_BYTES, b"\0")


def _is_flat_list(ids):
    """Whether ids is a list (or tuple) of ids, [1, 2, 3], rather than a list of arrays."""
    return isinstance(ids, (list, tuple)) and len(ids) > 0 and np.ndim(ids[0]) == 0


def save_ids(path, ids, vocab_size):
    """Write token ids to a token file atomically; returns the number of ids written.

    ids: a 1-D integer array (or a list of ints), or an iterable of them (written one after
    the other, so a corpus never needs to be in memory at once). Every id must lie in
    [0, vocab_size).
    """
    dtype = id_dtype(vocab_size)
    chunks = [ids] if isinstance(ids, np.ndarray) or _is_flat_list(ids) else ids
    count = 0

    def write(tmp):
        nonlocal count
        with open(tmp, "wb") as f:
            f.write(bytes(HEADER_BYTES))  # the real header comes last: until then the magic is missing
            for chunk in chunks:
                chunk = np.asarray(chunk)
                if chunk.dtype.kind not in "iu" or chunk.ndim != 1:
                    raise TypeError(f"ids must be 1-D integer arrays, got dtype {chunk.dtype}, shape {chunk.shape}")
                if chunk.size:
                    _check_range("ids", chunk, vocab_size, count)
                    f.write(chunk.astype(dtype, copy=False).tobytes())
                count += chunk.size
            f.seek(0)
            f.write(_header(int(vocab_size), count, dtype))

    atomic_write(path, write)
    return count


def read_header(path):
    """A token file's header as a dict: vocab_size, dtype, tokens (ids held) and path.

    Raises FileNotFoundError for a missing file and ValueError, naming the file and the
    problem, for one that is not a token file, is of an unknown version, or is truncated.
    """
    path = Path(path)
    size = path.stat().st_size
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a token file")
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if head[: len(MAGIC)] != MAGIC:
        raise ValueError(
            f"{path} is not a fastlm token file (it starts with {head[:8]!r}, not {MAGIC!r}); "
            "write one with `fastlm encode` or fastlm.save_ids"
        )
    if len(head) < HEADER_BYTES:
        raise ValueError(f"{path} is truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    _, version, itemsize, vocab_size, count = _HEADER.unpack(head[: _HEADER.size])
    if version != VERSION:
        raise ValueError(f"{path} is a token file of format version {version}; this fastlm reads version {VERSION}")
    if itemsize not in _DTYPES or not 0 < vocab_size <= 2**31 or (itemsize == 2 and vocab_size > 2**16):
        raise ValueError(f"{path} has a corrupt header: {itemsize} bytes per id for a vocabulary of {vocab_size}")
    expected = HEADER_BYTES + count * itemsize
    if size != expected:
        problem = "is truncated" if size < expected else "has trailing bytes"
        raise ValueError(
            f"{path} {problem}: its header announces {count:,} ids of {itemsize} bytes "
            f"({expected:,} bytes with the header), the file holds {size:,} bytes"
        )
    return {"path": str(path), "vocab_size": int(vocab_size), "dtype": _DTYPES[itemsize], "tokens": int(count)}


def open_ids(path, vocab_size=None):
    """The ids of a token file as a read-only 1-D np.memmap (uint16 or int32); nothing is read yet.

    With vocab_size (the model's), every id is checked to lie below it, a chunk at a time:
    the error names the offset of the first one that does not.
    """
    vocab_size = check_int("vocab_size", vocab_size, 1, allow_none=True)
    header = read_header(path)
    if header["tokens"] == 0:
        raise ValueError(f"{path} holds no ids")
    ids = np.memmap(path, dtype=header["dtype"], mode="r", offset=HEADER_BYTES, shape=(header["tokens"],))
    if vocab_size is not None:
        check_corpus(
            f"{path}", ids, vocab_size, note=f" (it was encoded with a vocabulary of {header['vocab_size']:,})"
        )
    return ids


def check_corpus(name, ids, vocab_size, note=""):
    """A 1-D id array (in memory or memory-mapped) with every id in [0, vocab_size).

    Checked a chunk at a time, so a memory map is never read into memory whole. Native
    uint16 and int32 arrays come back as they are (no copy: a token file stays on disk);
    other integer types are converted to int32.
    """
    ids = ids if isinstance(ids, np.ndarray) else np.asarray(ids)
    if ids.size == 0:  # first: [] is float64 to NumPy, and its dtype is not the problem
        raise ValueError(f"{name} is empty (shape {ids.shape})")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {ids.shape}")
    for start in range(0, ids.size, _CHECK_CHUNK):
        _check_range(name, ids[start : start + _CHECK_CHUNK], vocab_size, start, note)
        release_pages(ids)
    if ids.dtype in (np.dtype("=u2"), np.dtype("=i4")) and ids.flags.c_contiguous:
        return ids
    return np.ascontiguousarray(ids, dtype=np.int32)


def _check_range(name, chunk, vocab_size, offset, note=""):
    low, high = chunk.min(), chunk.max()
    if low < 0 or high >= vocab_size:
        first = int(np.flatnonzero((chunk < 0) | (chunk >= vocab_size))[0])
        raise ValueError(
            f"{name} holds id {chunk[first]} at offset {offset + first:,}, outside the vocabulary "
            f"[0, {vocab_size:,}){note}"
        )


def _mapping(array):
    """The mmap under a np.memmap (or a view of one) whose pages may be dropped, else None."""
    if getattr(array, "mode", None) == "c":  # copy-on-write: dropping pages would lose the writes
        return None
    while array is not None and not isinstance(array, mmap.mmap):
        array = getattr(array, "base", None)
    return array


def release_pages(array):
    """Hand a memory-mapped array's resident pages back to the kernel (they stay in the page
    cache and are read back on the next touch); does nothing for an array in memory."""
    mapping = _mapping(array)
    if mapping is not None and hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_DONTNEED)


class ResidentPages:
    """Hands a memory map's pages back to the kernel after every batch read from it.

    A file's page cache may be held in large folios that a fault maps whole (2 MB), so a
    batch of a few dozen scattered windows can add tens of MB to the resident set; the
    madvise that drops them costs microseconds, so it runs after every batch."""

    def __init__(self, ids):
        self.ids = ids if _mapping(ids) is not None else None

    def batch_read(self):
        if self.ids is not None:
            release_pages(self.ids)


def encode_files(paths, tokenizer, out, *, encoding="utf-8", errors="strict"):
    """Encode text files with a tokenizer into one token file, streaming; returns its header.

    The files are read as if joined by a newline (as `fastlm train CORPUS...` joins them),
    a chunk at a time: memory stays bounded by the chunk size whatever the corpus size.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("no corpus files to encode")
    save_ids(out, tokenizer.encode_file_chunks(paths, encoding=encoding, errors=errors), len(tokenizer))
    return read_header(out)
