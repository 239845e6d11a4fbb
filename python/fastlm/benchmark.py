"""Benchmark configurations, workloads and timers, for `fastlm bench` and bench/ (whose peaks.py
holds the machine's peak references)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np

from fastlm._environment import child_environment
from fastlm.lstmlm import LSTMLM
from fastlm.training import Adam

# cutoffs: an adaptive softmax decoder (div_value 4, no head bias), on ids drawn from a
# Zipf law of exponent 1.1 so that the clusters are hit as in real text; None: full softmax.
Config = namedtuple("Config", "vocab embed hidden layers steps batch cutoffs", defaults=(None,))

# (V, E, H, L, T, B), as the speed issue names them; W and X (large vocabularies) as issue 16 does.
CONFIGS = {
    "A": Config(10000, 128, 128, 1, 100, 32),
    "B": Config(10000, 200, 200, 2, 35, 20),
    "C": Config(10000, 650, 650, 2, 35, 20),
    "D": Config(65, 64, 512, 2, 100, 32),
    "W": Config(50000, 256, 256, 1, 100, 32, (2000, 10000)),
    "X": Config(250000, 512, 512, 2, 35, 32, (4000, 20000, 100000)),
}


def shape(c):
    """(V, E, H, L, T, B) of a configuration, for tables."""
    return tuple(c)[:6]


def lstm_weights(c):
    """Entries of all LSTM weight matrices: one multiply-add each per token."""
    return sum(4 * c.hidden * ((c.embed if k == 0 else c.hidden) + c.hidden) for k in range(c.layers))


def training_flops_per_token(c):
    """Forward + backward ~ 3x the forward multiply-adds x 2 (the speed issue's count; with
    cutoffs, the full softmax's count, so that GFLOP/s compare the same work)."""
    return 3 * 2 * (lstm_weights(c) + c.hidden * c.vocab)


def zipf_ids(vocab, size, rng, exponent=1.1):
    """Ids 0..vocab-1 with P(id = k) proportional to (k + 1)^-exponent: frequency order, as a
    tokenizer's ids are, and heavy-tailed like words in text."""
    p = np.arange(1, vocab + 1, dtype=np.float64) ** -exponent
    return rng.choice(vocab, size=size, p=p / p.sum()).astype(np.int32)


def random_batch(c, seed=0):
    rng = np.random.default_rng(seed)
    shape = (c.batch, c.steps)
    if c.cutoffs is not None:
        return zipf_ids(c.vocab, shape, rng), zipf_ids(c.vocab, shape, rng)
    return rng.integers(0, c.vocab, shape, dtype=np.int32), rng.integers(0, c.vocab, shape, dtype=np.int32)


def fastlm_model(c, backend):
    cutoffs = None if c.cutoffs is None else list(c.cutoffs)
    return LSTMLM(c.vocab, c.embed, c.hidden, c.layers, backend=backend, cutoffs=cutoffs)


def median_seconds(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def fastlm_train_step(c, backend, sparse_embedding=False, embedding_rows=True):
    """One training step (forward, loss, backward, Adam) of a fresh model on a random batch
    (sparse_embedding: the embedding under SparseAdam, as fit(..., sparse_embedding=True)).
    embedding_rows: the embedding's gradient in row form, as fit passes it to Adam (False:
    the dense V x E gradient, as forward_backward returns it by default)."""
    model = fastlm_model(c, backend)
    adam = Adam(model.params, 1e-3, sparse_embedding=sparse_embedding)
    x, y = model.check_batch(*random_batch(c))
    rows = sparse_embedding or (embedding_rows and not model.tie_weights)

    def step():
        _, grads, _ = model.forward_backward(x, y, sparse_embedding=rows)
        adam.step(model.ops, model.params, grads)

    return step


def torch_twin(c, sparse_embedding=False):
    """PyTorch's twin of the model of configuration c (fastlm/_torch_twin.py)."""
    from fastlm._torch_twin import TorchLM

    return TorchLM(c.vocab, c.embed, c.hidden, c.layers, cutoffs=c.cutoffs, sparse_embedding=sparse_embedding)


def torch_with_threads(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


def torch_train_step(c, threads, sparse_embedding=False):
    """The same step in PyTorch (Embedding -> LSTM -> Linear, Adam), or None without torch.
    sparse_embedding: Embedding(sparse=True) under torch.optim.SparseAdam, the rest under Adam."""
    torch = torch_with_threads(threads)
    if torch is None:
        return None
    net = torch_twin(c, sparse_embedding)
    if sparse_embedding:
        dense = [p for name, p in net.named_parameters() if name != "embedding.weight"]
        optimizers = [torch.optim.SparseAdam([net.embedding.weight], lr=1e-3), torch.optim.Adam(dense, lr=1e-3)]
    else:
        optimizers = [torch.optim.Adam(net.parameters(), lr=1e-3)]
    x, y = (torch.from_numpy(a).long() for a in random_batch(c))

    def step():
        for optimizer in optimizers:
            optimizer.zero_grad()
        net.loss(x, y).backward()
        for optimizer in optimizers:
            optimizer.step()

    return step


# ------------------------------------------------------------ PyTorch in a process of its own

_TORCH_TRAIN_CODE = """
import json, sys
import torch  # before fastlm: PyTorch's OpenMP runtime starts with the environment it was given
from fastlm import benchmark as bm
c, threads, repeats = bm.Config(*json.loads(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
print(json.dumps({"seconds": bm.median_seconds(bm.torch_train_step(c, threads), repeats)}))
"""


def run_child(code, args, env):
    """Run `python -c code args` and return the JSON object on the last line of its output."""
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child process failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def torch_train_seconds(c, threads, repeats):
    """Median seconds of PyTorch's training step (torch_train_step), or None without torch.

    Timed in a child process that imports torch before fastlm and gets the user's
    environment (child_environment), so PyTorch runs with its own OpenMP settings.
    """
    if importlib.util.find_spec("torch") is None:
        return None
    result = run_child(_TORCH_TRAIN_CODE, (json.dumps(list(c)), threads, repeats), child_environment(threads))
    return result["seconds"]
