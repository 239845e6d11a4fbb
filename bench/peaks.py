"""The machine's float32 peak, the denominator of "% of peak" in bench/compare.py and bench/test_bench_speed.py.

peak_fma_gflops is fastlm's own register-only FMA loop, the peak that counts; a large NumPy
SGEMM and torch.matmul, each in a process of its own, are printed beside it as references.
"""

from __future__ import annotations

import importlib.util

from fastlm import _core
from fastlm._environment import child_environment
from fastlm.benchmark import run_child

PEAK_ENV_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

_SGEMM_CODE = """
import json, sys, time
import numpy as np
n, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
out = np.empty((n, n), dtype=np.float32)
np.matmul(a, b, out=out)
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    np.matmul(a, b, out=out)
    best = min(best, time.perf_counter() - start)
print(json.dumps({"gflops": 2.0 * n ** 3 / best / 1e9, "seconds": best}))
"""

_TORCH_MATMUL_CODE = """
import json, sys, time
import torch
n, repeats, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
a, b = torch.randn(n, n), torch.randn(n, n)
out = torch.empty(n, n)
torch.matmul(a, b, out=out)
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    torch.matmul(a, b, out=out)
    best = min(best, time.perf_counter() - start)
print(json.dumps({"gflops": 2.0 * n ** 3 / best / 1e9, "seconds": best, "torch": torch.__version__}))
"""


def peak_fma_gflops(threads, seconds=0.5, repeats=3):
    """The float32 FMA peak with `threads` threads: fastlm's register-only FMA loop (best of repeats).

    It uses the SIMD width fastlm was built for, so "% of peak" says how much of what this
    build can do the kernels reach. Returns {"gflops", "threads", "source"}.
    """
    previous = _core.get_num_threads()
    _core.set_num_threads(threads)
    try:
        best = max(_core.fma_peak_gflops(seconds) for _ in range(repeats))
    finally:
        _core.set_num_threads(previous)
    return dict(
        gflops=best, threads=threads, source=f"FMA loop in registers ({_core.build_info()['simd']}, {threads} threads)"
    )


def numpy_sgemm_gflops(threads, n=4096, repeats=3):
    """A peak reference: a large NumPy float32 SGEMM (best of repeats).

    Runs in a subprocess with OMP/OPENBLAS_NUM_THREADS=threads and without OPENBLAS_CORETYPE
    and OPENBLAS_L2_SIZE (when set, they can pin OpenBLAS to slower kernels than the CPU
    has). Returns {"gflops", "seconds", "n", "threads", "unset": the variables removed}.
    """
    env = child_environment(threads)
    unset = [name for name in PEAK_ENV_UNSET if env.pop(name, None) is not None]
    result = run_child(_SGEMM_CODE, (n, repeats), env)
    result.update(n=n, threads=threads, unset=unset, source=f"numpy float32 matmul {n}x{n}")
    return result


def torch_matmul_gflops(threads, n=4096, repeats=3):
    """A second peak reference: torch.matmul on n x n float32 (best of repeats), or None without torch."""
    if importlib.util.find_spec("torch") is None:
        return None
    result = run_child(_TORCH_MATMUL_CODE, (n, repeats, threads), child_environment(threads))
    result.update(n=n, threads=threads, source=f"torch.matmul float32 {n}x{n}")
    return result
