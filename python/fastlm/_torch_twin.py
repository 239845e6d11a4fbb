"""PyTorch's twin of fastlm.LSTMLM: what the tests compare against and the benchmarks time.

It imports torch, so only code that has torch imports it (the PyTorch tests, bench/ and the
child process of `fastlm bench --torch`); nothing in the package imports it at load time.
"""
from __future__ import annotations

import torch


class TorchLM(torch.nn.Module):
    """Embedding(V, E) -> LSTM(E, H, num_layers=L, batch_first=True) -> Linear(H, V).

    The function LSTMLM computes (docs/DESIGN.md), with attribute names that give its
    state_dict fastlm's keys: embedding.weight, lstm.weight_ih_l0, ..., decoder.bias.
    """

    def __init__(self, vocab_size, embed_dim, hidden_size, num_layers):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, embed_dim)
        self.lstm = torch.nn.LSTM(embed_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.decoder = torch.nn.Linear(hidden_size, vocab_size)

    def forward(self, x, state=None):
        """Logits (B, T, V) of (B, T) token ids, and the LSTM's final (h, c) for the next call."""
        hidden, state = self.lstm(self.embedding(x), state)
        return self.decoder(hidden), state

    def loss(self, x, y):
        """Mean cross-entropy over all (B, T) positions, as LSTMLM's; x and y may be NumPy arrays."""
        logits, _ = self(torch.as_tensor(x, dtype=torch.long))
        targets = torch.as_tensor(y, dtype=torch.long)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
