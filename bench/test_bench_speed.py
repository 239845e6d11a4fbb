"""Training, inference and generation speed: fastlm C++ vs the NumPy reference vs PyTorch (when installed).

    pip install '.[bench]' && python -m pytest bench/test_bench_speed.py --benchmark-columns=median,ops
    FASTLM_BENCH_CONFIGS="A D" python -m pytest bench/test_bench_speed.py -k cpp   # some configurations, one backend

Configurations A-D (V, E, H, L, T, B) from fastlm.benchmark.CONFIGS. Every result carries
tokens_per_s, gflops and peak_pct in extra_info (see --benchmark-json); peak_pct is against
the float32 FMA peak measured once per session (bench/peaks.py's peak_fma_gflops: an FMA
loop in registers with the build's SIMD width).

Threads: FASTLM_BENCH_THREADS (default 2) for fastlm and torch. The NumPy reference uses
NumPy's own BLAS threads, fixed at import: run with OPENBLAS_NUM_THREADS=2 for the same
count; OPENBLAS_CORETYPE, when set on the machine, is left as it is.
All implementations run in this one process, so PyTorch runs with the OpenMP barrier spin
fastlm sets on import (GOMP_SPINCOUNT=10000, unless you set it); bench/compare.py runs each
measurement in its own process, PyTorch with its own settings, alternating, and is the one
to quote.
"""

import os

import pytest

import fastlm
import workloads  # bench/workloads.py and bench/peaks.py: pytest puts bench/ on sys.path
from fastlm import benchmark as bm
from peaks import peak_fma_gflops

THREADS = int(os.environ.get("FASTLM_BENCH_THREADS", "2"))
CONFIG_NAMES = os.environ.get("FASTLM_BENCH_CONFIGS", "A B C D").split()
IMPLS = ["cpp", "numpy", "torch"]
GENERATION_TOKENS = {"cpp": 500, "numpy": 50, "torch": 500}  # the NumPy reference samples in a Python loop


def rounds(impl, name):
    """Fewer rounds where a call is slow: the NumPy reference on the large configurations."""
    if impl == "numpy":
        return {"C": 1, "B": 2}.get(name, 3)
    return 5


@pytest.fixture(scope="module", autouse=True)
def threads():
    before = fastlm.get_num_threads()
    fastlm.set_num_threads(THREADS)
    yield THREADS
    fastlm.set_num_threads(before)


@pytest.fixture(scope="session")
def peak_gflops():
    return peak_fma_gflops(THREADS)["gflops"]


def _torch_or_skip():
    return pytest.importorskip("torch", reason="PyTorch not installed (pip install torch==2.13.0)")


def _run(benchmark, fn, impl, name, tokens, flops_per_token, peak):
    benchmark.pedantic(fn, rounds=rounds(impl, name), warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    seconds = benchmark.stats.stats.median
    rate = tokens / seconds
    gflops = rate * flops_per_token / 1e9
    benchmark.extra_info.update(
        tokens=tokens,
        tokens_per_s=rate,
        gflops=gflops,
        peak_gflops=peak,
        peak_pct=100.0 * gflops / peak,
        threads=THREADS,
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_train_step(benchmark, peak_gflops, name, impl):
    c = bm.CONFIGS[name]
    if impl == "torch":
        _torch_or_skip()
        fn = bm.torch_train_step(c, THREADS)
    else:
        fn = bm.fastlm_train_step(c, impl)
    _run(benchmark, fn, impl, name, c.batch * c.steps, bm.training_flops_per_token(c), peak_gflops)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_inference_step(benchmark, peak_gflops, name, impl):
    c = bm.CONFIGS[name]
    if impl == "torch":
        _torch_or_skip()
        fn = workloads.torch_inference_step(c, THREADS)
    else:
        fn = workloads.fastlm_inference_step(c, impl)
    _run(benchmark, fn, impl, name, c.batch * c.steps, workloads.inference_flops_per_token(c), peak_gflops)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_generation(benchmark, peak_gflops, name, impl):
    c = bm.CONFIGS[name]
    tokens = GENERATION_TOKENS[impl]
    if impl == "torch":
        _torch_or_skip()
        fn = workloads.torch_generation(c, THREADS, tokens)
    else:
        fn = workloads.fastlm_generation(c, impl, tokens)
    _run(benchmark, fn, impl, name, tokens, workloads.generation_flops_per_token(c), peak_gflops)
