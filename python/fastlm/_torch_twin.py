"""PyTorch's twin of fastlm.LSTMLM: what the tests compare against and the benchmarks time.

It imports torch, so only code that has torch imports it (the PyTorch tests, bench/ and the
child process of `fastlm bench --torch`); nothing in the package imports it at load time.
"""

from __future__ import annotations

import torch


class TorchLM(torch.nn.Module):
    """Embedding(V, E) -> LSTM(E, H, num_layers=L, batch_first=True) -> Linear(H, V).

    The function LSTMLM computes (docs/DESIGN.md), with attribute names that give its
    state_dict fastlm's keys: embedding.weight, lstm.weight_ih_l0, ..., decoder.bias. With
    cutoffs, the decoder is torch.nn.AdaptiveLogSoftmaxWithLoss(H, V, cutoffs, div_value,
    head_bias), as LSTMLM(..., cutoffs=...) builds it; sparse_embedding gives the embedding
    sparse gradients (for torch.optim.SparseAdam).
    """

    def __init__(
        self,
        vocab_size,
        embed_dim,
        hidden_size,
        num_layers,
        cutoffs=None,
        div_value=4.0,
        head_bias=False,
        sparse_embedding=False,
    ):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, embed_dim, sparse=sparse_embedding)
        self.lstm = torch.nn.LSTM(embed_dim, hidden_size, num_layers=num_layers, batch_first=True)
        if cutoffs is None:
            self.decoder = torch.nn.Linear(hidden_size, vocab_size)
        else:
            self.decoder = torch.nn.AdaptiveLogSoftmaxWithLoss(
                hidden_size, vocab_size, list(cutoffs), div_value=div_value, head_bias=head_bias
            )
        self.adaptive = cutoffs is not None

    def forward(self, x, state=None):
        """(B, T) token ids -> logits (B, T, V) and the LSTM's final (h, c) for the next call.

        With an adaptive decoder, the LSTM's outputs (B, T, H) instead of logits: its
        log_prob(rows) or loss() takes them from there.
        """
        hidden, state = self.lstm(self.embedding(x), state)
        return (hidden if self.adaptive else self.decoder(hidden)), state

    def loss(self, x, y):
        """Mean cross-entropy over all (B, T) positions, as LSTMLM's; x and y may be NumPy arrays."""
        out, _ = self(torch.as_tensor(x, dtype=torch.long))
        targets = torch.as_tensor(y, dtype=torch.long).reshape(-1)
        rows = out.reshape(-1, out.shape[-1])
        if self.adaptive:
            return self.decoder(rows, targets).loss
        return torch.nn.functional.cross_entropy(rows, targets)

    def next_token_probs(self, out):
        """The distribution over the vocabulary (V,) after the last position of forward's output (1, T, ...)."""
        last = out[0, -1:]
        return self.decoder.log_prob(last)[0].exp() if self.adaptive else torch.softmax(last[0], dim=-1)
