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
    sparse gradients (for torch.optim.SparseAdam); tie_weights makes the decoder use the
    embedding's Parameter; dropout as LSTMLM's (active in training mode only).
    LSTMLM.to_torch() returns one of these with the model's weights.
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
        tie_weights=False,
        dropout=0.0,
    ):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, embed_dim, sparse=sparse_embedding)
        # Dropout where LSTMLM puts it (every LSTM layer's input, the top layer's output), in
        # training mode only; no module at all at 0, so the benchmarks time no dropout call.
        between = dropout if num_layers > 1 else 0.0
        self.lstm = torch.nn.LSTM(embed_dim, hidden_size, num_layers=num_layers, batch_first=True, dropout=between)
        self.drop = torch.nn.Dropout(dropout) if dropout > 0 else None
        if cutoffs is None:
            self.decoder = torch.nn.Linear(hidden_size, vocab_size)
        else:
            self.decoder = torch.nn.AdaptiveLogSoftmaxWithLoss(
                hidden_size, vocab_size, list(cutoffs), div_value=div_value, head_bias=head_bias
            )
        if tie_weights:  # one Parameter under both names, as PyTorch's word_language_model ties them
            if cutoffs is not None or embed_dim != hidden_size:
                raise ValueError("tie_weights needs the full softmax decoder and embed_dim == hidden_size")
            self.decoder.weight = self.embedding.weight
        self.adaptive = cutoffs is not None

    def forward(self, x, state=None):
        """(B, T) token ids -> logits (B, T, V) and the LSTM's final (h, c) for the next call.

        With an adaptive decoder, the LSTM's outputs (B, T, H) instead of logits: its
        log_prob(rows) or loss() takes them from there.
        """
        embedded = self.embedding(x)
        if self.drop is not None:
            embedded = self.drop(embedded)
        hidden, state = self.lstm(embedded, state)
        if self.drop is not None:
            hidden = self.drop(hidden)
        return (hidden if self.adaptive else self.decoder(hidden)), state

    def log_probs(self, x, state=None):
        """(B, T) token ids (a LongTensor) -> the natural-log distribution of the next token at
        every position (B, T, V), whatever the decoder, and the final (h, c): what
        LSTMLM.to_onnx's graph returns as log_probs, hn, cn."""
        out, state = self(x, state)
        if not self.adaptive:
            return torch.log_softmax(out, dim=-1), state
        B, T, H = out.shape
        return self.decoder.log_prob(out.reshape(B * T, H)).reshape(B, T, -1), state

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
