"""The number of threads the C++ core's kernels run on, process-wide."""

from __future__ import annotations

import os

from fastlm import _core
from fastlm.checks import check_int

# The most threads per core set_num_threads accepts. The LSTM's threads meet at a barrier at
# every time step, so threads beyond the cores only wait for one another; a few per core leave
# room for experiments, while a count far beyond them is a mistake that GNU OpenMP, unable to
# create so many threads, answers by ending the process rather than with an exception.
MAX_THREADS_PER_CORE = 4


def max_threads():
    """The largest count set_num_threads accepts: MAX_THREADS_PER_CORE per core of this machine."""
    return MAX_THREADS_PER_CORE * (os.cpu_count() or 1)


def set_num_threads(n):
    """Run the core's kernels on n threads, in every thread of the process: 1 to max_threads()
    (4 per core). Results are bit-identical for any count."""
    _core.set_num_threads(check_int("n (the number of threads)", n, 1, max_threads()))
