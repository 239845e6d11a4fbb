"""The LSTM language model's network: Embedding -> LSTM layers -> Linear, mean cross-entropy,
with evaluation and generation. Training is fastlm.training, files are fastlm.model_dir, and
fastlm.lstmlm puts the three together as the class users hold, LSTMLM.

Parameters live in PyTorch's names, shapes and gate order (see docs/DESIGN.md), so a
``torch.nn`` model's ``state_dict`` loads unchanged. Forward and backward are composed
from a handful of coarse kernels per batch (one call per layer), run either by the C++
core (``backend="cpp"``) or by the NumPy reference (``backend="numpy"``).

With tie_weights=True the embedding and the decoder share one (V, H) matrix (Press & Wolf
2017; Inan et al. 2017): ``params`` holds it under both names as one array, so every reader
of either name sees it, while ``trainable()`` lists it once, for the optimizer to step it
once with the gradients of both uses summed.
"""

from __future__ import annotations

import collections.abc
import contextlib
import math
import os
import threading
import warnings

import numpy as np

from fastlm import _core, adaptive, onnx_export, reference, scoring, streaming, torch_convert
from fastlm.checks import (
    check_bool,
    check_choice,
    check_ids,
    check_int,
    check_number,
    check_str,
    check_tokenizer,
    shown,
)
from fastlm.token_file import check_corpus

BACKENDS = ("cpp", "numpy")
MAX_SAMPLING_SEED = 2**64 - 1  # generate, stream and their kind: the seed is the kernels' uint64
# The settings config() always writes (the others only when they are on).
SAVED_SETTINGS = ("vocab_size", "embed_dim", "hidden_size", "num_layers", "dropout", "seed")


def _backend_ops(backend):
    return _core if check_choice("backend", backend, BACKENDS) == "cpp" else reference


def parameter_count(vocab_size, embed_dim, hidden_size, num_layers):
    """Number of float32 parameters of an LSTMLM of these sizes (by formula, nothing allocated)."""
    V, E, H, L = vocab_size, embed_dim, hidden_size, num_layers
    lstm = 4 * H * E + (L - 1) * 4 * H * H + L * (4 * H * H + 8 * H)
    return V * E + lstm + V * H + V


def iter_parameter_shapes(vocab_size, embed_dim, hidden_size, num_layers, decoder_shapes=None):
    """(name, shape) of every parameter of an LSTMLM of these sizes, in state_dict order, lazily;
    decoder_shapes: an adaptive decoder's (adaptive.decoder_shapes), None for the full Linear."""
    V, E, H = vocab_size, embed_dim, hidden_size
    yield "embedding.weight", (V, E)
    for k in range(num_layers):
        yield f"lstm.weight_ih_l{k}", (4 * H, E if k == 0 else H)
        yield f"lstm.weight_hh_l{k}", (4 * H, H)
        yield f"lstm.bias_ih_l{k}", (4 * H,)
        yield f"lstm.bias_hh_l{k}", (4 * H,)
    if decoder_shapes is not None:
        yield from decoder_shapes.items()
    else:
        yield "decoder.weight", (V, H)
        yield "decoder.bias", (V,)


def _all_finite(values, chunk=1 << 20):
    """No NaN or infinity in values, checked a slice at a time: np.isfinite of a whole
    embedding matrix would allocate a quarter of its size again."""
    flat = values.reshape(-1)
    return all(np.isfinite(flat[i : i + chunk]).all() for i in range(0, flat.size, chunk))


