"""fastlm's C++ kernels (src/cpp/bindings.cpp); every function has a NumPy twin in fastlm.reference.

Type stubs for editors and type checkers. Array inputs accept anything NumPy converts
(float32 for values, integers for ids); arguments the kernel updates in place must be
float32 C-contiguous arrays. tests/test_stubs.py checks that every function the extension
exports is here, with the same parameters.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

Floats = NDArray[np.float32]
Ids = NDArray[np.int32]

# ------------------------------------------------------------------ embedding

def embedding_forward(weight: ArrayLike, ids: ArrayLike) -> Floats:
    """weight (V, E), ids (B, T) -> (B, T, E) rows of weight."""

def embedding_backward(dout: ArrayLike, ids: ArrayLike, vocab_size: int) -> Floats:
    """dout (B, T, E) -> dweight (V, E): each row sums the gradients of its occurrences."""

# ------------------------------------------------------------------ LSTM layer

def lstm_forward(
    x: ArrayLike, w_ih: ArrayLike, w_hh: ArrayLike, b_ih: ArrayLike, b_hh: ArrayLike, h0: ArrayLike, c0: ArrayLike
) -> tuple[Floats, Floats, Floats]:
    """x (B, T, I) -> (hs (B, T, H), cs (B, T, H), gates (B, T, 4H)); gate order i, f, g, o."""

def lstm_backward(
    dhs: ArrayLike,
    dh_n: ArrayLike | None,
    dc_n: ArrayLike | None,
    x: ArrayLike,
    w_ih: ArrayLike,
    w_hh: ArrayLike,
    h0: ArrayLike,
    c0: ArrayLike,
    hs: ArrayLike,
    cs: ArrayLike,
    gates: ArrayLike,
) -> tuple[Floats, Floats, Floats, Floats, Floats, Floats]:
    """-> (dx, dw_ih, dw_hh, db (the gradient of each bias vector), dh0, dc0)."""

# ------------------------------------------------------------------ output layer + loss

def output_loss_forward(
    h: ArrayLike, weight: ArrayLike, bias: ArrayLike, targets: ArrayLike
) -> tuple[float, Floats, Ids]:
    """h (N, H), weight (V, H), bias (V,), targets (N,) -> (mean loss, lse (N,), predictions (N,))."""

def output_loss_backward(
    h: ArrayLike, weight: ArrayLike, bias: ArrayLike, targets: ArrayLike, lse: ArrayLike
) -> tuple[Floats, Floats, Floats]:
    """-> (dh (N, H), dweight (V, H), dbias (V,)) of the mean loss."""

def output_loss_forward_backward(
    h: ArrayLike, weight: ArrayLike, bias: ArrayLike, targets: ArrayLike
) -> tuple[float, Floats, Floats, Floats]:
    """Training's fused pass: (mean loss, dh, dweight, dbias)."""

# ------------------------------------------------------------------ adaptive softmax

def adaptive_loss_forward(
    h: ArrayLike,
    head_weight: ArrayLike,
    head_bias: ArrayLike | None,
    proj_weights: Sequence[ArrayLike],
    out_weights: Sequence[ArrayLike],
    targets: ArrayLike,
) -> tuple[float, Floats, Ids]:
    """-> (mean loss, log-probability (N,) of each target, predictions (N,))."""

def adaptive_loss_forward_backward(
    h: ArrayLike,
    head_weight: ArrayLike,
    head_bias: ArrayLike | None,
    proj_weights: Sequence[ArrayLike],
    out_weights: Sequence[ArrayLike],
    targets: ArrayLike,
) -> tuple[float, Floats, Floats, Floats | None, list[Floats], list[Floats]]:
    """-> (mean loss, dh, dhead_weight, dhead_bias or None, [dproj_i], [dout_i])."""

def adaptive_log_prob(
    h: ArrayLike,
    head_weight: ArrayLike,
    head_bias: ArrayLike | None,
    proj_weights: Sequence[ArrayLike],
    out_weights: Sequence[ArrayLike],
) -> Floats:
    """The full distribution: (N, V) log-probabilities."""

# ------------------------------------------------------------------ optimizers

def adam_update(
    param: Floats,
    grad: ArrayLike,
    m: Floats,
    v: Floats,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-08,
    weight_decay: float = 0.0,
) -> None:
    """One torch.optim.Adam step, in place on param, m and v."""

def adam_update_rows(
    param: Floats,
    rows: ArrayLike,
    grad: ArrayLike,
    m: Floats,
    v: Floats,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-08,
    weight_decay: float = 0.0,
) -> None:
    """adam_update on param (V, E) with the gradient in row form: grad (len(rows), E) for rows
    (strictly increasing), 0 for every other row; the same bits as on the dense gradient."""

def embedding_backward_sparse(dout: ArrayLike, ids: ArrayLike) -> tuple[Ids, Floats]:
    """The distinct ids in increasing order and each one's summed gradient (U, E)."""

def sparse_adam_update(
    param: Floats,
    rows: ArrayLike,
    grad: ArrayLike,
    m: Floats,
    v: Floats,
    slots: ArrayLike,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-08,
) -> None:
    """One torch.optim.SparseAdam step on param's rows, in place on them and on m, v rows slots."""

