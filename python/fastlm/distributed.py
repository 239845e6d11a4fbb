"""Data-parallel training over MPI (mpi4py), and its single-process stand-in.

Every rank holds the whole model. At the start the ranks check that they were given the
same settings and take rank 0's weights; then, per step, each rank runs forward and
backward on its own rows of the global batch, and one Allreduce of one flat buffer (all
gradients, the loss and a stop flag) gives every rank the gradient of the global batch,
so every rank applies the same optimizer step and the weights stay equal without being
sent again. N ranks with b rows each therefore train what one process trains with N*b.

Any exception on one rank would leave the others waiting in the next collective call
for ever: ``aborts_every_rank`` (on fit) prints it and calls MPI_Abort, ending every rank.
A rank that hangs without raising (a stuck file system, a deadlock, a stopped process)
would do the same, so every collective call is a non-blocking one polled against a
deadline: a rank that waits longer than ``timeout`` seconds raises TimeoutError naming
the call, and the abort then ends the job.
"""

from __future__ import annotations

import functools
import pickle
import sys
import time
import traceback

import numpy as np

INSTALL_HINT = "pip install 'fastlm[mpi]' (mpi4py with the mpich wheel) or install mpi4py against your cluster's MPI"

# fit's comm_timeout by default: longer than any step, and than rank 0's checkpoint save
# that the others wait out at the end of an epoch, on any machine fastlm runs on.
DEFAULT_TIMEOUT = 300.0
# Waiting ranks spin on MPI_Test this long (as a blocking MPI call would), then sleep
# between tests, up to MAX_PAUSE, so that a long wait does not hold a core.
SPIN_SECONDS, MAX_PAUSE = 0.05, 0.01
# How long a rank that ends the job waits after printing why: see print_and_abort.
ABORT_GRACE = 1.0


class Local:
    """One process: the same interface as MPIGroup, doing nothing."""

    rank, size = 0, 1

    def rows(self, total):
        return 0, total

    def check_same(self, settings):
        pass

    def broadcast_parameters(self, params):
        pass

    def reduce_step(self, grads, loss, rows, total_rows, stop, where=""):
        return loss, grads, stop

    def any(self, flag, where=""):
        return bool(flag)


