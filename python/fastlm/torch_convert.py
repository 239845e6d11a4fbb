"""Models to and from PyTorch modules: ``LSTMLM.to_torch()`` and ``LSTMLM.from_torch(module)``.

to_torch gives fastlm/_torch_twin.py's TorchLM (the one PyTorch twin of the model) holding
the model's weights. from_torch reads a PyTorch language model of the same shape:
Embedding -> LSTM -> Linear or AdaptiveLogSoftmaxWithLoss, whatever its attributes are
called (TorchLM's names, which are fastlm's; PyTorch's examples/word_language_model's
``encoder``, ``rnn``, ``decoder``; any other), tied or not; or such a model's state_dict,
whose names must then be fastlm's or word_language_model's.

torch is an optional dependency: it is imported only when a conversion runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fastlm import adaptive

INSTALL_HINT = "pip install torch"
# The names a state_dict may give each part: fastlm's (and TorchLM's), then word_language_model's.
EMBEDDING_NAMES = ("embedding.weight", "encoder.weight")
LSTM_PREFIXES = ("lstm.", "rnn.")
LSTM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"converting to or from PyTorch needs torch, which is not installed: {INSTALL_HINT}"
        ) from error
    return torch


def to_torch(model):
    """The model as a ``torch.nn.Module`` (fastlm._torch_twin.TorchLM) with a copy of its
    weights, in eval mode: ``module(ids)`` gives the logits (B, T, V) and the LSTM's final
    (h, c), each (num_layers, B, hidden_size), and ``module.log_probs(ids, state)`` the
    natural-log distribution of the next token at every position, the adaptive softmax's
    included. Its state_dict has the model's names; a tied model's decoder uses the
    embedding's Parameter. Needs torch."""
    torch = import_torch()
    from fastlm._torch_twin import TorchLM

    module = TorchLM(
        model.vocab_size,
        model.embed_dim,
        model.hidden_size,
        model.num_layers,
        cutoffs=model.cutoffs,
        div_value=model.div_value,
        head_bias=model.head_bias,
        tie_weights=model.tie_weights,
        dropout=model.dropout,
    )
    weights = {name: torch.from_numpy(value.copy()) for name, value in model.reading_params().items()}
    module.load_state_dict(weights, strict=True)
    return module.eval()


def from_torch(cls, module, **options):
    """A new model holding the weights of a PyTorch language model (see torch_convert).

    module: a ``torch.nn.Module`` made of one Embedding, one (unidirectional) LSTM and one
    decoder, a Linear (hidden_size -> vocab_size) or an AdaptiveLogSoftmaxWithLoss, under any
    attribute names; or its state_dict with fastlm's or word_language_model's names
    (``encoder.weight``, ``rnn.weight_ih_l0``, ..., ``decoder.weight``, ``decoder.bias``).
    A decoder sharing the embedding's tensor makes a tied model; a missing bias (bias=False)
    is zeros; dropout is the module's (nn.Dropout's p, else the LSTM's). options: further
    constructor arguments (backend, seed, dropout, ...), which take precedence.
    """
    if isinstance(module, Mapping):
        config, state = _from_state_dict(module, options.get("div_value"))
    elif hasattr(module, "named_modules") and hasattr(module, "state_dict"):
        config, state = _from_module(module)
    else:
        raise TypeError(f"module must be a torch.nn.Module or a state_dict, got {type(module).__name__}")
    model = cls(**{**config, **options})
    model.load_state_dict(state)
    return model


# ------------------------------------------------------------------ from a module


def _one(found, what, module):
    if len(found) != 1:
        names = ", ".join(repr(name) for name, _ in found) or "none"
        raise ValueError(
            f"{type(module).__name__} must hold exactly one {what} to convert, found {len(found)}: {names}"
        )
    return found[0]


def _from_module(module):
    torch = import_torch()
    nn = torch.nn
    parts = list(module.named_modules())
    recurrent = [(name, m) for name, m in parts if isinstance(m, (nn.RNNBase, nn.LSTMCell, nn.GRUCell, nn.RNNCell))]
    for name, m in recurrent:
        if type(m) is not nn.LSTM:
            raise ValueError(f"{name or 'the module'} is a {type(m).__name__}: fastlm models are LSTMs (nn.LSTM)")
    _, lstm = _one(recurrent, "LSTM", module)
    if lstm.bidirectional or lstm.proj_size:
        raise ValueError("fastlm's LSTM is unidirectional and without projection (bidirectional=False, proj_size=0)")
    _, embedding = _one([(n, m) for n, m in parts if isinstance(m, nn.Embedding)], "Embedding", module)
    if embedding.max_norm is not None:
        raise ValueError("the Embedding renormalises its rows (max_norm), which fastlm's embedding does not")
    adaptives = [(n, m) for n, m in parts if isinstance(m, nn.AdaptiveLogSoftmaxWithLoss)]
    V, E = embedding.weight.shape
    H, L = lstm.hidden_size, lstm.num_layers
    if lstm.input_size != E:
        raise ValueError(f"the LSTM's input_size {lstm.input_size} differs from the Embedding's width {E}")
    state = {"embedding.weight": embedding.weight}
    for k in range(L):
        for kind in LSTM_KINDS:
            value = getattr(lstm, f"{kind}_l{k}", None)
            state[f"lstm.{kind}_l{k}"] = value if value is not None else torch.zeros(4 * H)
    dropouts = [m.p for m in module.modules() if isinstance(m, nn.Dropout)]
    dropout = float(dropouts[0] if dropouts else lstm.dropout)
    config = dict(vocab_size=V, embed_dim=E, hidden_size=H, num_layers=L, dropout=dropout)
    if adaptives:
        _, decoder = _one(adaptives, "AdaptiveLogSoftmaxWithLoss", module)
        if decoder.in_features != H or decoder.n_classes != V:
            raise ValueError(
                f"the adaptive softmax maps {decoder.in_features} -> {decoder.n_classes}, the model "
                f"needs hidden_size {H} -> vocab_size {V}"
            )
        config.update(cutoffs=list(decoder.cutoffs[:-1]), div_value=float(decoder.div_value))
        config.update(head_bias=bool(decoder.head_bias))
        state.update({f"decoder.{name}": value for name, value in decoder.state_dict().items()})
        return config, state
    _, decoder = _one(
        [(n, m) for n, m in parts if isinstance(m, nn.Linear) and (m.in_features, m.out_features) == (H, V)],
        f"Linear({H}, {V}) decoder",
        module,
    )
    tied = decoder.weight is embedding.weight or decoder.weight.data_ptr() == embedding.weight.data_ptr()
    state["decoder.weight"] = decoder.weight
    state["decoder.bias"] = decoder.bias if decoder.bias is not None else torch.zeros(V)
    if tied:
        config["tie_weights"] = True
    return config, state


