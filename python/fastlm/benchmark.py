"""Benchmark configurations, workloads and timers, for `fastlm bench` and bench/ (whose peaks.py
holds the machine's peak references)."""
from __future__ import annotations

import time
from collections import namedtuple

import numpy as np

from fastlm._environment import child_environment

Config = namedtuple("Config", "vocab embed hidden layers steps batch")

# (V, E, H, L, T, B), as the speed issue names them.
CONFIGS = {
    "A": Config(10000, 128, 128, 1, 100, 32),
    "B": Config(10000, 200, 200, 2, 35, 20),
    "C": Config(10000, 650, 650, 2, 35, 20),
    "D": Config(65, 64, 512, 2, 100, 32),
}


def _lstm_weights(c):
    """Entries of all LSTM weight matrices: one multiply-add each per token."""
    return sum(4 * c.hidden * ((c.embed if k == 0 else c.hidden) + c.hidden) for k in range(c.layers))


def training_flops_per_token(c):
    """Forward + backward ~ 3x the forward multiply-adds x 2 (the speed issue's count)."""
    return 3 * 2 * (_lstm_weights(c) + c.hidden * c.vocab)


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


def inference_flops_per_token(c):
    """Teacher-forced forward (loss, no backward): a third of the training count."""
    return training_flops_per_token(c) / 3


# One sampled token: one LSTM step per layer and the decoder, the forward count per token.
generation_flops_per_token = inference_flops_per_token


def generation_weight_bytes_per_token(c):
    """float32 weights read per sampled token (LSTM matrices and decoder): batch-1 generation
    is a chain of matrix-vector products, bound by this traffic rather than by FMAs."""
    return 4 * (_lstm_weights(c) + c.hidden * c.vocab)


def fastlm_train_step(c, backend):
    """One training step (forward, loss, backward, Adam) of a fresh model on a random batch."""
    from fastlm.lstmlm import LSTMLM
    from fastlm.training import Adam
    model = LSTMLM(c.vocab, c.embed, c.hidden, c.layers, backend=backend)
    adam = Adam(model.params, 1e-3)
    x, y = model.check_batch(*random_batch(c))

    def step():
        _, grads, _ = model.forward_backward(x, y)
        adam.step(model.ops, model.params, grads)
    return step


def fastlm_inference_step(c, backend):
    """Teacher-forced forward of a (B, T) random batch: the mean loss only, no backward."""
    from fastlm.lstmlm import LSTMLM
    model = LSTMLM(c.vocab, c.embed, c.hidden, c.layers, backend=backend)
    x, y = model.check_batch(*random_batch(c))

    def step():
        model.forward(x, y)
    return step


def fastlm_generation(c, backend, tokens=500):
    """Sample `tokens` new ids, batch 1, after a one-token prompt (temperature 1, seed 0).

    The NumPy reference loops over tokens in Python: give it fewer (e.g. 50) and say so.
    """
    from fastlm.lstmlm import LSTMLM
    model = LSTMLM(c.vocab, c.embed, c.hidden, c.layers, backend=backend)
    prompt = np.zeros(1, dtype=np.int32)

    def run():
        model.generate(prompt, max_new_tokens=tokens, temperature=1.0, seed=0)
    return run


def _torch(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


def _torch_net(torch, c):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(c.vocab, c.embed)
            self.lstm = torch.nn.LSTM(c.embed, c.hidden, c.layers, batch_first=True)
            self.decoder = torch.nn.Linear(c.hidden, c.vocab)

        def forward(self, x, state=None):
            out, state = self.lstm(self.embedding(x), state)
            return self.decoder(out), state

    return Net()


def torch_train_step(c, threads):
    """The same step in PyTorch (Embedding -> LSTM -> Linear, Adam), or None without torch."""
    torch = _torch(threads)
    if torch is None:
        return None
    net = _torch_net(torch, c)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = (torch.from_numpy(a).long() for a in random_batch(c))

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x)[0].reshape(-1, c.vocab), y.reshape(-1))
        loss.backward()
        optimizer.step()
    return step


def torch_inference_step(c, threads):
    """Teacher-forced forward and mean loss in PyTorch under no_grad, or None without torch."""
    torch = _torch(threads)
    if torch is None:
        return None
    net = _torch_net(torch, c).eval()
    x, y = (torch.from_numpy(a).long() for a in random_batch(c))

    def step():
        with torch.no_grad():
            torch.nn.functional.cross_entropy(net(x)[0].reshape(-1, c.vocab), y.reshape(-1))
    return step


def torch_generation(c, threads, tokens=500, mkldnn=True):
    """Sampling loop in PyTorch, batch 1: embed one token, one LSTM step carrying (h, c),
    decoder, softmax, torch.multinomial; under no_grad. None without torch.

    mkldnn=False runs the LSTM steps with oneDNN (torch.backends.mkldnn) disabled: torch's
    default oneDNN LSTM is slow for one step at a time with larger H (it reorders weights
    every call), so this is the faster way to run PyTorch here on some configurations.
    """
    torch = _torch(threads)
    if torch is None:
        return None
    import contextlib
    import warnings
    net = _torch_net(torch, c).eval()
    generator = torch.Generator().manual_seed(0)

    def run():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.backends.mkldnn.flags warns about TF32 on Intel GPUs
            with contextlib.nullcontext() if mkldnn else torch.backends.mkldnn.flags(enabled=False):
                token = torch.zeros((1, 1), dtype=torch.long)
                state = None
                out = torch.empty(tokens, dtype=torch.long)
                for n in range(tokens):
                    logits, state = net(token, state)
                    probs = torch.softmax(logits[0, -1], dim=-1)
                    token = torch.multinomial(probs, 1, generator=generator).view(1, 1)
                    out[n] = token[0, 0]
        return out
    return run


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
    import json
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child process failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def torch_train_seconds(c, threads, repeats):
    """Median seconds of PyTorch's training step (torch_train_step), or None without torch.

    Timed in a child process that imports torch before fastlm and gets the user's
    environment (user_environment), so PyTorch runs with its own OpenMP settings.
    """
    import importlib.util
    import json
    if importlib.util.find_spec("torch") is None:
        return None
    result = run_child(_TORCH_TRAIN_CODE, (json.dumps(list(c)), threads, repeats), child_environment(threads))
    return result["seconds"]
