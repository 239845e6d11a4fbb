"""Batches for training and evaluation, drawn lazily from one id array.

Windows are never materialised for the whole corpus: an epoch is a (seeded) order of
window start offsets, and each batch is gathered by the C++ kernel from those offsets.
"""
from __future__ import annotations

import numpy as np


def epoch_rng(seed, epoch, *stream):
    """The generator for one epoch (and optional sub-stream): a pure function of its
    arguments, so a resumed run draws exactly what an uninterrupted one would."""
    return np.random.default_rng([seed, epoch, *stream])


class WindowBatches:
    """Windows of seq_len (+1 target) starting every stride tokens, in shuffled batches."""

    def __init__(self, ops, ids, seq_len, batch_size, stride, shuffle, seed):
        self.ops, self.ids, self.seq_len = ops, ids, seq_len
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        count = (len(ids) - seq_len - 1) // stride + 1
        self.starts = np.arange(count, dtype=np.int64) * stride

    def __len__(self):
        return -(-len(self.starts) // self.batch_size)

    def epoch(self, epoch, first_batch=0):
        """Yields (x, y) batches of the given epoch, starting at batch index first_batch."""
        order = epoch_rng(self.seed, epoch).permutation(self.starts) if self.shuffle else self.starts
        for b in range(first_batch, len(self)):
            starts = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.ops.gather_windows(self.ids, starts, self.seq_len)


class ArrayBatches:
    """Pre-made (x, y) windows, rows in shuffled batches."""

    def __init__(self, x, y, batch_size, shuffle, seed):
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def epoch(self, epoch, first_batch=0):
        rows = epoch_rng(self.seed, epoch).permutation(len(self.x)) if self.shuffle else np.arange(len(self.x))
        for b in range(first_batch, len(self)):
            pick = rows[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.x[pick], self.y[pick]


class ContiguousBatches:
    """Truncated-BPTT batches: the corpus cut into batch_size parallel streams, read
    seq_len tokens at a time, so batch k+1 continues batch k row by row and the hidden
    state can be carried across (as in PyTorch's word-language-model example)."""

    def __init__(self, ids, seq_len, batch_size):
        length = (len(ids) - 1) // batch_size
        self.streams_x = ids[:length * batch_size].reshape(batch_size, length)
        self.streams_y = ids[1:length * batch_size + 1].reshape(batch_size, length)
        self.seq_len = seq_len

    def __len__(self):
        return -(-self.streams_x.shape[1] // self.seq_len)

    def epoch(self, epoch, first_batch=0):
        for b in range(first_batch, len(self)):
            cols = slice(b * self.seq_len, (b + 1) * self.seq_len)
            yield np.ascontiguousarray(self.streams_x[:, cols]), np.ascontiguousarray(self.streams_y[:, cols])
