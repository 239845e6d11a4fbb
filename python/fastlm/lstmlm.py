"""LSTMLM, the class users hold: the network (fastlm.model) with its training loop
(fastlm.training) and its files (fastlm.model_dir); and fastlm.load.

The one module that sees all three, so that none of them imports another's caller:
model.py imports neither training nor model_dir, and these two work on any model object
through the interface documented on LSTMNetwork.
"""

from __future__ import annotations

from fastlm import model_dir, training
from fastlm.checks import check_choice
from fastlm.model import BACKENDS, LSTMNetwork


class LSTMLM(LSTMNetwork):
    """Word- or character-level LSTM language model.

    Exactly ``Embedding(V, E) -> LSTM(E, H, num_layers=L, batch_first=True) -> Linear(H, V)``
    with mean cross-entropy over all positions. Dropout, when > 0, applies to the input of
    every LSTM layer (the embedding output included) and before the decoder, in training
    only. ``tie_weights=True`` shares the embedding matrix with the decoder (needs
    embed_dim == hidden_size); ``init_range=r`` draws every parameter from U[-r, r]
    (None: PyTorch's defaults).

    cutoffs=[c1, c2, ...] replaces the decoder by an adaptive softmax, exactly
    ``torch.nn.AdaptiveLogSoftmaxWithLoss(hidden_size, vocab_size, cutoffs, div_value, head_bias)``
    (state_dict names ``decoder.head.weight``, ``decoder.tail.{i}.0.weight``,
    ``decoder.tail.{i}.1.weight``): ids below c1 are scored by the head, the rest by the
    tail of their cluster, so the ids must be in frequency order (as the tokenizer's are).
    """

    # Defined (signature and docstring) once, in the module that implements each.
    fit = training.fit
    save = model_dir.save


def load(directory, backend="cpp"):
    """The model saved in directory, with its tokenizer (model.tokenizer, or None)."""
    check_choice("backend", backend, BACKENDS)  # the caller's mistake: before any file is read
    return model_dir.load(directory, LSTMLM, backend)
