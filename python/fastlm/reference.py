"""NumPy reference: the math of every C++ op, written to be read.

Each function here has a C++ twin of the same name and signature in ``fastlm._core``.
The twins are tested against each other; these functions are themselves checked
against central finite differences in float64 (``tests/test_gradcheck.py``).
They work in the dtype they are given (float32 for the model, float64 for the
gradient checks) and favour clarity over speed, but never loop over tokens in
Python: only over time steps (the recurrence) and over row chunks of the output layer.

Shapes: B batch, T time steps, I layer input width, H hidden size, E embedding
width, V vocabulary size, N = B*T rows of the output layer.
"""

from __future__ import annotations

import math

import numpy as np

# Rows of the output layer handled at once: the (rows x V) logits block is the only
# vocabulary-sized temporary, so memory does not grow with B*T*V.
LOGIT_CHUNK_ELEMENTS = 1 << 21


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


# ---------------------------------------------------------------- embedding


def embedding_forward(weight, ids):
    """weight (V, E), ids (B, T) integers -> (B, T, E) rows of weight."""
    return weight[ids]


def embedding_backward(dout, ids, vocab_size):
    """dout (B, T, E) -> dweight (V, E): each row sums the gradients of its occurrences."""
    dweight = np.zeros((vocab_size, dout.shape[-1]), dtype=dout.dtype)
    np.add.at(dweight, ids.reshape(-1), dout.reshape(-1, dout.shape[-1]))
    return dweight


# ---------------------------------------------------------------- one LSTM layer


def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0):
    """One LSTM layer over a whole sequence, PyTorch's equations and gate order (i, f, g, o).

    x (B, T, I), w_ih (4H, I), w_hh (4H, H), b_ih and b_hh (4H,), h0 and c0 (B, H).
    Returns hs (B, T, H) hidden states, cs (B, T, H) cell states and gates (B, T, 4H),
    the gate activations [sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)] that backward needs.
    The final state is (hs[:, -1], cs[:, -1]).
    """
    B, T, _ = x.shape
    H = w_hh.shape[1]
    # The input projection does not depend on the recurrence: one product for all steps.
    pre = x @ w_ih.T + (b_ih + b_hh)
    hs = np.empty((B, T, H), dtype=x.dtype)
    cs = np.empty((B, T, H), dtype=x.dtype)
    gates = np.empty((B, T, 4 * H), dtype=x.dtype)
    h, c = h0, c0
    for t in range(T):
        a = pre[:, t] + h @ w_hh.T
        i = sigmoid(a[:, 0 * H : 1 * H])
        f = sigmoid(a[:, 1 * H : 2 * H])
        g = np.tanh(a[:, 2 * H : 3 * H])
        o = sigmoid(a[:, 3 * H : 4 * H])
        c = f * c + i * g
        h = o * np.tanh(c)
        gates[:, t] = np.concatenate([i, f, g, o], axis=1)
        hs[:, t] = h
        cs[:, t] = c
    return hs, cs, gates


def lstm_backward(dhs, dh_n, dc_n, x, w_ih, w_hh, h0, c0, hs, cs, gates):
    """Backward through time of lstm_forward.

    dhs (B, T, H) is the loss gradient reaching each hidden state from above;
    dh_n and dc_n (B, H) or None are gradients reaching the final state from later batches.
    Returns dx (B, T, I), dw_ih, dw_hh, db (4H,) -- the gradient of b_ih and of b_hh alike --
    and dh0, dc0 (B, H).
    """
    B, T, _ = x.shape
    H = w_hh.shape[1]
    dh_next = np.zeros((B, H), dtype=x.dtype) if dh_n is None else dh_n
    dc_next = np.zeros((B, H), dtype=x.dtype) if dc_n is None else dc_n
    dpre = np.empty_like(gates)  # gradient w.r.t. the gate pre-activations
    for t in reversed(range(T)):
        i, f, g, o = (gates[:, t, k * H : (k + 1) * H] for k in range(4))
        c_prev = cs[:, t - 1] if t > 0 else c0
        tanh_c = np.tanh(cs[:, t])
        dh = dhs[:, t] + dh_next
        dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
        dpre[:, t] = np.concatenate(
            [
                dc * g * i * (1.0 - i),
                dc * c_prev * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tanh_c * o * (1.0 - o),
            ],
            axis=1,
        )
        dh_next = dpre[:, t] @ w_hh
        dc_next = dc * f
    h_prev = np.concatenate([h0[:, None], hs[:, :-1]], axis=1)
    dpre_rows = dpre.reshape(B * T, 4 * H)
    dx = dpre @ w_ih
    dw_ih = dpre_rows.T @ x.reshape(B * T, -1)
    dw_hh = dpre_rows.T @ h_prev.reshape(B * T, H)
    db = dpre_rows.sum(axis=0)
    return dx, dw_ih, dw_hh, db, dh_next, dc_next


