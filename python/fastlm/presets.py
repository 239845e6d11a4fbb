"""The literature's LSTM language-model recipes, as fastlm settings.

The three configurations of Zaremba, Sutskever & Vinyals (2014), as the TensorFlow Penn
Treebank tutorial (``ptb_word_lm.py``) ships them: SGD without momentum, every parameter
uniform in [-init, init], truncated backpropagation through ``batch_size`` contiguous
streams with the state carried across batches, the learning rate constant for the first
epochs and then multiplied by ``lr_decay`` every epoch, dropout on the embedding output,
between the layers and before the decoder.

The tutorial's loss is summed over the T time steps of a batch and averaged over its B
streams; fastlm's is the mean over all B * T positions, T times smaller, and so is its
gradient. The same steps therefore take a learning rate T times larger (the tutorial's
1.0 becomes T), and the gradient norm the tutorial clips at C is clipped at C / T here:
``clip(T * g, C) == T * clip(g, C / T)``. PyTorch's word-language-model example uses
lr 20 and clip 0.25 for the same reason.

A preset is a set of keyword arguments for the three calls of a training run::

    preset = fastlm.presets.get("zaremba-small")
    tok = fastlm.Tokenizer.fit_file("ptb.train.txt", **preset.tokenizer)
    model = fastlm.LSTMLM(len(tok), **preset.model)
    model.fit(tok.encode_file("ptb.train.txt"), val_ids=tok.encode_file("ptb.valid.txt"), **preset.fit)

Any of them can be overridden by editing the dicts (they are copies).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    tokenizer: dict  # Tokenizer.fit / fit_file keyword arguments
    model: dict  # LSTMLM keyword arguments (all but vocab_size)
    fit: dict  # LSTMLM.fit keyword arguments
    published_test_perplexity: float  # the tutorial's figure on the Penn Treebank test set
    source: str = field(default="Zaremba et al. 2014; TensorFlow PTB tutorial (ptb_word_lm.py)")


def _zaremba(name, hidden, steps, init, dropout, epochs, decay, decay_from, clip, perplexity):
    """A tutorial config translated to fastlm's mean loss: lr 1.0 -> steps, clip C -> C / steps."""
    return Preset(
        name=name,
        tokenizer=dict(level="word", eos="<eos>"),
        model=dict(embed_dim=hidden, hidden_size=hidden, num_layers=2, dropout=dropout, init_range=init),
        fit=dict(
            optimizer="sgd",
            lr=float(steps),
            clip_norm=clip / steps,
            seq_len=steps,
            batch_size=20,
            epochs=epochs,
            stateful=True,
            lr_decay=decay,
            lr_decay_epoch=decay_from,
        ),
        published_test_perplexity=perplexity,
    )


_PRESETS = {
    preset.name: preset
    for preset in (
        # name, hidden, T, init, dropout, epochs, lr decay, decayed from epoch, clip (summed loss), test ppl
        _zaremba("zaremba-small", 200, 20, 0.1, 0.0, 13, 0.5, 5, 5.0, 115.91),
        _zaremba("zaremba-medium", 650, 35, 0.05, 0.5, 39, 0.8, 7, 5.0, 82.07),
        _zaremba("zaremba-large", 1500, 35, 0.04, 0.65, 55, 1 / 1.15, 15, 10.0, 78.29),
    )
}

NAMES = tuple(_PRESETS)


def get(name):
    """The preset called name (one of NAMES), as a copy the caller may change."""
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a str, got {type(name).__name__}")
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(NAMES)}")
    return copy.deepcopy(_PRESETS[name])
