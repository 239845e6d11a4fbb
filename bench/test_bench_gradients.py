"""gradients() throughput: fastlm C++ vs the NumPy reference (vs PyTorch when installed).

    pip install '.[bench]' && python -m pytest bench/test_bench_gradients.py --benchmark-columns=median,ops

Each result carries tokens/s and GFLOP/s in extra_info. OPENBLAS_CORETYPE, when set
on the machine, is left as it is: the NumPy side runs as a user's NumPy would.
"""

import pytest

import fastlm
from fastlm.benchmark import CONFIGS, random_batch, training_flops_per_token

CONFIG_NAMES = ["A", "D"]


def _record(benchmark, c):
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    tokens = c.batch * c.steps
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["tokens_per_s"] = tokens / seconds
    benchmark.extra_info["gflops"] = tokens * training_flops_per_token(c) / seconds / 1e9


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_gradients(benchmark, name, backend):
    c = CONFIGS[name]
    model = fastlm.LSTMLM(c.vocab, c.embed, c.hidden, c.layers, backend=backend)
    x, y = random_batch(c)
    benchmark.pedantic(model.gradients, args=(x, y), rounds=3 if backend == "numpy" else 5, warmup_rounds=1)
    _record(benchmark, c)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_gradients_torch(benchmark, name):
    torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install torch==2.13.0)")
    torch.set_num_threads(fastlm.get_num_threads())
    c = CONFIGS[name]

    from fastlm._torch_twin import TorchLM

    net = TorchLM(c.vocab, c.embed, c.hidden, c.layers)
    x, y = (torch.from_numpy(a).long() for a in random_batch(c))

    def step():
        net.zero_grad()
        net.loss(x, y).backward()

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    _record(benchmark, c)