# ---------------------------------------------------------------- output layer + softmax cross-entropy


def _row_chunks(n_rows, vocab_size):
    step = max(1, LOGIT_CHUNK_ELEMENTS // max(1, vocab_size))
    return [slice(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


def output_loss_forward(h, weight, bias, targets):
    """Linear(H, V) then mean softmax cross-entropy, in row chunks.

    h (N, H), weight (V, H), bias (V,), targets (N,) integers.
    Returns loss (Python float, mean over the N rows), lse (N,) the log-sum-exp of
    each row's logits (what backward needs to rebuild the softmax) and
    predictions (N,) int32, each row's arg-max logit.
    """
    n_rows = h.shape[0]
    lse = np.empty(n_rows, dtype=h.dtype)
    predictions = np.empty(n_rows, dtype=np.int32)
    total = 0.0
    for rows in _row_chunks(n_rows, weight.shape[0]):
        logits = h[rows] @ weight.T + bias
        peak = logits.max(axis=1)
        lse[rows] = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
        target_logit = logits[np.arange(logits.shape[0]), targets[rows]]
        total += float(np.sum(lse[rows] - target_logit, dtype=np.float64))
        predictions[rows] = logits.argmax(axis=1)
    return total / n_rows, lse, predictions


def output_loss_backward(h, weight, bias, targets, lse):
    """Gradients of output_loss_forward's mean loss: dh (N, H), dweight (V, H), dbias (V,).

    The logits of each chunk are recomputed; d loss / d logits = (softmax - onehot) / N.
    """
    n_rows = h.shape[0]
    dh = np.empty_like(h)
    dweight = np.zeros_like(weight)
    dbias = np.zeros_like(bias)
    for rows in _row_chunks(n_rows, weight.shape[0]):
        dlogits = np.exp(h[rows] @ weight.T + bias - lse[rows, None])
        dlogits[np.arange(dlogits.shape[0]), targets[rows]] -= 1.0
        dlogits /= n_rows
        dh[rows] = dlogits @ weight
        dweight += dlogits.T @ h[rows]
        dbias += dlogits.sum(axis=0)
    return dh, dweight, dbias


def output_loss_forward_backward(h, weight, bias, targets):
    """Training's fused pass: (loss, dh, dweight, dbias) of output_loss_forward/backward."""
    loss, lse, _ = output_loss_forward(h, weight, bias, targets)
    return (loss, *output_loss_backward(h, weight, bias, targets, lse))


# ---------------------------------------------------------------- adaptive softmax (Grave et al. 2017)
#
# torch.nn.AdaptiveLogSoftmaxWithLoss: a head over the shortlist [0, c1) and one column per
# cluster; cluster i's words [c_i, c_{i+1}) get the head's log-probability of column c1 + i
# plus the log-softmax of the tail out_i (proj_i h). c1 is the head's rows less the clusters.


def _log_softmax(logits):
    peak = logits.max(axis=1, keepdims=True)
    return logits - (peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True)))


def _head_log_prob(h, head_weight, head_bias):
    logits = h @ head_weight.T
    return _log_softmax(logits + head_bias if head_bias is not None else logits)


def _cluster_starts(head_weight, out_weights):
    """c_i of every cluster, and the vocabulary size after the last."""
    shortlist = head_weight.shape[0] - len(out_weights)
    return np.cumsum([shortlist] + [w.shape[0] for w in out_weights])


def adaptive_loss_forward(h, head_weight, head_bias, proj_weights, out_weights, targets):
    """Adaptive softmax cross-entropy: (mean loss, log_prob (N,) of each target, predictions (N,)).

    h (N, H), head_weight (c1 + n, H), head_bias (c1 + n,) or None, proj_weights[i] (d_i, H),
    out_weights[i] (c_{i+1} - c_i, d_i), targets (N,) in [0, V). Predictions are the arg-max
    of the full distribution.
    """
    starts = _cluster_starts(head_weight, out_weights)
    shortlist = starts[0]
    head = _head_log_prob(h, head_weight, head_bias)
    cluster = np.searchsorted(starts, targets, side="right") - 1  # -1: a shortlist word
    log_prob = head[np.arange(len(targets)), np.where(cluster < 0, targets, shortlist + cluster)]
    for i, (proj, out) in enumerate(zip(proj_weights, out_weights)):
        rows = np.flatnonzero(cluster == i)
        tail = _log_softmax((h[rows] @ proj.T) @ out.T)
        log_prob[rows] += tail[np.arange(len(rows)), targets[rows] - starts[i]]
    predictions = np.empty(len(targets), dtype=np.int32)
    for rows in _row_chunks(len(targets), int(starts[-1])):
        predictions[rows] = adaptive_log_prob(h[rows], head_weight, head_bias, proj_weights, out_weights).argmax(1)
    return -float(np.mean(log_prob, dtype=np.float64)), log_prob, predictions


def adaptive_loss_forward_backward(h, head_weight, head_bias, proj_weights, out_weights, targets):
    """Training: (loss, dh, dhead_weight, dhead_bias or None, [dproj_i], [dout_i]) of the mean loss.

    Each softmax's gradient is (softmax - onehot) / N over the rows it serves: the head over
    all rows (the target's column), tail i over the rows whose target lies in cluster i.
    """
    n_rows = h.shape[0]
    starts = _cluster_starts(head_weight, out_weights)
    shortlist = starts[0]
    loss, _, _ = adaptive_loss_forward(h, head_weight, head_bias, proj_weights, out_weights, targets)
    cluster = np.searchsorted(starts, targets, side="right") - 1
    dlogits = np.exp(_head_log_prob(h, head_weight, head_bias))
    dlogits[np.arange(n_rows), np.where(cluster < 0, targets, shortlist + cluster)] -= 1.0
    dlogits /= n_rows
    dh = dlogits @ head_weight
    dhead_weight = dlogits.T @ h
    dhead_bias = dlogits.sum(axis=0) if head_bias is not None else None
    dprojs, douts = [], []
    for i, (proj, out) in enumerate(zip(proj_weights, out_weights)):
        rows = np.flatnonzero(cluster == i)
        p = h[rows] @ proj.T
        dtail = np.exp(_log_softmax(p @ out.T))
        dtail[np.arange(len(rows)), targets[rows] - starts[i]] -= 1.0
        dtail /= n_rows
        dp = dtail @ out
        douts.append(dtail.T @ p)
        dprojs.append(dp.T @ h[rows])
        dh[rows] += dp @ proj
    return loss, dh, dhead_weight, dhead_bias, dprojs, douts


def adaptive_log_prob(h, head_weight, head_bias, proj_weights, out_weights):
    """The full distribution: (N, V) log-probabilities of every word."""
    starts = _cluster_starts(head_weight, out_weights)
    head = _head_log_prob(h, head_weight, head_bias)
    parts = [head[:, : starts[0]]]
    for i, (proj, out) in enumerate(zip(proj_weights, out_weights)):
        parts.append(_log_softmax((h @ proj.T) @ out.T) + head[:, starts[0] + i, None])
    return np.concatenate(parts, axis=1)


def output_scores(h, weight, bias, targets):
    """The output layer's verdict on each row of h (N, H) for its target: log_probs (N,)
    the target's log-probability, predictions (N,) int32 the arg-max and ranks (N,) int32
    how many logits exceed the target's (the target is in the top k when rank < k)."""
    log_probs = np.empty(h.shape[0], dtype=h.dtype)
    predictions = np.empty(h.shape[0], dtype=np.int32)
    ranks = np.empty(h.shape[0], dtype=np.int32)
    for rows in _row_chunks(h.shape[0], weight.shape[0]):
        logits = h[rows] @ weight.T + bias
        peak = logits.max(axis=1)
        lse = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
        target_logit = logits[np.arange(logits.shape[0]), targets[rows]]
        log_probs[rows] = target_logit - lse
        predictions[rows] = logits.argmax(axis=1)
        ranks[rows] = (logits > target_logit[:, None]).sum(axis=1)
    return log_probs, predictions, ranks


def adaptive_output_scores(h, head_weight, head_bias, proj_weights, out_weights, targets, log_prob=None):
    """output_scores for an adaptive softmax decoder: the same three outputs from the full
    distribution (log_prob: adaptive_log_prob or its C++ twin), in row chunks."""
    log_prob = adaptive_log_prob if log_prob is None else log_prob
    vocab = int(_cluster_starts(head_weight, out_weights)[-1])
    log_probs = np.empty(h.shape[0], dtype=h.dtype)
    predictions = np.empty(h.shape[0], dtype=np.int32)
    ranks = np.empty(h.shape[0], dtype=np.int32)
    for rows in _row_chunks(h.shape[0], vocab):
        full = log_prob(h[rows], head_weight, head_bias, proj_weights, out_weights)
        target = full[np.arange(full.shape[0]), targets[rows]]
        log_probs[rows] = target
        predictions[rows] = full.argmax(axis=1)
        ranks[rows] = (full > target[:, None]).sum(axis=1)
    return log_probs, predictions, ranks


# ---------------------------------------------------------------- optimizer


def adam_update(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One Adam step in place on param, m, v, as torch.optim.Adam computes it.

    step counts from 1. weight_decay is the L2 penalty added to the gradient (not AdamW).
    """
    if weight_decay:
        grad = grad + weight_decay * param
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * grad * grad
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denom = np.sqrt(v) / math.sqrt(bias_correction2) + eps
    param -= (lr / bias_correction1) * m / denom


def _dense(shape, rows, grad):
    """The dense gradient of a parameter of shape whose row form is (rows, grad): grad in rows,
    0 elsewhere."""
    dense = np.zeros(shape, dtype=np.float32)
    dense[rows] = grad
    return dense


def adam_update_rows(param, rows, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """adam_update on param (V, E) with its gradient in row form: grad (len(rows), E) holds the
    gradients of rows (distinct, increasing), every other row's gradient is 0."""
    adam_update(param, _dense(param.shape, rows, grad), m, v, step, lr, beta1, beta2, eps, weight_decay)


def sgd_update(param, grad, buf, step, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One SGD step in place on param (and buf), as torch.optim.SGD computes it.

    step counts from 1. weight_decay is the L2 penalty added to the gradient. With
    momentum > 0, buf is the momentum buffer: the gradient itself on the first step,
    then momentum * buf + gradient; Nesterov steps along gradient + momentum * buf.
    buf may be None when momentum is 0.
    """
    if nesterov and not momentum > 0:
        raise ValueError("nesterov needs momentum > 0")
    if weight_decay:
        grad = grad + weight_decay * param
    if momentum:
        if step == 1:
            buf[...] = grad
        else:
            buf *= momentum
            buf += grad
        grad = grad + momentum * buf if nesterov else buf
    param -= lr * grad


def embedding_backward_sparse(dout, ids):
    """The gradient of the rows a batch uses: rows (U,) int32 the distinct ids in increasing
    order, grad (U, E) each one's summed dout rows (embedding_backward restricted to rows)."""
    rows, where = np.unique(np.asarray(ids).reshape(-1), return_inverse=True)
    grad = np.zeros((len(rows), dout.shape[-1]), dtype=dout.dtype)
    np.add.at(grad, where.reshape(-1), dout.reshape(-1, dout.shape[-1]))
    return rows.astype(np.int32), grad


def sparse_adam_update(param, rows, grad, m, v, slots, step, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """torch.optim.SparseAdam's step in place on param's rows, m[slots] and v[slots] (the
    moments of the rows seen). Unlike Adam, eps is added to sqrt(v) before the bias correction."""
    m[slots] += (grad - m[slots]) * (1.0 - beta1)
    v[slots] += (grad * grad - v[slots]) * (1.0 - beta2)
    step_size = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
    param[rows] -= np.asarray(step_size, dtype=param.dtype) * (m[slots] / (np.sqrt(v[slots]) + eps))


def sparse_sgd_update(param, rows, grad, lr):
    """torch.optim.SGD's step on a sparse gradient, in place on param's rows (distinct, increasing):
    param[rows] -= lr * grad (no momentum, no weight decay)."""
    param[rows] -= np.asarray(lr, dtype=param.dtype) * grad


def sgd_update_rows(
    param, rows, grad, buf, step, lr, momentum=0.0, weight_decay=0.0, nesterov=False, skip_absent_rows=False
):
    """sgd_update on param (V, E) with its gradient in row form, as adam_update_rows.

    skip_absent_rows: the caller knows the rows without gradient hold no subnormal floats, so
    plain SGD may leave them unread (the C++ op's saving). Here it changes nothing: NumPy does
    not read subnormals as zero, so p - lr * 0 is p for every p."""
    del skip_absent_rows
    sgd_update(param, _dense(param.shape, rows, grad), buf, step, lr, momentum, weight_decay, nesterov)


def clipped_sgd_update(
    params, grads, bufs, step, lr, max_norm, momentum=0.0, weight_decay=0.0, nesterov=False, skip_absent_rows=False
):
    """clip_grad_norm on copies of grads, then sgd_update on every parameter (bufs: one
    momentum buffer per parameter, or None when momentum is 0). grads are left as they were;
    a gradient may be in row form, a tuple (rows, values) as sgd_update_rows takes them, and
    skip_absent_rows applies to those as there. Returns the norm before clipping."""
    del skip_absent_rows
    grads = [
        _dense(p.shape, *g) if isinstance(g, tuple) else np.array(g, dtype=np.float32) for p, g in zip(params, grads)
    ]
    norm = clip_grad_norm(grads, max_norm)
    for i, (param, grad) in enumerate(zip(params, grads)):
        sgd_update(param, grad, None if bufs is None else bufs[i], step, lr, momentum, weight_decay, nesterov)
    return norm


def clip_grad_norm(grads, max_norm):
    """Scale the arrays in grads in place so their global L2 norm is at most max_norm.

    Returns the norm before clipping, as torch.nn.utils.clip_grad_norm_ does; grads may
    also be a single array.
    """
    if isinstance(grads, np.ndarray):
        grads = [grads]
    total = float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads)))
    if not np.isfinite(total):
        raise ValueError(f"gradient norm is {total}: the gradients hold NaN or infinity")
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for g in grads:
            g *= np.asarray(scale, dtype=g.dtype)
    return total


def clip_grad_norm_rows(grads, max_norm):
    """clip_grad_norm where an entry of grads may also be a gradient in row form, a tuple
    (rows, values, vocab_size): the (vocab_size, E) gradient that holds values (len(rows), E)
    in rows and 0 elsewhere. Its values are scaled in place."""
    dense = []
    for g in grads:
        if isinstance(g, tuple):
            rows, values, vocab_size = g
            g = _dense((vocab_size, values.shape[1]), rows, values)
        dense.append(g)
    norm = clip_grad_norm(dense, max_norm)
    for g, full in zip(grads, dense):
        if isinstance(g, tuple):
            g[1][...] = full[g[0]]
    return norm


# ---------------------------------------------------------------- data


def windows(ids, seq_len, stride=1):
    """Cut a 1-D id array into inputs x and targets y, each (N, seq_len) int32.

    Window n starts at n*stride; y is x shifted by one token. N = (len(ids) - seq_len - 1)
    // stride + 1, so every window has a full target.
    """
    ids = np.asarray(ids)
    count = (len(ids) - seq_len - 1) // stride + 1
    starts = np.arange(count) * stride
    offsets = np.arange(seq_len)
    x = ids[starts[:, None] + offsets].astype(np.int32)
    y = ids[starts[:, None] + offsets + 1].astype(np.int32)
    return x, y


def gather_windows(ids, starts, seq_len):
    """The windows starting at each of starts: x (len(starts), seq_len) and y shifted by one."""
    offsets = np.asarray(starts)[:, None] + np.arange(seq_len)
    ids = np.asarray(ids)
    return ids[offsets].astype(np.int32), ids[offsets + 1].astype(np.int32)


# ---------------------------------------------------------------- generation

_MASK64 = (1 << 64) - 1


class SplitMix64:
    """The generator the C++ sampler uses, so the twins draw the same numbers."""

    def __init__(self, seed):
        self.state = seed & _MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next() >> 11) * 2.0**-53


