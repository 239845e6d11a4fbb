"""The LSTM language model: Embedding -> LSTM layers -> Linear, mean cross-entropy.

Parameters live in PyTorch's names, shapes and gate order (see DESIGN.md), so a
``torch.nn`` model's ``state_dict`` loads unchanged. Forward and backward are composed
from a handful of coarse kernels per batch (one call per layer), run either by the C++
core (``backend="cpp"``) or by the NumPy reference (``backend="numpy"``).
"""
from __future__ import annotations

import math

import numpy as np

from fastlm import reference

BACKENDS = ("cpp", "numpy")


def _backend_ops(backend):
    if backend == "cpp":
        from fastlm import _core
        return _core
    if backend == "numpy":
        return reference
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def check_ids(name, ids, vocab_size, ndim):
    """Token ids as a C-contiguous int32 array of the given ndim, each in [0, vocab_size)."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError(f"{name} is empty (shape {ids.shape})")
    low, high = ids.min(), ids.max()
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds id {bad}, outside the vocabulary [0, {vocab_size})")
    return np.ascontiguousarray(ids, dtype=np.int32)


class LSTMLM:
    """Word- or character-level LSTM language model.

    Exactly ``Embedding(V, E) -> LSTM(E, H, num_layers=L, batch_first=True) -> Linear(H, V)``
    with mean cross-entropy over all positions. Dropout, when > 0, applies between LSTM
    layers and before the decoder, in training only.
    """

    def __init__(self, vocab_size, embed_dim=128, hidden_size=128, num_layers=1, dropout=0.0, seed=0,
                 backend="cpp"):
        self.vocab_size = _positive_int("vocab_size", vocab_size)
        self.embed_dim = _positive_int("embed_dim", embed_dim)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.seed = int(seed)
        self.backend = backend
        self._ops = _backend_ops(backend)
        self._rng = np.random.default_rng(self.seed)
        self._params = self._initial_parameters()

    # ------------------------------------------------------------ parameters

    def parameter_shapes(self):
        """Name -> shape of every parameter, in state_dict order."""
        V, E, H = self.vocab_size, self.embed_dim, self.hidden_size
        shapes = {"embedding.weight": (V, E)}
        for k in range(self.num_layers):
            width = E if k == 0 else H
            shapes[f"lstm.weight_ih_l{k}"] = (4 * H, width)
            shapes[f"lstm.weight_hh_l{k}"] = (4 * H, H)
            shapes[f"lstm.bias_ih_l{k}"] = (4 * H,)
            shapes[f"lstm.bias_hh_l{k}"] = (4 * H,)
        shapes["decoder.weight"] = (V, H)
        shapes["decoder.bias"] = (V,)
        return shapes

    def _initial_parameters(self):
        """PyTorch's default initialisation: N(0, 1) embeddings, U(-1/sqrt(H), 1/sqrt(H)) elsewhere."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        params = {}
        for name, shape in self.parameter_shapes().items():
            if name == "embedding.weight":
                values = self._rng.standard_normal(shape, dtype=np.float32)
            else:
                values = self._rng.random(shape, dtype=np.float32)
                values *= np.float32(2.0 * bound)
                values -= np.float32(bound)
            params[name] = values
        return params

    def state_dict(self):
        """Copies of all parameters keyed by PyTorch's names."""
        return {name: value.copy() for name, value in self._params.items()}

    def load_state_dict(self, state):
        """Replace all parameters; names, shapes and finiteness are checked before anything changes.

        Values may be NumPy arrays or CPU torch tensors.
        """
        expected = self.parameter_shapes()
        missing = [name for name in expected if name not in state]
        extra = [name for name in state if name not in expected]
        if missing:
            raise KeyError(f"state_dict is missing {', '.join(map(repr, missing))}")
        if extra:
            raise KeyError(f"state_dict has unexpected entries {', '.join(map(repr, extra))}")
        loaded = {}
        for name, shape in expected.items():
            value = state[name]
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if value.dtype.kind != "f":
                raise TypeError(f"state_dict entry {name!r} must hold floats, got dtype {value.dtype}")
            if value.shape != shape:
                raise ValueError(f"state_dict entry {name!r} has shape {value.shape}, expected {shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"state_dict entry {name!r} holds NaN or infinity")
            loaded[name] = np.array(value, dtype=np.float32, order="C")
        self._params = loaded

    # ------------------------------------------------------------ forward + backward

    def gradients(self, inputs, targets, train=False):
        """Mean cross-entropy of predicting targets from inputs, and its gradient.

        inputs, targets: (B, T) integer token ids. Returns (loss, grads) with grads keyed
        like state_dict. The initial state is zero. With train=True dropout is applied
        (masks drawn from the model's seeded generator); otherwise the function is
        deterministic and equal to PyTorch's module in eval mode.
        """
        x, y = self.check_batch(inputs, targets)
        loss, grads, _ = self._forward_backward(x, y, train=train)
        return loss, grads

    def check_batch(self, inputs, targets):
        x = check_ids("inputs", inputs, self.vocab_size, 2)
        y = check_ids("targets", targets, self.vocab_size, 2)
        if x.shape != y.shape:
            raise ValueError(f"inputs and targets must have the same shape, got {x.shape} and {y.shape}")
        return x, y

    def _dropout(self, values, train):
        """Inverted dropout: returns (dropped values, mask) or (values, None) when inactive."""
        if not train or self.dropout == 0.0:
            return values, None
        keep = 1.0 - self.dropout
        mask = (self._rng.random(values.shape, dtype=np.float32) < keep).astype(np.float32) / np.float32(keep)
        return values * mask, mask

    def _forward_backward(self, x, y, initial_state=None, train=False):
        """Loss, gradients and the final (h, c) of every layer for one batch of checked ids."""
        ops, p = self._ops, self._params
        B, T = x.shape
        H, V = self.hidden_size, self.vocab_size
        zeros = np.zeros((B, H), dtype=np.float32)

        layer_input = ops.embedding_forward(p["embedding.weight"], x)
        tape = []  # what each layer's backward needs
        for k in range(self.num_layers):
            mask = None
            if k > 0:
                layer_input, mask = self._dropout(layer_input, train)
            h0, c0 = initial_state[k] if initial_state is not None else (zeros, zeros)
            w_ih, w_hh = p[f"lstm.weight_ih_l{k}"], p[f"lstm.weight_hh_l{k}"]
            hs, cs, gates = ops.lstm_forward(layer_input, w_ih, w_hh, p[f"lstm.bias_ih_l{k}"],
                                             p[f"lstm.bias_hh_l{k}"], h0, c0)
            tape.append((layer_input, mask, h0, c0, hs, cs, gates))
            layer_input = hs
        top, top_mask = self._dropout(layer_input, train)

        rows, row_targets = top.reshape(B * T, H), y.reshape(B * T)
        weight, bias = p["decoder.weight"], p["decoder.bias"]
        loss, lse, _ = ops.output_loss_forward(rows, weight, bias, row_targets)
        dh, dweight, dbias = ops.output_loss_backward(rows, weight, bias, row_targets, lse)

        grads = {"decoder.weight": dweight, "decoder.bias": dbias}
        dhs = dh.reshape(B, T, H)
        if top_mask is not None:
            dhs = dhs * top_mask
        for k in reversed(range(self.num_layers)):
            layer_input, mask, h0, c0, hs, cs, gates = tape[k]
            dx, dw_ih, dw_hh, db, _, _ = ops.lstm_backward(dhs, None, None, layer_input, p[f"lstm.weight_ih_l{k}"],
                                                           p[f"lstm.weight_hh_l{k}"], h0, c0, hs, cs, gates)
            grads[f"lstm.weight_ih_l{k}"] = dw_ih
            grads[f"lstm.weight_hh_l{k}"] = dw_hh
            grads[f"lstm.bias_ih_l{k}"] = db
            grads[f"lstm.bias_hh_l{k}"] = db.copy()  # both biases are parameters in their own right
            dhs = dx * mask if mask is not None else dx
        grads["embedding.weight"] = ops.embedding_backward(dhs, x, V)

        final_state = [(hs[:, -1].copy(), cs[:, -1].copy()) for (_, _, _, _, hs, cs, _) in tape]
        ordered = {name: grads[name] for name in self._params}
        return float(loss), ordered, final_state