def physical_memory():
    """Bytes of RAM of this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_model_size(vocab_size, embed_dim, hidden_size, num_layers):
    """Sizes whose parameters cannot fit in memory are a ValueError before anything is allocated
    (num_layers=2**31 would otherwise grow until the machine swaps or kills the process)."""
    count = parameter_count(vocab_size, embed_dim, hidden_size, num_layers)
    memory = physical_memory()
    if memory is not None and 4 * count > memory:
        sizes = dict(vocab_size=vocab_size, embed_dim=embed_dim, hidden_size=hidden_size, num_layers=num_layers)
        raise ValueError(
            f"{', '.join(f'{k}={shown(v)}' for k, v in sizes.items())} make {_amount(count)} parameters "
            f"({_gib(4 * count)} as float32), more than this machine's memory ({_gib(memory)})"
        )
    return count


def _amount(n):
    """An integer with thousands separators; one beyond reading, by its number of digits."""
    return f"{n:,}" if n.bit_length() <= 128 else shown(n)


def _gib(nbytes):
    """A byte count in GiB; one beyond a float's range as a power of two (sizes a caller can
    pass, such as hidden_size=10**400, make such counts)."""
    try:
        return f"{nbytes / 2**30:,.1f} GiB"
    except OverflowError:
        return f"more than 2**{nbytes.bit_length() - 31} GiB"


def _check_recipe_options(tie_weights, init_range, embed_dim, hidden_size, cutoffs):
    """(tie_weights, init_range) checked: the decoder can share the embedding only when both are (V, H)."""
    tie_weights = check_bool("tie_weights", tie_weights)
    if tie_weights and embed_dim != hidden_size:
        raise ValueError(
            f"tie_weights=True shares the embedding matrix with the decoder, which needs "
            f"embed_dim == hidden_size; got embed_dim={embed_dim}, hidden_size={hidden_size}"
        )
    if tie_weights and cutoffs is not None:
        raise ValueError(
            "tie_weights=True needs the full softmax decoder: the adaptive softmax (cutoffs) has "
            "no (vocab_size, hidden_size) matrix to share with the embedding"
        )
    return tie_weights, check_number("init_range", init_range, "(0, inf)", allow_none=True)


def _non_empty_prompt(prompt_ids):
    """prompt_ids as an array, ValueError when it holds no id (session and generate)."""
    prompt = np.asarray(prompt_ids)
    if prompt.size == 0:
        raise ValueError("the prompt is empty: generation starts from at least one token id")
    return prompt


class LSTMNetwork:
    """The network of fastlm.LSTMLM, without training and files (see LSTMLM for the user's view).

    Exactly ``Embedding(V, E) -> LSTM(E, H, num_layers=L, batch_first=True) -> Linear(H, V)``
    with mean cross-entropy over all positions. Dropout, when > 0, applies to the input of
    every LSTM layer (the embedding output included) and before the decoder, in training
    only, as in Zaremba et al. (2014) and PyTorch's word-language-model example. With
    cutoffs the decoder is ``torch.nn.AdaptiveLogSoftmaxWithLoss(H, V, cutoffs, div_value,
    head_bias)`` instead. tie_weights: the decoder uses the embedding matrix (needs
    embed_dim == hidden_size). init_range: None for PyTorch's default initialisation, or r
    for every parameter uniform in [-r, r] (the recipes' choice).

    Internal interface, for the rest of the package (training, benchmarks, tests) and not
    promised to users: ``params`` (name -> float32 C-contiguous array in state_dict order;
    a tied decoder.weight is the embedding.weight array), ``trainable()`` (the distinct
    parameters, which optimizers update in place), ``ops`` (the kernels: fastlm._core or
    fastlm.reference, same signatures), ``forward`` and ``forward_backward`` (one checked batch:
    see check_batch).

    Threads: evaluate, generate, stream, log_probs, score and the rest read the weights
    through reading_params(), and fit trains on its own copy (training_snapshot()), so any
    number of threads may read while one trains: they see the weights as they were when fit
    started, never a half-updated mix.
    """

    def __init__(
        self,
        vocab_size,
        embed_dim=128,
        hidden_size=128,
        num_layers=1,
        dropout=0.0,
        seed=0,
        backend="cpp",
        cutoffs=None,
        div_value=4.0,
        head_bias=False,
        tie_weights=False,
        init_range=None,
        *,
        _weights=None,
    ):
        self.vocab_size = check_int("vocab_size", vocab_size, 1)
        self.embed_dim = check_int("embed_dim", embed_dim, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self.num_layers = check_int("num_layers", num_layers, 1)
        check_model_size(self.vocab_size, self.embed_dim, self.hidden_size, self.num_layers)
        self.dropout = check_number("dropout", dropout, "[0, 1)")
        self.seed = check_int("seed", seed, 0)
        self.cutoffs, self.div_value, self.head_bias = adaptive.check_adaptive(
            cutoffs, div_value, head_bias, self.vocab_size, self.hidden_size
        )
        self.tie_weights, self.init_range = _check_recipe_options(
            tie_weights, init_range, self.embed_dim, self.hidden_size, self.cutoffs
        )
        self.backend = backend
        self.ops = _backend_ops(backend)
        self._rng = np.random.default_rng(self.seed)
        # _weights: see with_weights; otherwise the random initialisation.
        self.params = self._initial_parameters() if _weights is None else self._checked_weights(_weights, copy=False)
        self.tokenizer = None  # attached by fastlm.load or by the user, for text in / text out
        self._params_lock = threading.Lock()
        self._snapshot = None  # while fit runs: the weights as they were when it started
        self._training_thread = None

    @classmethod
    def with_weights(cls, config, weights, backend="cpp"):
        """A model of config (the constructor's keyword arguments, as config() gives them)
        with the parameters weights (name -> array, as load_state_dict takes them), never
        drawing the random initialisation: fastlm.load reads a file's tensors into fresh
        float32 arrays and the model takes those very arrays over (no copy where they are
        already C-contiguous, writeable float32), so that loading holds one model's memory
        at its peak, not two. The checks are load_state_dict's."""
        return cls(**config, backend=backend, _weights=weights)

    # ------------------------------------------------------------ parameters

    def parameter_shapes(self):
        """Name -> shape of every parameter, in state_dict order."""
        decoder = (
            None
            if self.cutoffs is None
            else adaptive.decoder_shapes(
                self.vocab_size, self.hidden_size, self.cutoffs, self.div_value, self.head_bias
            )
        )
        return dict(iter_parameter_shapes(self.vocab_size, self.embed_dim, self.hidden_size, self.num_layers, decoder))

    @classmethod
    def saved_shapes(cls, config):
        """(name, shape) of every parameter a saved config (the constructor's keyword arguments)
        implies, lazily, after checking the sizes as the constructor does but without allocating
        anything: a file's reader stops at the first name it lacks, so that a config claiming
        10**9 layers fails before 4 * 10**9 names are listed."""
        if not isinstance(config, dict):
            raise TypeError(f"the model section must be a mapping, got {type(config).__name__}")
        known = {
            "vocab_size",
            "embed_dim",
            "hidden_size",
            "num_layers",
            "dropout",
            "seed",
            "cutoffs",
            "div_value",
            "head_bias",
            "tie_weights",
            "init_range",
        }
        unknown = sorted(set(config) - known)
        if unknown:
            raise TypeError(f"unexpected model settings {', '.join(map(repr, unknown))}")
        # What config() always writes: a default in place of a missing one would build another
        # model than the one saved (and blame its weights for the difference).
        missing = [name for name in SAVED_SETTINGS if name not in config]
        if missing:
            raise ValueError(f"it lacks {', '.join(map(repr, missing))}")
        V, E, H, L = (
            check_int(name, config[name], 1) for name in ("vocab_size", "embed_dim", "hidden_size", "num_layers")
        )
        check_model_size(V, E, H, L)
        check_number("dropout", config["dropout"], "[0, 1)")
        check_int("seed", config["seed"], 0)
        cutoffs, div_value, head_bias = adaptive.check_adaptive(
            config.get("cutoffs"), config.get("div_value", 4.0), config.get("head_bias", False), V, H
        )
        _check_recipe_options(config.get("tie_weights", False), config.get("init_range"), E, H, cutoffs)
        decoder = None if cutoffs is None else adaptive.decoder_shapes(V, H, cutoffs, div_value, head_bias)
        return iter_parameter_shapes(V, E, H, L, decoder)

    def _initial_parameters(self):
        """PyTorch's default initialisation: N(0, 1) embeddings, U(-1/sqrt(H), 1/sqrt(H)) elsewhere
        (U(-1/sqrt(d), 1/sqrt(d)) for an adaptive tail's second Linear, whose inputs are d wide);
        or, with init_range r, U(-r, r) everywhere. A tied decoder takes the embedding's matrix,
        as PyTorch's tied module does (its own draw is discarded, so the other parameters do
        not depend on tying)."""
        params = {}
        for name, shape in self.parameter_shapes().items():
            if name == "embedding.weight" and self.init_range is None:
                values = self._rng.standard_normal(shape, dtype=np.float32)
            else:
                fan_in = shape[1] if name.endswith(".1.weight") else self.hidden_size
                bound = 1.0 / math.sqrt(fan_in) if self.init_range is None else self.init_range
                values = self._rng.random(shape, dtype=np.float32)
                values *= np.float32(2.0 * bound)
                values -= np.float32(bound)
            params[name] = values
        return self._tie(params)

    def _tie(self, params):
        if self.tie_weights:
            params["decoder.weight"] = params["embedding.weight"]
        return params

    def trainable(self):
        """The distinct parameters, by name, in state_dict order: a tied decoder.weight is embedding.weight."""
        if not self.tie_weights:
            return self.params
        return {name: value for name, value in self.params.items() if name != "decoder.weight"}

    def state_dict(self):
        """Copies of all parameters keyed by PyTorch's names (tied: both names, equal values)."""
        return {name: value.copy() for name, value in self.reading_params().items()}

    def load_state_dict(self, state):
        """Replace all parameters; names, shapes and finiteness are checked before anything changes.

        Values may be NumPy arrays or CPU torch tensors. A tied model needs equal
        embedding.weight and decoder.weight, as a tied PyTorch module's state_dict has them.
        """
        self.params = self._checked_weights(state, copy=True)

    def take_weights(self, weights):
        """load_state_dict for arrays no one else holds (model_dir reads them fresh from a
        file): the same checks, and the float32 C-contiguous writeable arrays are taken over
        instead of copied, so that replacing the weights never holds three copies."""
        self.params = self._checked_weights(weights, copy=False)

    def _checked_weights(self, state, copy):
        """state's parameters as float32 C-contiguous arrays, checked (names, shapes, dtype,
        finiteness after the cast, tied equality) and tied. copy=False takes over the arrays
        that are already float32, C-contiguous and writeable instead of copying them."""
        if not isinstance(state, collections.abc.Mapping):
            raise TypeError(f"state_dict must be a mapping of parameter names to arrays, got {type(state).__name__}")
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
            with np.errstate(over="ignore"):  # float64 beyond float32's range: reported just below
                if copy:
                    value = np.array(value, dtype=np.float32, order="C")
                else:
                    value = np.require(value, np.float32, ["C_CONTIGUOUS", "WRITEABLE", "ALIGNED"])
            if not _all_finite(value):
                raise ValueError(f"state_dict entry {name!r} holds NaN or infinity (or a value beyond float32's range)")
            loaded[name] = value
        if self.tie_weights and not np.array_equal(loaded["embedding.weight"], loaded["decoder.weight"]):
            raise ValueError(
                "this model ties its weights, but the state_dict's embedding.weight and "
                "decoder.weight differ (it comes from an untied model)"
            )
        return self._tie(loaded)

    def reading_params(self):
        """The parameters a reader uses: while fit runs in another thread, the weights as they
        were when it started (fit updates a copy); otherwise params itself."""
        with self._params_lock:
            if self._snapshot is not None and threading.get_ident() != self._training_thread:
                return self._snapshot
            return self.params

    @contextlib.contextmanager
    def training_snapshot(self):
        """For fit: train on a private copy of the weights while other threads keep reading
        the weights as they were; one fit at a time (RuntimeError for a second one)."""
        with self._params_lock:
            if self._training_thread is not None:
                raise RuntimeError("fit is already running on this model in another thread: one fit at a time")
            self._snapshot = self.params
            self.params = self._tie({name: value.copy() for name, value in self.params.items()})
            self._training_thread = threading.get_ident()
        try:
            yield
        finally:
            with self._params_lock:
                self._snapshot = None
                self._training_thread = None

    # ------------------------------------------------------------ copies

    def __getstate__(self):
        """What pickle, copy.deepcopy and multiprocessing carry: the weights (while fit runs in
        another thread, as they were when it started: a consistent snapshot), the settings, the
        tokenizer and the random generator's state. Not the kernels' module, the lock or fit's
        bookkeeping: the copy gets its own (see __setstate__), so no lock is shared and no fit
        seems to run on it."""
        state = dict(self.__dict__)
        state["params"] = self.reading_params()
        for name in ("ops", "_params_lock", "_snapshot", "_training_thread"):
            state.pop(name)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.params = self._tie(dict(self.params))
        self.ops = _backend_ops(self.backend)
        self._params_lock = threading.Lock()
        self._snapshot = None
        self._training_thread = None

    # ------------------------------------------------------------ forward + backward

    def gradients(self, inputs, targets, train=False):
        """Mean cross-entropy of predicting targets from inputs, and its gradient.

        inputs, targets: (B, T) integer token ids. Returns (loss, grads) with grads keyed
        like state_dict. The initial state is zero. With train=True dropout is applied
        (masks drawn from the model's seeded generator); otherwise the function is
        deterministic and equal to PyTorch's module in eval mode.
        """
        x, y = self.check_batch(inputs, targets)
        loss, grads, _ = self.forward_backward(x, y, train=train)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss}: the model's logits overflow float32 (NaN or infinity)")
        if self.tie_weights:  # keyed like state_dict: both names carry the shared matrix's gradient
            grads = {
                name: grads["embedding.weight"].copy() if name == "decoder.weight" else grads[name]
                for name in self.params
            }
        return loss, grads

    def check_batch(self, inputs, targets):
        x = check_ids("inputs", inputs, self.vocab_size, 2)
        y = check_ids("targets", targets, self.vocab_size, 2)
        if x.shape != y.shape:
            raise ValueError(f"inputs and targets must have the same shape, got {x.shape} and {y.shape}")
        return x, y

    def _dropout(self, values, rng):
        """Inverted dropout with masks from rng: (dropped values, mask), or (values, None) when off."""
        if rng is None or self.dropout == 0.0:
            return values, None
        keep = 1.0 - self.dropout
        mask = (rng.random(values.shape, dtype=np.float32) < keep).astype(np.float32) / np.float32(keep)
        return values * mask, mask

    def _lstm_forward(self, x, initial_state, rng, params=None):
        """Embedding and LSTM layers: the top layer's (B*T, H) rows and what backward needs.

        rng draws the dropout masks in training; None runs without dropout. params: the
        weights to use (default: self.params).
        """
        ops, p = self.ops, self.params if params is None else params
        B, T = x.shape
        zeros = np.zeros((B, self.hidden_size), dtype=np.float32)
        layer_input = ops.embedding_forward(p["embedding.weight"], x)
        tape = []  # what each layer's backward needs
        for k in range(self.num_layers):
            layer_input, mask = self._dropout(layer_input, rng)
            h0, c0 = initial_state[k] if initial_state is not None else (zeros, zeros)
            hs, cs, gates = ops.lstm_forward(
                layer_input,
                p[f"lstm.weight_ih_l{k}"],
                p[f"lstm.weight_hh_l{k}"],
                p[f"lstm.bias_ih_l{k}"],
                p[f"lstm.bias_hh_l{k}"],
                h0,
                c0,
            )
            tape.append((layer_input, mask, h0, c0, hs, cs, gates))
            layer_input = hs
        top, top_mask = self._dropout(layer_input, rng)
        return top.reshape(B * T, self.hidden_size), top_mask, tape

    def _lstm_backward(self, x, dh, top_mask, tape, grads, sparse_embedding=False):
        """From the gradient of the top rows down to the embedding; fills grads (the
        embedding's as (rows, values) of the ids used when sparse_embedding)."""
        ops, p = self.ops, self.params
        dhs = dh.reshape(*x.shape, self.hidden_size)
        if top_mask is not None:
            dhs = dhs * top_mask
        for k in reversed(range(self.num_layers)):
            layer_input, mask, h0, c0, hs, cs, gates = tape[k]
            dx, dw_ih, dw_hh, db, _, _ = ops.lstm_backward(
                dhs,
                None,
                None,
                layer_input,
                p[f"lstm.weight_ih_l{k}"],
                p[f"lstm.weight_hh_l{k}"],
                h0,
                c0,
                hs,
                cs,
                gates,
            )
            grads[f"lstm.weight_ih_l{k}"] = dw_ih
            grads[f"lstm.weight_hh_l{k}"] = dw_hh
            grads[f"lstm.bias_ih_l{k}"] = db
            grads[f"lstm.bias_hh_l{k}"] = db.copy()  # both biases are parameters in their own right
            dhs = dx * mask if mask is not None else dx
        if sparse_embedding:
            grads["embedding.weight"] = ops.embedding_backward_sparse(dhs, x)
        else:
            grads["embedding.weight"] = ops.embedding_backward(dhs, x, self.vocab_size)
        if self.tie_weights:  # one matrix used twice: its gradient is the sum of both uses'
            grads["embedding.weight"] += grads.pop("decoder.weight")

    @staticmethod
    def _final_state(tape):
        return [(hs[:, -1].copy(), cs[:, -1].copy()) for (_, _, _, _, hs, cs, _) in tape]

    def forward(self, x, y, initial_state=None):
        """Evaluation of one checked batch: mean loss, (B, T) arg-max predictions and the final state."""
        p = self.params
        rows, _, tape = self._lstm_forward(x, initial_state, None)
        if self.cutoffs is not None:
            loss, _, predictions = self.ops.adaptive_loss_forward(
                rows, *adaptive.decoder_arguments(p, len(self.cutoffs)), y.reshape(-1)
            )
        else:
            loss, _, predictions = self.ops.output_loss_forward(
                rows, p["decoder.weight"], p["decoder.bias"], y.reshape(-1)
            )
        return float(loss), predictions.reshape(x.shape), self._final_state(tape)

    def forward_backward(self, x, y, initial_state=None, train=False, rng=None, sparse_embedding=False):
        """Loss, gradients (of trainable(), in state_dict order) and the final (h, c) of every layer for one batch.

        The state is carried forward but not differentiated through (truncated BPTT). The
        output layer runs forward and backward in one fused pass. sparse_embedding: the
        embedding's gradient is (rows, values), the distinct ids used and their summed gradient.
        """
        if train and rng is None:
            rng = self._rng
        p = self.params
        rows, top_mask, tape = self._lstm_forward(x, initial_state, rng if train else None)
        if self.cutoffs is not None:
            loss, dh, *decoder = self.ops.adaptive_loss_forward_backward(
                rows, *adaptive.decoder_arguments(p, len(self.cutoffs)), y.reshape(-1)
            )
            grads = adaptive.decoder_gradients(*decoder)
        else:
            loss, dh, dweight, dbias = self.ops.output_loss_forward_backward(
                rows, p["decoder.weight"], p["decoder.bias"], y.reshape(-1)
            )
            grads = {"decoder.weight": dweight, "decoder.bias": dbias}
        self._lstm_backward(x, dh, top_mask, tape, grads, sparse_embedding)
        return float(loss), {name: grads[name] for name in self.trainable()}, self._final_state(tape)

    def config(self):
        """The constructor arguments (without backend), as saved in config.json; the adaptive
        softmax's, tie_weights and init_range only when they are on, so that other configs read as before."""
        config = dict(
            vocab_size=self.vocab_size,
            embed_dim=self.embed_dim,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            dropout=self.dropout,
            seed=self.seed,
        )
        if self.cutoffs is not None:
            config.update(cutoffs=list(self.cutoffs), div_value=self.div_value, head_bias=self.head_bias)
        if self.tie_weights:
            config.update(tie_weights=True)
        if self.init_range is not None:
            config.update(init_range=self.init_range)
        return config

    # ------------------------------------------------------------ description

    def __repr__(self):
        """The constructor call that builds this model (config(), and a backend other than cpp)."""
        arguments = {**self.config(), **({"backend": self.backend} if self.backend != "cpp" else {})}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})"

    def summary(self, print_fn=print):
        """A table of the layers, as Keras's Model.summary: each layer's output shape (B batch
        rows, T time steps), its parameters' names and shapes, and the parameter counts (a tied
        decoder.weight is the embedding's matrix, counted once). Printed with print_fn;
        print_fn=None returns the table as a str instead."""
        if print_fn is not None and not callable(print_fn):
            raise TypeError(f"print_fn must be callable or None, got {print_fn!r}")
        shapes = self.parameter_shapes()
        groups = {}  # layer -> [(parameter name within it, shape)]
        for name, shape in shapes.items():
            if name.startswith("lstm."):
                kind, layer = name[len("lstm.") :].rsplit("_l", 1)
                groups.setdefault(f"lstm (layer {layer})", []).append((kind, shape))
            else:
                layer, _, kind = name.partition(".")
                groups.setdefault(layer, []).append((kind, shape))
        outputs = {"embedding": f"(B, T, {self.embed_dim})", "decoder": f"(B, T, {self.vocab_size})"}
        rows = [("Layer", "Output shape", "Param #", "Parameters")]
        total = 0
        for layer, params in groups.items():
            count, described = 0, []
            for kind, shape in params:
                tied = self.tie_weights and layer == "decoder" and kind == "weight"
                count += 0 if tied else math.prod(shape)
                described.append(f"{kind} {shape}" + (" tied to embedding.weight" if tied else ""))
            total += count
            output = outputs.get(layer, f"(B, T, {self.hidden_size})")
            rows.append((layer, output, f"{count:,}", ", ".join(described)))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip() for row in rows
        ]
        rule = "-" * max(map(len, lines))
        decoder = f"adaptive softmax, cutoffs {list(self.cutoffs)}" if self.cutoffs is not None else "softmax"
        head = [
            f"{type(self).__name__}: vocabulary {self.vocab_size:,}, {self.num_layers} LSTM layer(s), "
            f"dropout {self.dropout}, {decoder}"
        ]
        if self.tokenizer is not None:
            head.append(f"tokenizer: {self.tokenizer!r}")
        foot = f"Total parameters: {total:,} ({4 * total / 2**20:,.2f} MiB as float32)"
        table = "\n".join([*head, rule, lines[0], rule, *lines[1:], rule, foot])
        if print_fn is None:
            return table
        print_fn(table)
        return None

    # ------------------------------------------------------------ evaluation, generation

    def evaluate(self, data, y=None, seq_len=100, batch_size=32, top_k=5, streams=None):
        """Next-token metrics: loss (mean cross-entropy, nats), perplexity, accuracy (top-1),
        top_k_accuracy (the target among the top_k most likely), the macro precision, recall
        and f1 of the arg-max prediction over the tokens that occur as target or prediction,
        bits_per_token, and tokens (how many were scored).

        data: 1-D token ids. Every token after the first is scored, exactly: each with its
        full left context (the text is read as one stream in C++, the state carried from
        the first token to the last), so the result depends on neither batch_size nor
        seq_len. streams=N instead reads the text as N contiguous streams side by side, as
        PyTorch's word_language_model example evaluates (N is its eval_batch_size): faster,
        since each step of the recurrence then advances N tokens, but every stream starts
        from a zero state, so a token sees only the left context of its own stream (the
        first tokens of each stream score worse than they would in the text). Every token is
        still scored (the tokens left over continue the last stream).

        Or (N, T) windows data with targets y, batch_size rows at a time, each from a zero
        state. seq_len is accepted for compatibility; no result depends on it.
        """
        check_int("seq_len", seq_len, 1)
        batch_size = check_int("batch_size", batch_size, 1)
        top_k = check_int("top_k", top_k, 1)
        streams = check_int("streams", streams, 1, allow_none=True)
        p = self.reading_params()
        metrics = scoring.NextTokenMetrics(self.ops, self.vocab_size, top_k)
        if y is not None:
            if streams is not None:
                raise ValueError("streams applies to a 1-D text: windows (data, y) are each scored from a zero state")
            x, y = self.check_batch(data, y)
            for r in range(0, len(x), batch_size):
                log_probs, predictions, ranks, _, _ = self.ops.score_streams(
                    p, self.num_layers, x[r : r + batch_size], y[r : r + batch_size]
                )
                scoring.check_finite_scores(log_probs, f"on windows {r} to {r + len(log_probs)}")
                metrics.add(y[r : r + batch_size].reshape(-1), log_probs.ravel(), predictions.ravel(), ranks.ravel())
        else:
            ids = check_corpus("ids", data, self.vocab_size)  # a memory map stays on disk
            if len(ids) < 2:
                raise ValueError(f"evaluation needs at least 2 tokens, got {len(ids)}")
            scoring.score_text(self, p, ids, streams or 1, metrics)
        return metrics.result()

    def _sampling(self, temperature, top_k, top_p, seed, suppress_unk):
        """The sampling arguments checked, in the kernels' form: (temperature, top_k, top_p, seed, suppressed)."""
        temperature = check_number("temperature", temperature, "[0, inf)")
        top_k = check_int("top_k", top_k, 1, allow_none=True)
        top_p = check_number("top_p", top_p, "(0, 1]", allow_none=True)
        # The kernels' generator takes a 64-bit seed: a larger one would wrap onto a smaller one's
        # samples. (The constructor's seed is any integer >= 0: NumPy's generators take them whole.)
        seed = check_int("seed", seed, 0, MAX_SAMPLING_SEED, allow_none=True)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (MAX_SAMPLING_SEED + 1))
        suppressed = -1
        if check_bool("suppress_unk", suppress_unk):
            if self.tokenizer is None:
                raise ValueError(
                    "suppress_unk=True needs the tokenizer that says which id is <unk>: attach one "
                    "(model.tokenizer) or pass suppress_unk=False"
                )
            suppressed = self.tokenizer.unk_id
        return temperature, top_k or 0, 1.0 if top_p is None else top_p, seed, suppressed

    def session(self, prompt_ids, temperature=1.0, top_k=None, top_p=None, seed=None, suppress_unk=False):
        """A generation in progress after the 1-D prompt: the kernels' GenerationSession, whose
        next(count) draws the next tokens ((1, count) ids) and probabilities() the next-token
        distribution; the tokens generate would draw with the same arguments."""
        prompt = check_ids("prompt_ids", _non_empty_prompt(prompt_ids), self.vocab_size, 1)
        sampling = self._sampling(temperature, top_k, top_p, seed, suppress_unk)
        return self.ops.GenerationSession(self.reading_params(), self.num_layers, prompt[None], *sampling)

    def generate(
        self,
        prompt_ids,
        max_new_tokens=100,
        temperature=1.0,
        top_k=None,
        top_p=None,
        seed=None,
        num_samples=1,
        stop=None,
        suppress_unk=False,
    ):
        """Sample new token ids after a prompt; the sampling loop runs in C++.

        prompt_ids: 1-D ids (at least one) warming the state, or (S, P) for S prompts.
        temperature 1 samples the model's own distribution (the default everywhere, the CLI
        included), lower is more conservative, 0 is greedy; top_k keeps the k most likely
        tokens; top_p the smallest set whose probability reaches p. seed: 0 to 2**64 - 1, or
        None for a fresh one. suppress_unk: never sample <unk> (needs the tokenizer). stop: a token id or a
        list of them; each sample ends before the first one.
        Returns 1-D int32 new ids for a 1-D prompt and num_samples=1, else (S, max_new_tokens)
        (with stop: a list of 1-D arrays, each as long as its sample went).
        """
        sampling = self._sampling(temperature, top_k, top_p, seed, suppress_unk)
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)
        _, stop_ids = streaming.check_stop(stop, text=False, vocab_size=self.vocab_size)
        num_samples = check_int("num_samples", num_samples, 1)
        prompt = _non_empty_prompt(prompt_ids)
        single = prompt.ndim == 1
        prompt = check_ids("prompt_ids", prompt[None] if single else prompt, self.vocab_size, 2)
        if num_samples > 1 and prompt.shape[0] != 1:
            raise ValueError("num_samples > 1 needs a single prompt")
        rows, memory = num_samples * prompt.shape[0], physical_memory()
        if memory is not None and 4 * rows * (prompt.shape[1] + max_new_tokens + 8 * self.hidden_size) > memory:
            raise ValueError(
                f"num_samples={num_samples} and max_new_tokens={max_new_tokens} need more than this "
                f"machine's memory ({memory / 2**30:,.1f} GiB) for {rows:,} sequences"
            )
        if num_samples > 1:
            prompt = np.repeat(prompt, num_samples, axis=0)
        if stop is not None and single and num_samples == 1:  # a stream: no tokens drawn past the stop
            return np.array(
                list(
                    streaming.stream(
                        self,
                        prompt[0],
                        max_new_tokens,
                        temperature,
                        top_k,
                        top_p,
                        sampling[3],
                        list(stop_ids),
                        suppress_unk,
                    )
                ),
                dtype=np.int32,
            )
        out = self.ops.generate(self.reading_params(), self.num_layers, prompt, max_new_tokens, *sampling)
        if stop is not None:
            return [row[: streaming.first_stop_id(row, stop_ids)] for row in out]
        return out[0] if single and num_samples == 1 else out

    def prompt_ids(self, prompt):
        """A text prompt's ids through the tokenizer (words outside the vocabulary map to <unk>,
        with a warning saying how many); an empty prompt starts from _start_token."""
        tokenizer = self.require_tokenizer()
        check_str("prompt", prompt)
        ids, unknown = tokenizer.encode(prompt, return_unknown=True)
        if unknown:
            shown = ", ".join(map(repr, tokenizer.unknown_tokens(prompt)[:10]))
            warnings.warn(
                f"{unknown} prompt token(s) are not in the vocabulary and were mapped to "
                f"{tokenizer.vocab[tokenizer.unk_id]!r}: {shown}",
                stacklevel=3,
            )
        eos = scoring.boundary_id(tokenizer) if getattr(tokenizer, "eos", None) is not None else None
        if eos is not None and len(ids) and ids[-1] == eos and not prompt.endswith("\n"):
            ids = ids[:-1]  # continue the prompt's line, not a line the tokenizer closed
        if len(ids) == 0:
            ids = np.array([self._start_token(tokenizer)], dtype=np.int32)
        return ids

    def generate_text(
        self,
        prompt="",
        max_new_tokens=200,
        temperature=1.0,
        top_k=None,
        top_p=None,
        seed=None,
        num_samples=1,
        stop=None,
        suppress_unk=True,
    ):
        """Text in, text out, through the attached tokenizer: the continuation of prompt
        (a str, or a list of num_samples str). Prompt words outside the vocabulary are
        mapped to <unk> with a warning that says how many. stop: a str or token id or a list
        of them; the text ends before the first (the stop string itself is left out).
        suppress_unk: never sample <unk>."""
        tokenizer = self.require_tokenizer()
        if stop is not None and num_samples == 1:
            return "".join(
                streaming.stream(self, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, suppress_unk)
            )
        stop_strings, stop_ids = streaming.check_stop(stop, text=True, vocab_size=self.vocab_size)
        ids = self.prompt_ids(prompt)
        out = self.generate(
            ids, max_new_tokens, temperature, top_k, top_p, seed, num_samples, suppress_unk=suppress_unk
        )
        texts = []
        for row in np.atleast_2d(out):
            end = streaming.first_stop_id(row, stop_ids)
            texts.append(streaming.cut_at_stop(tokenizer.decode(row[:end]), stop_strings)[0])
        return texts[0] if num_samples == 1 else texts

    stream = streaming.stream
    log_probs = scoring.log_probs
    score = scoring.score
    perplexity = scoring.perplexity
    full_scores = scoring.full_scores
    next_token_probs = scoring.next_token_probs
    # Export (fastlm.onnx_export, fastlm.torch_convert; onnx and torch imported only when called).
    to_onnx = onnx_export.to_onnx
    to_torch = torch_convert.to_torch
    from_torch = classmethod(torch_convert.from_torch)

    @staticmethod
    def _start_token(tokenizer):
        """Where an empty prompt starts: a newline for characters, else the most frequent token."""
        newline = tokenizer.encode("\n")
        if len(newline) == 1 and newline[0] != tokenizer.unk_id:
            return int(newline[0])
        return min(tokenizer.unk_id + 1, len(tokenizer) - 1)

    def require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(
                "no tokenizer attached: set model.tokenizer, or save the model with "
                "save(directory, tokenizer=...) and load it with fastlm.load"
            )
        check_tokenizer(self.tokenizer, self.vocab_size)
        return self.tokenizer