def sparse_sgd_update(param: Floats, rows: ArrayLike, grad: ArrayLike, lr: float) -> None:
    """One torch.optim.SGD step (no momentum, no weight decay) on param's rows, in place."""

def sgd_update(
    param: Floats,
    grad: ArrayLike,
    buf: Floats | None,
    step: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> None:
    """One torch.optim.SGD step, in place on param (and buf, the momentum buffer)."""

def sgd_update_rows(
    param: Floats,
    rows: ArrayLike,
    grad: ArrayLike,
    buf: Floats | None,
    step: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    skip_absent_rows: bool = False,
) -> None:
    """sgd_update on param (V, E) with the gradient in row form, as adam_update_rows: the same bits
    as on the dense gradient. skip_absent_rows: the caller knows the rows outside rows hold no
    subnormal float; plain SGD then leaves them unread (p - lr * 0 is p for every other value)."""

def clip_grad_norm(grads: Floats | Sequence[Floats], max_norm: float) -> float:
    """Scale grads in place so their global L2 norm is at most max_norm; returns the norm before."""

def clip_grad_norm_rows(grads: Sequence[Floats | tuple[ArrayLike, Floats, int]], max_norm: float) -> float:
    """clip_grad_norm where an entry may be a gradient in row form, (rows, values, vocab_size):
    the norm and scaled values of the dense gradient, to the bit, without forming it."""

def clipped_sgd_update(
    params: Sequence[Floats],
    grads: Sequence[ArrayLike | tuple[ArrayLike, ArrayLike]],
    bufs: Sequence[Floats] | None,
    step: int,
    lr: float,
    max_norm: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    skip_absent_rows: bool = False,
) -> float:
    """clip_grad_norm(grads, max_norm), then sgd_update on every parameter, in one call: the same
    params and bufs to the bit, grads left unscaled; returns the norm before clipping. A
    gradient may be in row form, (rows, values), as sgd_update_rows takes it, skip_absent_rows
    included."""

# ------------------------------------------------------------------ data

def windows(ids: ArrayLike, seq_len: int, stride: int = 1) -> tuple[Ids, Ids]:
    """1-D ids -> inputs x and targets y (x shifted by one), each (N, seq_len)."""

def gather_windows(ids: ArrayLike, starts: ArrayLike, seq_len: int) -> tuple[Ids, Ids]:
    """The windows starting at each of starts: x and y, each (len(starts), seq_len)."""

# ------------------------------------------------------------------ generation

def generate(
    params: dict[str, Any],
    num_layers: int,
    prompt: ArrayLike,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    suppressed: int = -1,
) -> Ids:
    """Sample max_new_tokens ids after each row of prompt (samples, length >= 1) -> (samples, max_new_tokens);
    suppressed (>= 0) is an id never drawn."""

class GenerationSession:
    """A generation in progress: next(count) continues it, probabilities() gives the next-token
    distribution; the same tokens as generate() with the same arguments."""

    def __init__(
        self,
        params: dict[str, Any],
        num_layers: int,
        prompt: ArrayLike,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        suppressed: int = -1,
    ) -> None: ...
    def next(self, count: int) -> Ids:
        """The next count tokens of every sample -> (samples, count)."""
    def probabilities(self) -> Floats:
        """The next-token distribution of every sample -> (samples, V); draws nothing."""

# ------------------------------------------------------------------ scoring

def score_sequences(
    params: dict[str, Any], num_layers: int, ids: ArrayLike, offsets: ArrayLike, bos: int = -1, batch_size: int = 256
) -> tuple[Floats, Ids, Ids]:
    """Sequences ids[offsets[i]:offsets[i + 1]], each from a zero state -> per scored token
    (log_probs, predictions, ranks); bos >= 0 scores the first token after bos."""

def score_streams(
    params: dict[str, Any],
    num_layers: int,
    x: ArrayLike,
    y: ArrayLike,
    h0: ArrayLike | None = None,
    c0: ArrayLike | None = None,
) -> tuple[Floats, Ids, Ids, Floats, Floats]:
    """Streams x, y (B, T) continued from the state h0, c0 (layers, B, H; None: zeros) ->
    (log_probs, predictions, ranks) each (B, T), and the final state h_n, c_n (layers, B, H)."""

def output_scores(h: ArrayLike, weight: ArrayLike, bias: ArrayLike, targets: ArrayLike) -> tuple[Floats, Ids, Ids]:
    """h (N, H) -> (log_probs (N,) of the targets, predictions (N,) arg-max, ranks (N,) logits above the target's)."""

def prediction_counts(targets: ArrayLike, predictions: ArrayLike, vocab_size: int) -> NDArray[np.int64]:
    """-> (3, vocab_size): true positives, predictions and targets of each token id."""

# ------------------------------------------------------------------ machine and build

def fma_peak_gflops(seconds: float = 0.5) -> float:
    """The float32 FMA peak of this machine in GFLOP/s, measured for about `seconds` on every thread."""

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def build_info() -> dict[str, Any]:
    """version, simd ("avx512", "avx2" or "scalar"), openmp, threads, malloc_tuned, compiler."""

def tune_malloc() -> bool:
    """Keep freed blocks of up to 32 MiB in glibc's heap, process wide; whether that is in force."""