def sample_token(logits, temperature, top_k, top_p, rng, suppressed=-1):
    """One id from logits (V,): greedy at temperature 0, else softmax(logits / temperature)
    restricted to the top_k most likely (0: all) and then to the smallest most-likely set
    whose probability reaches top_p (1: all). The id suppressed (>= 0) is never drawn."""
    if suppressed >= 0:
        logits = logits.copy()
        logits[suppressed] = -np.inf
    best = int(np.argmax(logits))
    if temperature == 0 or 1.0 / temperature > float(np.finfo(np.float32).max):  # 1/T overflows: greedy
        return best
    # float32 like the C++ sampler; the cumulative sums below are float64 in both.
    weights = np.exp((logits - logits[best]) * np.float32(1.0 / temperature))
    order = np.arange(len(weights))
    if top_k > 0 or top_p < 1.0:
        order = np.argsort(-weights, kind="stable")  # descending, ties by id
        if 0 < top_k < len(order):
            order = order[:top_k]
        if top_p < 1.0:
            cumulative = np.cumsum(weights[order], dtype=np.float64)
            order = order[: int(np.searchsorted(cumulative, top_p * cumulative[-1])) + 1]
    kept = weights[order]
    cumulative = np.cumsum(kept, dtype=np.float64)
    target = rng.uniform() * cumulative[-1]
    return int(order[min(int(np.searchsorted(cumulative, target, side="right")), len(order) - 1)])