# ------------------------------------------------------------------ from a state_dict


def _array(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _shares_memory(a, b):
    if hasattr(a, "data_ptr") and hasattr(b, "data_ptr"):
        return a.data_ptr() == b.data_ptr()
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.shares_memory(a, b)


def _pick(state, names, what):
    found = [name for name in names if name in state]
    if not found:
        shown = ", ".join(sorted(map(str, state))[:12]) or "nothing"
        raise KeyError(f"state_dict has no {what} (looked for {' or '.join(names)}); it holds {shown}")
    return found[0]


def _from_state_dict(state, div_value=None):
    embedding_name = _pick(state, EMBEDDING_NAMES, "embedding")
    prefix = next((p for p in LSTM_PREFIXES if f"{p}weight_ih_l0" in state), None)
    if prefix is None:
        raise KeyError(
            f"state_dict has no LSTM weights (looked for {' or '.join(p + 'weight_ih_l0' for p in LSTM_PREFIXES)})"
        )
    V, E = _array(state[embedding_name]).shape
    four_h, H = _array(state[f"{prefix}weight_hh_l0"]).shape
    if four_h != 4 * H:
        raise ValueError(
            f"{prefix}weight_hh_l0 has shape {(four_h, H)}: an LSTM's is (4 * hidden_size, hidden_size) "
            "(a GRU's has 3 gates, fastlm models are LSTMs)"
        )
    L = 0
    while f"{prefix}weight_ih_l{L}" in state:
        L += 1
    out = {"embedding.weight": state[embedding_name]}
    for k in range(L):
        for kind in LSTM_KINDS:
            name = f"{prefix}{kind}_l{k}"
            out[f"lstm.{kind}_l{k}"] = state[name] if name in state else np.zeros(4 * H, np.float32)
    config = dict(vocab_size=V, embed_dim=E, hidden_size=H, num_layers=L)
    if "decoder.head.weight" in state:
        n = 0
        while f"decoder.tail.{n}.0.weight" in state:
            n += 1
        head_rows = _array(state["decoder.head.weight"]).shape[0]
        sizes = [_array(state[f"decoder.tail.{i}.1.weight"]).shape[0] for i in range(n)]
        cutoffs = list(np.cumsum([head_rows - n, *sizes[:-1]]).tolist())
        widths = [_array(state[f"decoder.tail.{i}.0.weight"]).shape[0] for i in range(n)]
        if div_value is None:
            div_value = _div_value(H, widths)
        config.update(cutoffs=cutoffs, div_value=div_value, head_bias="decoder.head.bias" in state)
        out.update({name: value for name, value in state.items() if name.startswith("decoder.")})
        return config, out
    weight = state[_pick(state, ("decoder.weight",), "decoder")]
    out["decoder.weight"] = weight
    out["decoder.bias"] = state["decoder.bias"] if "decoder.bias" in state else np.zeros(V, np.float32)
    if _shares_memory(weight, state[embedding_name]):
        config["tie_weights"] = True
    return config, out


def _div_value(hidden_size, widths):
    """The div_value torch used for tail projections of these widths (int(H // d ** (i + 1))):
    the shortest decimal that gives them all, since a state_dict does not say."""
    low = max((hidden_size / (w + 1)) ** (1 / (i + 1)) for i, w in enumerate(widths))
    high = min((hidden_size / w) ** (1 / (i + 1)) for i, w in enumerate(widths))
    for digits in range(7):
        step = 10.0**-digits
        for candidate in (round(math.floor(high / step) * step, digits), round(math.ceil(low / step) * step, digits)):
            if candidate > 1 and adaptive.tail_widths(hidden_size, candidate, len(widths)) == widths:
                return candidate
    raise ValueError(
        f"no div_value gives the adaptive softmax's projection widths {widths} for hidden_size {hidden_size}; "
        "pass the module itself (or div_value=...)"
    )
