"""Threads and processes around the C++ core: set_num_threads is process-wide, and a
child forked after the parent ran multi-threaded kernels runs (on one thread) instead of
hanging in GNU OpenMP, which cannot restart its worker threads after a fork."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

import fastlm
from fastlm import _core


def in_new_thread(function):
    result = []
    thread = threading.Thread(target=lambda: result.append(function()))
    thread.start()
    thread.join()
    return result[0]


@pytest.mark.skipif(not fastlm.build_info()["openmp"], reason="a build without OpenMP runs one thread")
@pytest.mark.parametrize("n", [1, 2, 3])
def test_set_num_threads_reaches_every_thread(restore_threads, n):
    """OpenMP keeps the count per thread; a kernel called from a new thread used the default."""
    fastlm.set_num_threads(n)
    assert _core._kernel_team_size() == n
    assert in_new_thread(_core._kernel_team_size) == n
    assert in_new_thread(fastlm.get_num_threads) == n


@pytest.mark.skipif(not fastlm.build_info()["openmp"], reason="a build without OpenMP runs one thread")
def test_set_num_threads_from_another_thread_applies_here(restore_threads):
    fastlm.set_num_threads(1)
    in_new_thread(lambda: fastlm.set_num_threads(2))
    assert fastlm.get_num_threads() == 2
    assert _core._kernel_team_size() == 2


FORK_CHILD = textwrap.dedent("""
    import multiprocessing, sys
    import numpy as np
    import fastlm

    def child_loss(_):
        model = fastlm.LSTMLM(300, 32, 128, seed=0)
        return model.evaluate(np.arange(3000) % 300, seq_len=50)["loss"], fastlm.get_num_threads()

    fastlm.set_num_threads(2)
    parent = child_loss(0)  # starts OpenMP's workers in the parent
    with multiprocessing.get_context("fork").Pool(2) as pool:
        result = pool.map_async(child_loss, range(2))
        children = result.get(timeout=60)  # a hang in the child would end here
    print(parent[0] == children[0][0] == children[1][0], [threads for _, threads in children])
    try:
        fastlm.set_num_threads(2)
        print("parent can change its count")
    except RuntimeError:
        print("parent refused")
""")


@pytest.mark.skipif(not fastlm.build_info()["openmp"], reason="a build without OpenMP has no worker threads")
@pytest.mark.skipif(sys.platform != "linux", reason="the fork start method and GNU OpenMP's fork problem are Linux's")
def test_fork_after_kernels_does_not_hang():
    done = subprocess.run([sys.executable, "-c", FORK_CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # same loss in the children (determinism holds for any thread count), run on one thread
    assert done.stdout.splitlines() == ["True [1, 1]", "parent can change its count"]


FORKED_SET = textwrap.dedent("""
    import os
    import numpy as np
    import fastlm
    fastlm.set_num_threads(2)
    fastlm.LSTMLM(50, 8, 8).evaluate(np.arange(100) % 50, seq_len=10)
    pid = os.fork()
    if pid == 0:
        try:
            fastlm.set_num_threads(2)
            print("accepted", flush=True)
        except RuntimeError as error:
            print("refused:", "spawn" in str(error), fastlm.get_num_threads(), flush=True)
        fastlm.set_num_threads(1)  # one thread stays allowed
        os._exit(0)
    os.waitpid(pid, 0)
""")


@pytest.mark.skipif(not fastlm.build_info()["openmp"], reason="a build without OpenMP has no worker threads")
@pytest.mark.skipif(sys.platform != "linux", reason="GNU OpenMP's fork problem is Linux's")
def test_forked_child_refuses_more_threads_with_a_hint():
    done = subprocess.run([sys.executable, "-c", FORKED_SET], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused: True 1"