def _draw(weights, rng):
    """The first index whose cumulative weight exceeds u * total, u ~ U[0, 1) (float64 sums)."""
    cumulative = np.cumsum(weights, dtype=np.float64)
    target = rng.uniform() * cumulative[-1]
    return min(int(np.searchsorted(cumulative, target, side="right")), len(weights) - 1)


def adaptive_sample_token(h, params, temperature, top_k, top_p, rng):
    """One id from an adaptive softmax decoder (the state_dict's decoder.*) after the top state h (H,).

    Greedy: the arg-max of the full distribution. top_k / top_p: sample_token on the full
    log-probabilities. Otherwise an exact draw from p(w)^(1/T) that computes only the tails it
    needs: p(w)^(1/T) = p_head(c)^(1/T) Z_c p_T(w | c) with Z_c = sum_w p(w | c)^(1/T) <= bound_c
    (1 for T <= 1, size_c^(1 - 1/T) above), so a cluster proposed from p_head(c)^(1/T) bound_c is
    accepted with probability Z_c / bound_c, and on rejection its bound becomes Z_c (the C++
    sampler's algorithm, drawing the same numbers).
    """
    head_weight, head_bias, projs, outs = _adaptive_decoder(params)
    n = len(outs)
    starts = _cluster_starts(head_weight, outs)
    c1 = int(starts[0])
    head = _head_log_prob(h[None], head_weight, head_bias)[0]
    tails = {}

    def tail(i):
        if i not in tails:
            logits = (h @ projs[i].T) @ outs[i].T
            if not np.all(np.isfinite(logits)):
                raise FloatingPointError(
                    "the adaptive decoder's logits hold NaN or infinity: the weights overflow float32"
                )
            tails[i] = _log_softmax(logits[None])[0]
        return tails[i]

    if not (np.all(np.isfinite(head)) and np.all(np.isfinite(h))):
        raise FloatingPointError("the adaptive decoder's logits hold NaN or infinity: the weights overflow float32")
    if temperature == 0 or 1.0 / temperature > float(np.finfo(np.float32).max):  # 1/T overflows: greedy
        best = int(np.argmax(head[:c1]))
        best_lp = head[best]
        for i in range(n):
            if head[c1 + i] > best_lp:
                arg = int(np.argmax(tail(i)))
                if head[c1 + i] + tail(i)[arg] > best_lp:
                    best, best_lp = int(starts[i]) + arg, head[c1 + i] + tail(i)[arg]
        return best
    if top_k > 0 or top_p < 1.0:
        full = np.concatenate([head[:c1]] + [tail(i) + head[c1 + i] for i in range(n)])
        return sample_token(full, temperature, top_k, top_p, rng)
    inv_t = np.float32(1.0 / temperature)
    sizes = np.diff(starts).astype(np.float64)
    bound = sizes ** (1.0 - 1.0 / temperature) if temperature > 1.0 else np.ones(n)
    weights = np.exp((head - head.max()) * inv_t).astype(np.float64)
    while True:
        j = _draw(np.concatenate([weights[:c1], weights[c1:] * bound]), rng)
        if j < c1:
            return j
        i = j - c1
        known = i in tails
        if temperature != 1.0 and not known:
            z = float(np.sum(np.exp(tail(i) * inv_t), dtype=np.float64))
            accepted = rng.uniform() * bound[i] < z
            bound[i] = z
            if not accepted:
                continue
        t = tail(i)
        return int(starts[i]) + _draw(np.exp((t - t.max()) * inv_t), rng)