class MPIGroup(Local):
    """The ranks of an MPI communicator training one model together.

    timeout: the longest, in seconds, that a rank waits for the others in one collective
    call before it raises TimeoutError (None: for ever)."""

    def __init__(self, comm, timeout=DEFAULT_TIMEOUT):
        from mpi4py import MPI

        self.MPI, self.comm, self.timeout = MPI, comm, timeout
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._flat, self._layout = None, None

    def _wait(self, request, what):
        """Complete a non-blocking collective call, or raise TimeoutError naming it (what)
        once the deadline has passed: a rank that never arrives must not stop the others for ever."""
        if self.timeout is None:
            request.Wait()
            return
        start = time.monotonic()
        pause = 0.0
        while not request.Test():
            waited = time.monotonic() - start
            if waited > self.timeout:
                raise TimeoutError(
                    f"rank {self.rank} of {self.size} waited {waited:.1f} s for the other ranks in {what} "
                    f"(comm_timeout={self.timeout:g} s): a rank is hanging or far slower than this one"
                )
            if waited > SPIN_SECONDS:
                time.sleep(pause)
                pause = min(MAX_PAUSE, 2 * pause or 1e-4)

    def _allgather(self, value, what):
        """comm.allgather(value) (every rank's picklable value, in rank order), bounded by the timeout."""
        data = np.frombuffer(pickle.dumps(value), dtype=np.uint8)
        mine, sizes = np.array([data.size], dtype=np.int64), np.zeros(self.size, dtype=np.int64)
        self._wait(self.comm.Iallgather(mine, sizes), what)
        sizes = [int(size) for size in sizes]
        gathered = np.empty(sum(sizes), dtype=np.uint8)
        self._wait(self.comm.Iallgatherv(data, [gathered, sizes]), what)
        ends = np.cumsum(sizes)
        return [pickle.loads(gathered[end - size : end].tobytes()) for size, end in zip(sizes, ends)]

    def rows(self, total):
        """This rank's rows [lo, hi) of a global batch of total rows: even shares in rank order,
        so with total = size * b rank r takes rows r*b .. (r+1)*b - 1."""
        return self.rank * total // self.size, (self.rank + 1) * total // self.size

    def check_same(self, settings):
        """Raise on every rank when any rank was started with other settings than rank 0."""
        everyone = self._allgather(settings, "the start-up check that every rank has the same settings")
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
        self._wait(self.comm.Ibcast(weights, root=0), "the start-up broadcast of rank 0's weights")
        offset = 0
        for p in params.values():
            p[...] = weights[offset : offset + p.size].reshape(p.shape)
            offset += p.size

    def reduce_step(self, grads, loss, rows, total_rows, stop, where=""):
        """The global batch's mean loss and gradients from every rank's share, in one Allreduce.

        grads: this rank's gradients (mean over its rows; None when it has no rows), loss its
        mean loss. Each is weighted by rows / total_rows and summed over the ranks, which is
        the mean over the global batch. stop: this rank wants to stop (Ctrl-C); true on every
        rank when on any. where names the step in a TimeoutError ("epoch 1, batch 5").
        Returns (loss, grads, stop); grads are views of one flat buffer.
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
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM), f"the gradient Allreduce of {where}")
        reduced, offset = {}, 0
        for name, shape, size in self._layout:
            reduced[name] = flat[offset : offset + size].reshape(shape)
            offset += size
        return float(flat[-2]), reduced, bool(flat[-1] > 0)

    def any(self, flag, where=""):
        """True on every rank when flag is true on any (where: the point, for a TimeoutError)."""
        flags = np.array([1 if flag else 0], dtype=np.int32)
        self._wait(
            self.comm.Iallreduce(self.MPI.IN_PLACE, flags, op=self.MPI.MAX), f"the agreement on stopping {where}"
        )
        return bool(flags[0])


# Errors that describe the input: one line says it all (the others get a traceback).
USER_ERRORS = (OSError, ValueError, TypeError, KeyError, FloatingPointError, MemoryError)


def on_every_rank(error):
    """Mark an error that every rank raises at the same point: it is raised as usual, not aborted."""
    error.fastlm_on_every_rank = True
    return error


def abort(comm, error):
    """Print error as this rank's, then end every rank of comm (mpiexec returns non-zero)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    text = (
        ""
        if isinstance(error, USER_ERRORS)
        else "".join(traceback.format_exception(type(error), error, error.__traceback__))
    )
    text += f"fastlm: rank {rank} of {size} stopped with {type(error).__name__}: {error}; "
    text += "aborting all ranks (MPI_Abort)"
    print_and_abort(comm, text)


def print_and_abort(comm, text, code=1):
    """Print text on stderr, then end every rank of comm with the exit code. mpiexec drops what
    a rank printed but it has not yet forwarded when MPI_Abort ends the job (the first line of
    a traceback and nothing more, now and then): the text goes in one write, and the rank waits
    ABORT_GRACE seconds for it to be forwarded before it aborts."""
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()
    time.sleep(ABORT_GRACE)
    comm.Abort(code)


def fingerprint(array):
    """A cheap summary of a data array for comparing ranks' inputs: its shape and the
    digest of its first and last 4096 values (not a full hash: a memory map stays unread)."""
    import hashlib

    flat = array.reshape(-1) if array.flags.c_contiguous else np.ravel(array)
    digest = hashlib.sha1()
    for part in (flat[:4096], flat[-4096:]):
        digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    return f"{tuple(array.shape)}:{digest.hexdigest()[:16]}"


def group(comm, timeout=DEFAULT_TIMEOUT):
    """The training group of comm: Local for None or a single rank, else MPIGroup (timeout: its)."""
    if comm is None:
        return Local()
    if not all(hasattr(comm, name) for name in ("Get_rank", "Get_size", "Iallreduce", "Ibcast", "Iallgatherv")):
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD), got {type(comm).__name__}")
    return Local() if comm.Get_size() == 1 else MPIGroup(comm, timeout)


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
