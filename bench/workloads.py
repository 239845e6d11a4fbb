"""What bench/ times beyond `fastlm bench`'s training step: inference and generation, for
fastlm and for PyTorch, with their FLOP and weight-traffic counts.

The configurations, the training step and PyTorch's twin of the model come from the
package (fastlm.benchmark, fastlm/_torch_twin.py), which `fastlm bench` also uses.
"""

from __future__ import annotations

import numpy as np

from fastlm import benchmark as bm


def inference_flops_per_token(c):
    """Teacher-forced forward (loss, no backward): a third of the training count."""
    return bm.training_flops_per_token(c) / 3


# One sampled token: one LSTM step per layer and the decoder, the forward count per token.
generation_flops_per_token = inference_flops_per_token


def generation_weight_bytes_per_token(c):
    """float32 weights read per sampled token (LSTM matrices and decoder): batch-1 generation
    is a chain of matrix-vector products, bound by this traffic rather than by FMAs."""
    return 4 * (bm.lstm_weights(c) + c.hidden * c.vocab)


def fastlm_inference_step(c, backend):
    """Teacher-forced forward of a (B, T) random batch: the mean loss only, no backward."""
    model = bm.fastlm_model(c, backend)
    x, y = model.check_batch(*bm.random_batch(c))

    def step():
        model.forward(x, y)

    return step


def fastlm_generation(c, backend, tokens=500):
    """Sample `tokens` new ids, batch 1, after a one-token prompt (temperature 1, seed 0).

    The NumPy reference loops over tokens in Python: give it fewer (e.g. 50) and say so.
    """
    model = bm.fastlm_model(c, backend)
    prompt = np.zeros(1, dtype=np.int32)

    def run():
        model.generate(prompt, max_new_tokens=tokens, temperature=1.0, seed=0)

    return run


def torch_inference_step(c, threads):
    """Teacher-forced forward and mean loss in PyTorch under no_grad, or None without torch."""
    torch = bm.torch_with_threads(threads)
    if torch is None:
        return None
    net = bm.torch_twin(c).eval()
    x, y = (torch.from_numpy(a).long() for a in bm.random_batch(c))

    def step():
        with torch.no_grad():
            net.loss(x, y)

    return step


def torch_generation(c, threads, tokens=500, mkldnn=True):
    """Sampling loop in PyTorch, batch 1: embed one token, one LSTM step carrying (h, c),
    decoder, softmax, torch.multinomial; under no_grad. None without torch.

    mkldnn=False runs the LSTM steps with oneDNN (torch.backends.mkldnn) disabled: torch's
    default oneDNN LSTM is slow for one step at a time with larger H (it reorders weights
    every call), so this is the faster way to run PyTorch here on some configurations.
    """
    torch = bm.torch_with_threads(threads)
    if torch is None:
        return None
    import contextlib
    import warnings

    net = bm.torch_twin(c).eval()
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
                    probs = net.next_token_probs(logits)
                    token = torch.multinomial(probs, 1, generator=generator).view(1, 1)
                    out[n] = token[0, 0]
        return out

    return run