def _adaptive_decoder(params):
    """An adaptive decoder's weights from the state_dict: (head_weight, head_bias, proj_weights, out_weights)."""
    n = sum(1 for name in params if name.startswith("decoder.tail.") and name.endswith(".0.weight"))
    return (
        params["decoder.head.weight"],
        params.get("decoder.head.bias"),
        [params[f"decoder.tail.{i}.0.weight"] for i in range(n)],
        [params[f"decoder.tail.{i}.1.weight"] for i in range(n)],
    )


def _lstm_stack(params, num_layers, x, h0, c0):
    """The embedding and every LSTM layer over the ids x (B, T), layer k from the state h0[k],
    c0[k] (B, H): the top layer's hs (B, T, H) and the lists (h_n, c_n) of each layer's state
    after the last step."""
    layer = params["embedding.weight"][x]
    h_n, c_n = [], []
    for k in range(num_layers):
        layer, cs, _ = lstm_forward(
            layer,
            params[f"lstm.weight_ih_l{k}"],
            params[f"lstm.weight_hh_l{k}"],
            params[f"lstm.bias_ih_l{k}"],
            params[f"lstm.bias_hh_l{k}"],
            h0[k],
            c0[k],
        )
        h_n.append(layer[:, -1])
        c_n.append(cs[:, -1])
    return layer, h_n, c_n


