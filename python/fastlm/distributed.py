"""Data-parallel training over MPI (mpi4py), and its single-process stand-in.

Every rank holds the whole model. At the start the ranks check that they were given the
same settings and take rank 0's weights; then, per step, each rank runs forward and
backward on its own rows of the global batch, and one Allreduce of one flat buffer (all
gradients, the loss and a stop flag) gives every rank the gradient of the global batch,
so every rank applies the same optimizer step and the weights stay equal without being
sent again. N ranks with b rows each therefore train what one process trains with N*b.

Any exception on one rank would leave the others waiting in the next collective call
for ever: ``aborts_every_rank`` (on fit) prints it and calls MPI_Abort, ending every rank.
"""

from __future__ import annotations

import functools
import sys
import traceback

import numpy as np

INSTALL_HINT = "pip install 'fastlm[mpi]' (mpi4py with the mpich wheel) or install mpi4py against your cluster's MPI"


class Local:
    """One process: the same interface as MPIGroup, doing nothing."""

    rank, size = 0, 1

    def rows(self, total):
        return 0, total

    def check_same(self, settings):
        pass

    def broadcast_parameters(self, params):
        pass

    def reduce_step(self, grads, loss, rows, total_rows, stop):
        return loss, grads, stop

    def any(self, flag):
        return bool(flag)


class MPIGroup(Local):
    """The ranks of an MPI communicator training one model together."""

    def __init__(self, comm):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._flat, self._layout = None, None

    def rows(self, total):
        """This rank's rows [lo, hi) of a global batch of total rows: even shares in rank order,
        so with total = size * b rank r takes rows r*b .. (r+1)*b - 1."""
        return self.rank * total // self.size, (self.rank + 1) * total // self.size

    def check_same(self, settings):
        """Raise on every rank when any rank was started with other settings than rank 0."""
        everyone = self.comm.allgather(settings)
        differences = []
        for rank, theirs in enumerate(everyone[1:], start=1):
            for key in sorted(set(everyone[0]) | set(theirs)):
                if everyone[0].get(key) != theirs.get(key):
                    differences.append(f"rank {rank} has {key}={theirs.get(key)!r}, rank 0 {everyone[0].get(key)!r}")
        if differences:
            raise on_every_rank(
                ValueError("the ranks were started with different settings: " + "; ".join(differences[:8]))
            )

    def broadcast_parameters(self, params):
        """Every rank takes rank 0's weights (in place); sizes the flat gradient buffer."""
        self._layout = [(name, p.shape, p.size) for name, p in params.items()]
        self._flat = np.empty(sum(p.size for p in params.values()) + 2, dtype=np.float32)
        weights = self._flat[:-2]
        offset = 0
        for p in params.values():
            weights[offset : offset + p.size] = p.ravel()
            offset += p.size
        self.comm.Bcast(weights, root=0)
        offset = 0
        for p in params.values():
            p[...] = weights[offset : offset + p.size].reshape(p.shape)
            offset += p.size

    def reduce_step(self, grads, loss, rows, total_rows, stop):
        """The global batch's mean loss and gradients from every rank's share, in one Allreduce.

        grads: this rank's gradients (mean over its rows; None when it has no rows), loss its
        mean loss. Each is weighted by rows / total_rows and summed over the ranks, which is
        the mean over the global batch. stop: this rank wants to stop (Ctrl-C); true on every
        rank when on any. Returns (loss, grads, stop); grads are views of one flat buffer.
        """
        flat, weight, offset = self._flat, np.float32(rows / total_rows), 0
        for name, shape, size in self._layout:
            if grads is None:
                flat[offset : offset + size] = 0
            else:
                grad = grads[name]
                if not isinstance(grad, np.ndarray) or grad.shape != shape:
                    raise TypeError(
                        f"distributed training sums dense gradients; {name}'s is "
                        f"{type(grad).__name__} {getattr(grad, 'shape', '')}, not shape {shape}"
                    )
                np.multiply(grad.ravel(), weight, out=flat[offset : offset + size])
            offset += size
        flat[-2] = loss * weight if rows else 0.0
        flat[-1] = 1.0 if stop else 0.0
        self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
        reduced, offset = {}, 0
        for name, shape, size in self._layout:
            reduced[name] = flat[offset : offset + size].reshape(shape)
            offset += size
        return float(flat[-2]), reduced, bool(flat[-1] > 0)

    def any(self, flag):
        """True on every rank when flag is true on any."""
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))


# Errors that describe the input: one line says it all (the others get a traceback).
USER_ERRORS = (OSError, ValueError, TypeError, KeyError, FloatingPointError, MemoryError)


def on_every_rank(error):
    """Mark an error that every rank raises at the same point: it is raised as usual, not aborted."""
    error.fastlm_on_every_rank = True
    return error


def abort(comm, error):
    """Print error as this rank's, then end every rank of comm (mpiexec returns non-zero)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    if not isinstance(error, USER_ERRORS):
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    print(
        f"fastlm: rank {rank} of {size} stopped with {type(error).__name__}: {error}; aborting all ranks (MPI_Abort)",
        file=sys.stderr,
        flush=True,
    )
    comm.Abort(1)


def fingerprint(array):
    """A cheap summary of a data array for comparing ranks' inputs: its shape and the
    digest of its first and last 4096 values (not a full hash: a memory map stays unread)."""
    import hashlib

    flat = array.reshape(-1) if array.flags.c_contiguous else np.ravel(array)
    digest = hashlib.sha1()
    for part in (flat[:4096], flat[-4096:]):
        digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    return f"{tuple(array.shape)}:{digest.hexdigest()[:16]}"


def group(comm):
    """The training group of comm: Local for None or a single rank, else MPIGroup."""
    if comm is None:
        return Local()
    if not all(hasattr(comm, name) for name in ("Get_rank", "Get_size", "Allreduce", "Bcast", "allgather")):
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD), got {type(comm).__name__}")
    return Local() if comm.Get_size() == 1 else MPIGroup(comm)


def world():
    """MPI.COMM_WORLD for `--distributed`; ImportError with the install hint without mpi4py."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(f"--distributed needs mpi4py ({error}); {INSTALL_HINT}") from None
    return MPI.COMM_WORLD


def install_excepthook(comm):
    """An uncaught exception on any rank ends them all instead of leaving them waiting."""
    if comm.Get_size() > 1:
        sys.excepthook = lambda kind, error, tb: abort(comm, error.with_traceback(tb))


def aborts_every_rank(function):
    """Decorate fit(..., comm=None): under MPI with several ranks, an exception on any rank
    (bad input, different settings, a failed step or save) is printed and ends every rank,
    instead of leaving the others waiting for it in a collective call for ever. Errors every
    rank raises together (on_every_rank) are raised as usual."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        comm = kwargs.get("comm")
        if comm is None or not hasattr(comm, "Get_size") or comm.Get_size() == 1:
            return function(*args, **kwargs)
        try:
            return function(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - the others would wait for this rank for ever
            if getattr(error, "fastlm_on_every_rank", False):
                raise
            abort(comm, error)

    return run
