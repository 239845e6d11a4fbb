"""Benchmark configurations shared by the benchmarks: (V, E, H, L, T, B)."""
from collections import namedtuple

Config = namedtuple("Config", "vocab embed hidden layers steps batch")

CONFIGS = {
    "A": Config(10000, 128, 128, 1, 100, 32),
    "B": Config(10000, 200, 200, 2, 35, 20),
    "C": Config(10000, 650, 650, 2, 35, 20),
    "D": Config(65, 64, 512, 2, 100, 32),
}


def training_flops_per_token(c):
    """Forward + backward multiply-adds x 2, as the speed issue counts them."""
    lstm = sum(2 * 4 * c.hidden * ((c.embed if k == 0 else c.hidden) + c.hidden) for k in range(c.layers))
    return 3 * (lstm + 2 * c.hidden * c.vocab)


def random_batch(c, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    shape = (c.batch, c.steps)
    return rng.integers(0, c.vocab, shape, dtype=np.int32), rng.integers(0, c.vocab, shape, dtype=np.int32)