def _decoder_scores(params, rows, targets):
    """output_scores of the hidden rows (N, H) through the model's decoder, full or adaptive."""
    if "decoder.head.weight" in params:
        return adaptive_output_scores(rows, *_adaptive_decoder(params), targets)
    return output_scores(rows, params["decoder.weight"], params["decoder.bias"], targets)


def _lstm_step(params, num_layers, h, c, tokens):
    """Feed one token per row through every layer, updating the states h, c (lists per layer)."""
    _, h[:], c[:] = _lstm_stack(params, num_layers, tokens[:, None], h, c)


class GenerationSession:
    """A generation in progress (the C++ class's twin): the state after the prompt
    (samples, length >= 1), one SplitMix64(seed + s) per sample; next(count) continues,
    probabilities() gives the next-token distribution without drawing."""

    def __init__(self, params, num_layers, prompt, temperature=1.0, top_k=0, top_p=1.0, seed=0, suppressed=-1):
        prompt = np.asarray(prompt)
        self.params, self.num_layers = params, num_layers
        self.sampling = (temperature, top_k, top_p)
        self.suppressed = suppressed
        samples = prompt.shape[0]
        H = params["lstm.weight_hh_l0"].shape[1]
        self.h = [np.zeros((samples, H), np.float32) for _ in range(num_layers)]
        self.c = [np.zeros((samples, H), np.float32) for _ in range(num_layers)]
        for p in range(prompt.shape[1]):
            _lstm_step(params, num_layers, self.h, self.c, prompt[:, p])
        self.rngs = [SplitMix64(seed + s) for s in range(samples)]
        self.pending = None  # the tokens drawn last, fed to the LSTM when the next is asked for
        self.drawn = 0

    def _advance(self):
        if self.pending is not None:
            _lstm_step(self.params, self.num_layers, self.h, self.c, self.pending)
            self.pending = None

    def _adaptive_sample(self, h, rng):
        """An adaptive decoder's draw, drawn again while it is the suppressed id (as in C++)."""
        for _ in range(1000):
            token = adaptive_sample_token(h, self.params, *self.sampling, rng)
            if token != self.suppressed:
                return token
            if self.sampling[0] == 0:
                break
        raise ValueError(
            "the suppressed token (<unk>) is this adaptive model's choice at every draw: "
            "generate with suppress_unk=False"
        )

    def _logits(self):
        self._advance()
        logits = self.h[-1] @ self.params["decoder.weight"].T + self.params["decoder.bias"]
        if not np.all(np.isfinite(logits)):
            bad = int(np.nonzero(~np.all(np.isfinite(logits), axis=1))[0][0])
            raise FloatingPointError(
                f"the logits at new token {self.drawn + 1} of sample {bad} hold NaN or "
                "infinity: the weights overflow float32"
            )
        return logits

    def next(self, count):
        out = np.empty((len(self.rngs), count), dtype=np.int32)
        for n in range(count):
            if "decoder.head.weight" in self.params:
                self._advance()
                out[:, n] = [self._adaptive_sample(self.h[-1][s], rng) for s, rng in enumerate(self.rngs)]
            else:
                logits = self._logits()
                out[:, n] = [
                    sample_token(logits[s], *self.sampling, rng, self.suppressed) for s, rng in enumerate(self.rngs)
                ]
            self.pending = out[:, n]
            self.drawn += 1
        return out

    def probabilities(self):
        if "decoder.head.weight" in self.params:
            self._advance()
            return np.exp(adaptive_log_prob(self.h[-1], *_adaptive_decoder(self.params))).astype(np.float32)
        logits = self._logits().astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def generate(params, num_layers, prompt, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, seed=0, suppressed=-1):
    """Sample max_new_tokens ids after each row of prompt (samples, length >= 1).

    params: the state_dict. The state starts at zero and is warmed by the prompt;
    sample s draws from SplitMix64(seed + s); suppressed (>= 0) is an id never drawn.
    Returns (samples, max_new_tokens) int32.
    """
    prompt = np.asarray(prompt)
    if max_new_tokens == 0:
        return np.empty((prompt.shape[0], 0), dtype=np.int32)
    session = GenerationSession(params, num_layers, prompt, temperature, top_k, top_p, seed, suppressed)
    return session.next(max_new_tokens)


