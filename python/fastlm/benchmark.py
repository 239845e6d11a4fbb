"""Benchmark configurations and timers shared by `fastlm bench` and bench/."""
from __future__ import annotations

import time
from collections import namedtuple

import numpy as np

Config = namedtuple("Config", "vocab embed hidden layers steps batch")

# (V, E, H, L, T, B), as the speed issue names them.
CONFIGS = {
    "A": Config(10000, 128, 128, 1, 100, 32),
    "B": Config(10000, 200, 200, 2, 35, 20),
    "C": Config(10000, 650, 650, 2, 35, 20),
    "D": Config(65, 64, 512, 2, 100, 32),
}


def training_flops_per_token(c):
    """Forward + backward ~ 3x the forward multiply-adds x 2 (the speed issue's count)."""
    lstm = sum(2 * 4 * c.hidden * ((c.embed if k == 0 else c.hidden) + c.hidden) for k in range(c.layers))
    return 3 * (lstm + 2 * c.hidden * c.vocab)


def random_batch(c, seed=0):
    rng = np.random.default_rng(seed)
    shape = (c.batch, c.steps)
    return rng.integers(0, c.vocab, shape, dtype=np.int32), rng.integers(0, c.vocab, shape, dtype=np.int32)


def median_seconds(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def fastlm_train_step(c, backend):
    """One training step (forward, loss, backward, Adam) of a fresh model on a random batch."""
    from fastlm.model import LSTMLM
    from fastlm.training import Adam
    model = LSTMLM(c.vocab, c.embed, c.hidden, c.layers, backend=backend)
    adam = Adam(model._params, 1e-3)
    x, y = model.check_batch(*random_batch(c))

    def step():
        _, grads, _ = model._forward_backward(x, y)
        adam.step(model._ops, model._params, grads)
    return step


def torch_train_step(c, threads):
    """The same step in PyTorch (Embedding -> LSTM -> Linear, Adam), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(c.vocab, c.embed)
            self.lstm = torch.nn.LSTM(c.embed, c.hidden, c.layers, batch_first=True)
            self.decoder = torch.nn.Linear(c.hidden, c.vocab)

        def forward(self, x):
            return self.decoder(self.lstm(self.embedding(x))[0])

    net = Net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = (torch.from_numpy(a).long() for a in random_batch(c))

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x).reshape(-1, c.vocab), y.reshape(-1))
        loss.backward()
        optimizer.step()
    return step
