"""Batches for training and evaluation, drawn lazily from one id array.

Windows are never materialised for the whole corpus: an epoch is a (seeded) order of
window start offsets, and each batch is gathered by the C++ kernel from those offsets.
The id array may be a memory-mapped token file: only the gathered windows are read, and
the map's pages are handed back as batches go (token_file.ResidentPages).

``rows`` splits every batch between the ranks of data-parallel training: a function
from the global batch's row count to this rank's [lo, hi); each batch yields only
those rows, and ``batch_rows`` gives the global count.
"""

from __future__ import annotations

import numpy as np

from fastlm.token_file import ResidentPages


def epoch_rng(seed, epoch, *stream):
    """The generator for one epoch (and optional sub-stream): a pure function of its
    arguments, so a resumed run draws exactly what an uninterrupted one would."""
    return np.random.default_rng([seed, epoch, *stream])


def all_rows(total):
    return 0, total


class RowStreams:
    """Random numbers for a batch's rows, one stream per row of the global batch.

    ``random(shape)`` with shape[0] == rows fills row r from the stream of global row
    first_row + r, so the dropout mask of a row is the same whichever rank computes it
    and however the global batch is split: N ranks draw what one process draws.
    """

    def __init__(self, seed, epoch, batch, first_row, rows):
        self.key, self.first_row, self.rows = (seed, epoch, batch), first_row, rows
        self._streams = None

    def random(self, shape, dtype=np.float64):
        shape = tuple(shape)
        if len(shape) < 2 or shape[0] != self.rows:
            raise ValueError(f"per-row random numbers need a shape of (rows={self.rows}, ...), got {shape}")
        if self._streams is None:  # made on first use: training without dropout never pays for them
            self._streams = [epoch_rng(*self.key, self.first_row + r) for r in range(self.rows)]
        out = np.empty(shape, dtype)
        for r, stream in enumerate(self._streams):
            stream.random(dtype=dtype, out=out[r])
        return out


class WindowBatches:
    """Windows of seq_len (+1 target) starting every stride tokens, in shuffled batches."""

    def __init__(self, ops, ids, seq_len, batch_size, stride, shuffle, seed, rows=all_rows):
        self.ops, self.ids, self.seq_len = ops, ids, seq_len
        self.batch_size, self.shuffle, self.seed, self.rows = batch_size, shuffle, seed, rows
        self.stride, self.count = stride, (len(ids) - seq_len - 1) // stride + 1
        self.pages = ResidentPages(ids)

    def __len__(self):
        return -(-self.count // self.batch_size)

    def batch_rows(self, b):
        return min(self.batch_size, self.count - b * self.batch_size)

    def tokens_before(self, b):
        """Target tokens in the epoch's batches before batch b < len(self), all of them full."""
        return b * self.batch_size * self.seq_len

    def window_order(self, epoch):
        """The epoch's order of window numbers (start = number * stride). Held as int32 where
        it fits, shuffled in place: a 1G-token corpus has 30M windows of T = 35, so an int64
        order and its permuted copy would take 490 MB. The same order as permuting the int64
        starts, which earlier versions did, so their checkpoints resume unchanged."""
        order = np.arange(self.count, dtype=np.int32 if self.count < 2**31 else np.int64)
        if self.shuffle:
            epoch_rng(self.seed, epoch).shuffle(order)
        return order

    def epoch(self, epoch, first_batch=0):
        """Yields (x, y) batches of the given epoch, starting at batch index first_batch."""
        order = self.window_order(epoch)
        for b in range(first_batch, len(self)):
            windows = order[b * self.batch_size : (b + 1) * self.batch_size]
            lo, hi = self.rows(len(windows))
            if lo == hi:
                yield np.empty((0, self.seq_len), np.int32), np.empty((0, self.seq_len), np.int32)
                continue
            x, y = self.ops.gather_windows(self.ids, windows[lo:hi].astype(np.int64) * self.stride, self.seq_len)
            self.pages.batch_read()
            yield x, y


class ArrayBatches:
    """Pre-made (x, y) windows, rows in shuffled batches."""

    def __init__(self, x, y, batch_size, shuffle, seed, rows=all_rows):
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.rows = rows

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def batch_rows(self, b):
        return min(self.batch_size, len(self.x) - b * self.batch_size)

    def tokens_before(self, b):
        """Target tokens in the epoch's batches before batch b < len(self), all of them full."""
        return b * self.batch_size * self.x.shape[1]

    def epoch(self, epoch, first_batch=0):
        rows = epoch_rng(self.seed, epoch).permutation(len(self.x)) if self.shuffle else np.arange(len(self.x))
        for b in range(first_batch, len(self)):
            pick = rows[b * self.batch_size : (b + 1) * self.batch_size]
            lo, hi = self.rows(len(pick))
            yield self.x[pick[lo:hi]], self.y[pick[lo:hi]]


class ContiguousBatches:
    """Truncated-BPTT batches: the corpus cut into batch_size parallel streams, read
    seq_len tokens at a time, so batch k+1 continues batch k row by row and the hidden
    state can be carried across (as in PyTorch's word-language-model example)."""

    def __init__(self, ids, seq_len, batch_size, rows=all_rows):
        length = (len(ids) - 1) // batch_size
        lo, hi = rows(batch_size)
        self.streams_x = ids[: length * batch_size].reshape(batch_size, length)[lo:hi]
        self.streams_y = ids[1 : length * batch_size + 1].reshape(batch_size, length)[lo:hi]
        self.seq_len, self.batch_size = seq_len, batch_size
        self.pages = ResidentPages(ids)

    def __len__(self):
        return -(-self.streams_x.shape[1] // self.seq_len)

    def batch_rows(self, b):
        return self.batch_size

    def tokens_before(self, b):
        """Target tokens in the epoch's batches before batch b < len(self), all of them full."""
        return b * self.batch_size * self.seq_len

    def epoch(self, epoch, first_batch=0):
        for b in range(first_batch, len(self)):
            cols = slice(b * self.seq_len, (b + 1) * self.seq_len)
            x = np.ascontiguousarray(self.streams_x[:, cols], dtype=np.int32)
            y = np.ascontiguousarray(self.streams_y[:, cols], dtype=np.int32)
            self.pages.batch_read()
            yield x, y