# ---------------------------------------------------------------- scoring


def score_sequences(params, num_layers, ids, offsets, bos=-1, batch_size=256):
    """Score the sequences ids[offsets[i]:offsets[i + 1]], each from a zero state.

    With bos >= 0 every token is predicted, the first from bos; with bos = -1 the first
    token is context only. Returns, per scored token in sequence order: log_probs (natural
    log of the target's probability), predictions (arg-max ids) and ranks (how many ids have
    a larger logit than the target). A group of batch_size sequences runs as one padded
    batch: the LSTM is causal, so padding after a sequence's end changes none of its scores.
    """
    ids, offsets = np.asarray(ids), np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    if bos >= 0:
        inputs = [np.concatenate([[bos], ids[a : b - 1]]) if b > a else ids[a:a] for a, b in zip(offsets, offsets[1:])]
        targets = [ids[a:b] for a, b in zip(offsets, offsets[1:])]
    else:
        inputs = [ids[a : b - 1] for a, b in zip(offsets, offsets[1:])]
        targets = [ids[a + 1 : b] for a, b in zip(offsets, offsets[1:])]
    steps = np.array([len(t) for t in targets], dtype=np.int64)
    log_probs, predictions, ranks = [], [], []
    for g in range(0, len(lengths), batch_size):
        group = range(g, min(g + batch_size, len(lengths)))
        T = int(max((steps[i] for i in group), default=0))
        if T == 0:
            continue
        x = np.zeros((len(group), T), dtype=np.int64)
        valid = np.zeros((len(group), T), dtype=bool)
        y = np.zeros((len(group), T), dtype=np.int64)
        for r, i in enumerate(group):
            x[r, : steps[i]], y[r, : steps[i]], valid[r, : steps[i]] = inputs[i], targets[i], True
        zeros = [np.zeros((len(group), params["lstm.weight_hh_l0"].shape[1]), np.float32)] * num_layers
        layer, _, _ = _lstm_stack(params, num_layers, x, zeros, zeros)
        scores = _decoder_scores(params, layer[valid], y[valid])  # row-major: sequence by sequence, in order
        for out, value in zip((log_probs, predictions, ranks), scores):
            out.append(value)
    if not log_probs:
        return np.empty(0, np.float32), np.empty(0, np.int32), np.empty(0, np.int32)
    return np.concatenate(log_probs), np.concatenate(predictions), np.concatenate(ranks)


def score_streams(params, num_layers, x, y, h0=None, c0=None):
    """Streams continued from a given state, for reading a long text in pieces: x and y
    (B, T) stream b's inputs and targets, h0 and c0 (num_layers, B, H) the state before
    the first step (None: zeros). Returns log_probs, predictions and ranks (B, T), as
    score_sequences defines them, and the state after the last step, h_n and c_n
    (num_layers, B, H): passed as the next call's h0, c0 it continues every stream."""
    x, y = np.asarray(x), np.asarray(y)
    B, T = x.shape
    H = params["lstm.weight_hh_l0"].shape[1]
    h0 = np.zeros((num_layers, B, H), np.float32) if h0 is None else np.asarray(h0, np.float32)
    c0 = np.zeros((num_layers, B, H), np.float32) if c0 is None else np.asarray(c0, np.float32)
    layer, h_n, c_n = _lstm_stack(params, num_layers, x, h0, c0)
    scores = _decoder_scores(params, layer.reshape(B * T, H), y.reshape(-1))
    log_probs, predictions, ranks = (a.reshape(B, T) for a in scores)
    return log_probs, predictions, ranks, np.stack(h_n), np.stack(c_n)


def prediction_counts(targets, predictions, vocab_size):
    """(3, vocab_size) int64: per token id, the true positives (predicted and right), the
    predictions and the targets, from which per-token precision and recall follow."""
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    return np.stack(
        [
            np.bincount(targets[predictions == targets], minlength=vocab_size),
            np.bincount(predictions, minlength=vocab_size),
            np.bincount(targets, minlength=vocab_size),
        ]
    ).astype(np.int64)
