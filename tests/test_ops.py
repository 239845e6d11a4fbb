"""C++ ops against their NumPy twins: one table-driven harness, after ggml's test-backend-ops.

Every op of ``fastlm._core`` has a twin of the same name and signature in
``fastlm.reference``. A case names an op and its shapes; ``test_op`` builds seeded random
float32 inputs for it, runs both twins on private copies (several ops work in place) and
compares every output. Adding an op means adding one entry to ``OPS`` (how to build its
inputs and name its outputs); testing another shape means adding one row to ``CASES``.

The same table drives ``test_op_deterministic``: the C++ op run twice, and with one and
with two threads, must give bit-identical results.

Below the table: the model-level checks (C++ vs NumPy backend gradients, state_dict
round trips, determinism of whole-model gradients).
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import fastlm
from fastlm import _core, reference

# ------------------------------------------------------------------ tolerances

# Normalised error of a float output: max|cpp - ref| / max|ref|, i.e. the worst absolute
# difference measured against that output's own scale (not against 1, which would hide
# errors in small outputs such as the 1/N-scaled loss gradients or Adam's second moment).
# Both sides compute in float32 (unit roundoff 6e-8) but sum in different orders (blocked
# GEMM vs BLAS, double vs float accumulators) and use different exp/tanh (a ~2-ulp
# polynomial vs libm). Reductions of a few hundred terms then differ by a few 1e-7 of the
# output's scale; 1e-5 leaves an order of magnitude of headroom and still catches any
# wrong index, missing term, dropped chunk or lost bias, which show up at 1e-3 or above.
TOL = 1e-5

# Scalars (the mean loss, the gradient norm) are checked with the same normalised
# error, |cpp - ref| / max(|ref|, 1), against the same bound.
SCALAR_TOL = 1e-5

# Arg-max predictions must agree exactly, except in rows where the two chosen logits are
# tied to within the float32 noise of computing a logit: both picks must then lie within
# TIE_TOL * max(1, max|logit|) of each other (logits recomputed in float64).
TIE_TOL = 1e-5

# ------------------------------------------------------------------ comparison


def normalised_error(cpp, ref):
    cpp = np.asarray(cpp, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert cpp.shape == ref.shape, f"shape {cpp.shape} != reference shape {ref.shape}"
    assert np.all(np.isfinite(cpp)), "C++ output holds NaN or infinity"
    if ref.size == 0:
        return 0.0
    scale = float(np.max(np.abs(ref)))
    diff = float(np.max(np.abs(cpp - ref)))
    return diff / scale if scale > 0 else diff


def scalar_error(cpp, ref):
    return abs(float(cpp) - float(ref)) / max(abs(float(ref)), 1.0)


# Largest error seen per (op, output), printed at the end of the run with -s / -rA.
OBSERVED: dict = {}


def _record(op, name, err):
    key = (op, name)
    OBSERVED[key] = max(err, OBSERVED.get(key, 0.0))


# ------------------------------------------------------------------ input builders
#
# A builder takes a seeded Generator and the case's shapes and returns Inputs: the
# positional and keyword arguments of the op. Ops run either as one call (the default)
# or through Op.run, for in-place ops that are called several times.


@dataclass
class Inputs:
    args: list
    kwargs: dict = field(default_factory=dict)


def uniform(rng, shape, scale=1.0):
    return (scale * rng.uniform(-1.0, 1.0, shape)).astype(np.float32)


def normal(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def build_embedding_forward(rng, V, E, B, T):
    return Inputs([normal(rng, (V, E)), rng.integers(0, V, (B, T), dtype=np.int32)])


def build_embedding_backward(rng, V, E, B, T):
    # V small against B*T makes ids repeat, so rows accumulate several positions.
    return Inputs([normal(rng, (B, T, E)), rng.integers(0, V, (B, T), dtype=np.int32), V])


def lstm_inputs(rng, B, T, I, H, scale=1.0, state="random"):
    """x, weights and initial state of one layer; scale > 1 saturates the gates."""
    bound = scale / math.sqrt(H)
    x = uniform(rng, (B, T, I))
    w_ih, w_hh = uniform(rng, (4 * H, I), bound), uniform(rng, (4 * H, H), bound)
    b_ih, b_hh = uniform(rng, (4 * H,), bound), uniform(rng, (4 * H,), bound)
    if state == "zero":
        h0 = c0 = np.zeros((B, H), np.float32)
    else:
        h0, c0 = uniform(rng, (B, H)), uniform(rng, (B, H))
    return x, w_ih, w_hh, b_ih, b_hh, h0, c0


def build_lstm_forward(rng, B, T, I, H, scale=1.0, state="random"):
    return Inputs(list(lstm_inputs(rng, B, T, I, H, scale, state)))


def build_lstm_backward(rng, B, T, I, H, scale=1.0, state="random", final_grads=False):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = lstm_inputs(rng, B, T, I, H, scale, state)
    hs, cs, gates = reference.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    dhs = normal(rng, (B, T, H))
    dh_n, dc_n = (normal(rng, (B, H)), normal(rng, (B, H))) if final_grads else (None, None)
    return Inputs([dhs, dh_n, dc_n, x, w_ih, w_hh, h0, c0, hs, cs, gates])


def output_inputs(rng, N, H, V, scale=1.0, ties=False):
    """Hidden rows in (-1, 1) like tanh outputs; logits of std ~ scale * sqrt(H / 9).

    ties=True repeats the first half of the vocabulary's rows in the second half, so every
    row's largest logit occurs twice: the arg-max is then decided by tie-breaking alone.
    """
    h = uniform(rng, (N, H))
    weight, bias = uniform(rng, (V, H), scale), uniform(rng, (V,), scale)
    if ties:
        half = V // 2
        weight[half : 2 * half], bias[half : 2 * half] = weight[:half], bias[:half]
    targets = rng.integers(0, V, N, dtype=np.int32)
    return h, weight, bias, targets


def build_output_loss_forward(rng, N, H, V, scale=1.0, ties=False):
    return Inputs(list(output_inputs(rng, N, H, V, scale, ties)))


def build_output_loss_backward(rng, N, H, V, scale=1.0):
    h, weight, bias, targets = output_inputs(rng, N, H, V, scale)
    _, lse, _ = reference.output_loss_forward(h, weight, bias, targets)
    return Inputs([h, weight, bias, targets, lse])


def build_output_loss_forward_backward(rng, N, H, V, scale=1.0):
    return Inputs(list(output_inputs(rng, N, H, V, scale)))


def adaptive_inputs(rng, N, H, cutoffs, V, widths, head_bias=True, scale=1.0, empty_cluster=False):
    """h, head, tails and targets of an adaptive softmax; targets Zipf-like so every cluster
    is hit (empty_cluster=True: none in the last cluster, whose gradients are then zero)."""
    h = uniform(rng, (N, H))
    head = uniform(rng, (cutoffs[0] + len(widths), H), scale)
    bias = uniform(rng, (cutoffs[0] + len(widths),), scale) if head_bias else None
    edges = list(cutoffs) + [V]
    projs = [uniform(rng, (d, H), scale) for d in widths]
    outs = [uniform(rng, (edges[i + 1] - edges[i], d), scale) for i, d in enumerate(widths)]
    high = cutoffs[-1] if empty_cluster else V
    targets = np.minimum(rng.zipf(1.2, N) - 1, high - 1).astype(np.int32)
    hit = edges[:-2] if empty_cluster else edges[:-1]  # each cluster's first word, where N allows
    targets[: min(N, len(hit))] = hit[:N]
    return h, head, bias, projs, outs, targets


def build_adaptive_loss_forward(rng, N, H, cutoffs, V, widths, **kw):
    return Inputs(list(adaptive_inputs(rng, N, H, cutoffs, V, widths, **kw)))


def build_adaptive_log_prob(rng, N, H, cutoffs, V, widths, **kw):
    return Inputs(list(adaptive_inputs(rng, N, H, cutoffs, V, widths, **kw))[:5])


def run_adaptive_forward_backward(fn, inputs):
    loss, dh, dhead, dbias, dprojs, douts = fn(*inputs.args)
    assert (dbias is None) == (inputs.args[2] is None)
    out = {"loss": loss, "dh": dh, "dhead_weight": dhead}
    if dbias is not None:
        out["dhead_bias"] = dbias
    out.update({f"dproj_weights[{i}]": g for i, g in enumerate(dprojs)})
    out.update({f"dout_weights[{i}]": g for i, g in enumerate(douts)})
    return out


def build_embedding_backward_sparse(rng, V, E, B, T):
    return Inputs([normal(rng, (B, T, E)), rng.integers(0, V, (B, T), dtype=np.int32)])


def build_sparse_adam_update(rng, V, E, steps, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    # Each step updates a different subset of rows; moments live in slots, a row's slot
    # fixed from the first step that sees it (slots deliberately not in id order).
    param = uniform(rng, (V, E))
    slot_of = rng.permutation(V).astype(np.int32)
    batches = []
    for _ in range(steps):
        rows = np.sort(rng.choice(V, size=max(1, V // 3), replace=False)).astype(np.int32)
        batches.append((rows, normal(rng, (len(rows), E), 0.1), slot_of[rows]))
    m, v = np.zeros((V, E), np.float32), np.zeros((V, E), np.float32)
    return Inputs([param, batches, m, v], dict(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps))


def run_sparse_adam_update(fn, inputs):
    param, batches, m, v = inputs.args
    for step, (rows, grad, slots) in enumerate(batches, start=1):
        assert fn(param, rows, grad, m, v, slots, step, **inputs.kwargs) is None
    return {"param": param, "m": m, "v": v}


def build_sparse_sgd_update(rng, V, E, steps, lr=0.1):
    # Each step updates a different subset of rows, in place.
    param = uniform(rng, (V, E))
    batches = []
    for _ in range(steps):
        rows = np.sort(rng.choice(V, size=max(1, V // 3), replace=False)).astype(np.int32)
        batches.append((rows, normal(rng, (len(rows), E), 0.1)))
    return Inputs([param, batches], dict(lr=lr))


def run_sparse_sgd_update(fn, inputs):
    param, batches = inputs.args
    for rows, grad in batches:
        assert fn(param, rows, grad, **inputs.kwargs) is None
    return {"param": param}


def build_gather_windows(rng, length, seq_len, count, dtype=np.int32, high=1000):
    ids = rng.integers(0, high, length).astype(dtype)
    starts = rng.integers(0, length - seq_len, count)
    return Inputs([ids, starts, seq_len])


def build_adam_update(rng, shape, steps, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8):
    # One gradient per step; m and v start at zero, as in a fresh optimizer.
    param = uniform(rng, shape)
    grads = [normal(rng, shape, 0.1) for _ in range(steps)]
    m, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    return Inputs([param, grads, m, v], dict(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay))


def run_adam_update(fn, inputs):
    param, grads, m, v = inputs.args
    for step, grad in enumerate(grads, start=1):
        assert fn(param, grad, m, v, step, **inputs.kwargs) is None
    return {"param": param, "m": m, "v": v}


def row_subsets(rng, V, steps):
    """Each step's rows of a gradient in row form: distinct and increasing, a different
    subset each step (none, one, all, and about a third of V among them)."""
    sizes = [max(1, V // 3), 0, V, 1][:steps] + [max(1, V // 3)] * max(0, steps - 4)
    return [np.sort(rng.choice(V, size=n, replace=False)).astype(np.int32) for n in sizes]


def build_adam_update_rows(rng, V, E, steps, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8):
    # m and v start at zero, as in a fresh optimizer; rows without a gradient still move.
    param = uniform(rng, (V, E))
    batches = [(rows, normal(rng, (len(rows), E), 0.1)) for rows in row_subsets(rng, V, steps)]
    m, v = np.zeros((V, E), np.float32), np.zeros((V, E), np.float32)
    return Inputs(
        [param, batches, m, v], dict(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay)
    )


def run_adam_update_rows(fn, inputs):
    param, batches, m, v = inputs.args
    for step, (rows, grad) in enumerate(batches, start=1):
        assert fn(param, rows, grad, m, v, step, **inputs.kwargs) is None
    return {"param": param, "m": m, "v": v}


def build_sgd_update_rows(rng, V, E, steps, lr=0.5, momentum=0.0, weight_decay=0.0, nesterov=False):
    # The buffer starts as garbage, which the first step must overwrite (rows without gradient included).
    param = uniform(rng, (V, E))
    batches = [(rows, normal(rng, (len(rows), E), 0.1)) for rows in row_subsets(rng, V, steps)]
    buf = normal(rng, (V, E), 100.0)
    return Inputs([param, batches, buf], dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))


def run_sgd_update_rows(fn, inputs):
    param, batches, buf = inputs.args
    for step, (rows, grad) in enumerate(batches, start=1):
        assert fn(param, rows, grad, buf, step, **inputs.kwargs) is None
    return {"param": param, **({"buf": buf} if inputs.kwargs["momentum"] else {})}


def build_sgd_update(rng, shape, steps, lr=0.5, momentum=0.0, weight_decay=0.0, nesterov=False):
    # One gradient per step; the buffer starts as garbage, which the first step must overwrite.
    param = uniform(rng, shape)
    grads = [normal(rng, shape, 0.1) for _ in range(steps)]
    buf = normal(rng, shape, 100.0)
    return Inputs([param, grads, buf], dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))


def run_sgd_update(fn, inputs):
    param, grads, buf = inputs.args
    for step, grad in enumerate(grads, start=1):
        assert fn(param, grad, buf, step, **inputs.kwargs) is None
    outputs = {"param": param}
    if inputs.kwargs["momentum"]:
        outputs["buf"] = buf
    return outputs


def build_clip_grad_norm(rng, shapes, max_norm):
    return Inputs([[normal(rng, shape) for shape in shapes], max_norm])


def run_clip_grad_norm(fn, inputs):
    grads, max_norm = inputs.args
    norm = fn(grads, max_norm)
    assert isinstance(norm, float)
    return {"norm": norm, **{f"grads[{i}]": g for i, g in enumerate(grads)}}


def build_clip_grad_norm_rows(rng, shapes, V, E, count, max_norm):
    # The gradient in row form (count rows of a (V, E) one) between two dense ones.
    rows = np.sort(rng.choice(V, size=count, replace=False)).astype(np.int32)
    grads = [normal(rng, shapes[0]), (rows, normal(rng, (count, E)), V), normal(rng, shapes[1])]
    return Inputs([grads, max_norm])


def run_clip_grad_norm_rows(fn, inputs):
    grads, max_norm = inputs.args
    norm = fn(grads, max_norm)
    assert isinstance(norm, float)
    arrays = [g[1] if isinstance(g, tuple) else g for g in grads]
    return {"norm": norm, **{f"grads[{i}]": g for i, g in enumerate(arrays)}}


def build_clipped_sgd_update(
    rng, shapes, steps, max_norm, lr=0.5, momentum=0.0, weight_decay=0.0, nesterov=False, row_form=False
):
    # One list of gradients per step; the buffers start as garbage, which the first step must
    # overwrite. row_form: the first parameter's gradient in row form (rows, values).
    params = [uniform(rng, shape) for shape in shapes]
    grads = [[normal(rng, shape, 0.1) for shape in shapes] for _ in range(steps)]
    if row_form:
        V, E = shapes[0]
        for step_grads, rows in zip(grads, row_subsets(rng, V, steps)):
            step_grads[0] = (rows, normal(rng, (len(rows), E), 0.1))
    bufs = [normal(rng, shape, 100.0) for shape in shapes] if momentum else None
    kwargs = dict(max_norm=max_norm, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    return Inputs([params, grads, bufs], kwargs)


def run_clipped_sgd_update(fn, inputs):
    params, grads, bufs = inputs.args
    outputs = {}
    for step, step_grads in enumerate(grads, start=1):
        before = copy.deepcopy(step_grads)
        outputs[f"norm[{step}]"] = fn(params, step_grads, bufs, step, **inputs.kwargs)
        for g, b in zip(step_grads, before):
            assert all(np.array_equal(x, y) for x, y in zip(g, b)), "the gradients were changed"
    outputs.update({f"params[{i}]": p for i, p in enumerate(params)})
    outputs.update({f"bufs[{i}]": b for i, b in enumerate(bufs or [])})
    return outputs


def build_windows(rng, length, seq_len, stride=1, dtype="int32"):
    return Inputs([rng.integers(0, 1009, length).astype(dtype), seq_len, stride])


def build_score_sequences(rng, V, E, H, layers, lengths, repeat=1, bos=-1, batch_size=256, scale=1.0):
    """A random model's state_dict and sequences of the given lengths (repeated), in that order."""
    model = fastlm.LSTMLM(V, E, H, layers, seed=int(rng.integers(1 << 30)))
    params = model.state_dict()
    params["decoder.weight"] *= np.float32(scale)
    lengths = np.tile(np.asarray(list(lengths)), repeat)
    ids = rng.integers(0, V, int(lengths.sum()), dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Inputs([params, layers, ids, offsets, bos, batch_size])


def build_score_streams(rng, V, E, H, layers, B, T, state="random", cutoffs=None, target_words=None):
    """A random model's state_dict, B streams of T inputs and targets, and a state to continue
    from (state="zero": h0 and c0 left out, the op's default). target_words: targets drawn
    from the first target_words words only (ranks of a large vocabulary's rare words have
    float32 near ties by the dozen in an untrained model; its frequent words' have none)."""
    model = fastlm.LSTMLM(V, E, H, layers, seed=int(rng.integers(1 << 30)), cutoffs=cutoffs)
    x = rng.integers(0, V, (B, T), dtype=np.int32)
    y = rng.integers(0, target_words or V, (B, T), dtype=np.int32)
    kwargs = {} if state == "zero" else dict(h0=uniform(rng, (layers, B, H)), c0=uniform(rng, (layers, B, H)))
    return Inputs([model.state_dict(), layers, x, y], kwargs)


def build_prediction_counts(rng, V, n):
    targets = rng.integers(0, V, n, dtype=np.int32)
    predictions = np.where(rng.random(n) < 0.3, targets, rng.integers(0, V, n)).astype(np.int32)
    return Inputs([targets, predictions, V])


# ------------------------------------------------------------------ the op table


def run_call(fn, inputs):
    return fn(*inputs.args, **inputs.kwargs)


@dataclass
class Op:
    build: Callable
    outputs: tuple  # names of the outputs, in the order the op returns them
    run: Callable = run_call  # fn, Inputs -> tuple of outputs, or a dict name -> output
    exact: tuple = ()  # outputs that must be bit-identical to the reference
    near_ties: tuple = ()  # integer outputs decided by comparing logits: see check_near_ties
    # integer outputs of an output layer given (h, weight, bias, targets), checked against its
    # logits recomputed in float64: check_predictions for an arg-max, check_ranks for ranks
    by_logits: tuple = ()


OPS = {
    "embedding_forward": Op(build_embedding_forward, ("out",), exact=("out",)),
    "embedding_backward": Op(build_embedding_backward, ("dweight",)),
    "lstm_forward": Op(build_lstm_forward, ("hs", "cs", "gates")),
    "lstm_backward": Op(build_lstm_backward, ("dx", "dw_ih", "dw_hh", "db", "dh0", "dc0")),
    "output_loss_forward": Op(build_output_loss_forward, ("loss", "lse", "predictions")),
    "output_loss_backward": Op(build_output_loss_backward, ("dh", "dweight", "dbias")),
    "output_loss_forward_backward": Op(build_output_loss_forward_backward, ("loss", "dh", "dweight", "dbias")),
    "adaptive_loss_forward": Op(build_adaptive_loss_forward, ("loss", "log_prob", "predictions")),
    "adaptive_loss_forward_backward": Op(build_adaptive_loss_forward, (), run=run_adaptive_forward_backward),
    "adaptive_log_prob": Op(build_adaptive_log_prob, ("log_prob",)),
    "embedding_backward_sparse": Op(build_embedding_backward_sparse, ("rows", "grad"), exact=("rows",)),
    "sparse_adam_update": Op(build_sparse_adam_update, ("param", "m", "v"), run=run_sparse_adam_update),
    "sparse_sgd_update": Op(build_sparse_sgd_update, ("param",), run=run_sparse_sgd_update),
    "gather_windows": Op(build_gather_windows, ("x", "y"), exact=("x", "y")),
    "adam_update": Op(build_adam_update, ("param", "m", "v"), run=run_adam_update),
    "adam_update_rows": Op(build_adam_update_rows, ("param", "m", "v"), run=run_adam_update_rows),
    "sgd_update": Op(build_sgd_update, ("param", "buf"), run=run_sgd_update),
    "sgd_update_rows": Op(build_sgd_update_rows, ("param", "buf"), run=run_sgd_update_rows),
    "clip_grad_norm": Op(build_clip_grad_norm, ("norm",), run=run_clip_grad_norm),
    "clip_grad_norm_rows": Op(build_clip_grad_norm_rows, ("norm",), run=run_clip_grad_norm_rows),
    "clipped_sgd_update": Op(build_clipped_sgd_update, (), run=run_clipped_sgd_update),
    "windows": Op(build_windows, ("x", "y"), exact=("x", "y")),
    "score_sequences": Op(build_score_sequences, ("log_probs", "argmax", "ranks"), near_ties=("argmax", "ranks")),
    "score_streams": Op(
        build_score_streams, ("log_probs", "argmax", "ranks", "h_n", "c_n"), near_ties=("argmax", "ranks")
    ),
    "output_scores": Op(build_output_loss_forward, ("log_probs", "argmax", "ranks"), by_logits=("argmax", "ranks")),
    "prediction_counts": Op(build_prediction_counts, ("counts",), exact=("counts",)),
}

# GEMM blocking on this build: register tiles up to 8 x 32, row blocks of MC = 128,
# depth blocks of KC = 256, work split over threads above 2**15 multiply-adds. The big
# cases have rows > 128, K > 256 and widths that are no multiple of 8 or 16.
CASES = [
    # op, shapes
    ("embedding_forward", dict(V=1009, E=19, B=3, T=5)),
    ("embedding_forward", dict(V=2, E=1, B=1, T=1)),
    ("embedding_forward", dict(V=100003, E=37, B=33, T=17)),
    ("embedding_backward", dict(V=1009, E=19, B=3, T=5)),
    ("embedding_backward", dict(V=3, E=1, B=1, T=1)),
    ("embedding_backward", dict(V=5, E=130, B=33, T=17)),  # repeats; threads over column slices
    ("lstm_forward", dict(B=1, T=1, I=19, H=37)),
    ("lstm_forward", dict(B=1, T=7, I=19, H=37, state="zero")),
    ("lstm_forward", dict(B=3, T=5, I=19, H=37)),
    ("lstm_forward", dict(B=3, T=5, I=37, H=37)),  # a second layer's input width, I = H
    # Saturated gates: weights x20, pre-activations of std ~14. Only a few steps: at x20 the
    # recurrence amplifies float32 rounding ~1.7x per step (at T=6 the NumPy float32 twin is
    # itself 8e-6 away from float64, the C++ op 2e-5), which tests conditioning, not the op.
    ("lstm_forward", dict(B=4, T=3, I=19, H=37, scale=20.0)),
    ("lstm_forward", dict(B=64, T=1, I=37, H=37, scale=20.0)),
    ("lstm_forward", dict(B=33, T=17, I=257, H=130)),  # GEMM blocking, threaded cells
    ("lstm_forward", dict(B=33, T=5, I=512, H=20)),  # K = 512: the largest single k block
    ("lstm_forward", dict(B=2, T=3, I=700, H=20)),  # one tile of rows: K = 700 in one k block
    ("lstm_forward", dict(B=20, T=5, I=19, H=64)),  # two threads: 10 + 10 rows, row-invariant
    # W_hh (4H x H = 1056 x 264) past RowShare's L2 bound, B = 32 split by rows on two threads:
    # each thread's panels first to last and last to first at alternate steps.
    ("lstm_forward", dict(B=32, T=4, I=19, H=264)),
    ("lstm_backward", dict(B=1, T=1, I=19, H=37)),
    ("lstm_backward", dict(B=1, T=1, I=19, H=37, final_grads=True)),
    ("lstm_backward", dict(B=3, T=5, I=19, H=37)),
    ("lstm_backward", dict(B=3, T=5, I=19, H=37, final_grads=True)),
    ("lstm_backward", dict(B=3, T=5, I=37, H=37, final_grads=True, state="zero")),
    ("lstm_backward", dict(B=4, T=6, I=19, H=37, scale=20.0)),  # saturated gates
    ("lstm_backward", dict(B=4, T=6, I=19, H=37, scale=20.0, final_grads=True)),
    ("lstm_backward", dict(B=33, T=17, I=257, H=130, final_grads=True)),
    # 4H = 64 gate rows, one row block: the two threads split the panels of dW_ih, dW_hh and db,
    # which come from one product; I = 40 puts the split inside dW_ih's panels.
    ("lstm_backward", dict(B=4, T=9, I=40, H=16, final_grads=True)),
    # 4H = 256: the gate gradients' rows padded (leading dimension 272); B = 33: each of two
    # threads its own rows through the recurrence.
    ("lstm_backward", dict(B=33, T=4, I=19, H=64, final_grads=True)),
    # 4H = 80 = 6 x 13 + 2: AVX2's last tile of gate rows has two k-chains, db comes from the
    # product against a column of ones; the other kernels sum the columns.
    ("lstm_backward", dict(B=3, T=5, I=19, H=20)),
    # Two threads, 6 + 6 rows each computed row-invariant: the k blocks of K = 4H = 544 must
    # be the whole product's (3 of 184), not those of a single tile of rows (one of 544).
    ("lstm_backward", dict(B=12, T=4, I=19, H=136, final_grads=True)),
    ("lstm_backward", dict(B=20, T=5, I=19, H=64)),
    ("output_loss_forward", dict(N=1, H=19, V=2)),
    ("output_loss_forward", dict(N=15, H=37, V=1009)),
    ("output_loss_forward", dict(N=15, H=37, V=1009, scale=20.0)),  # logits to ~190: exp needs the max shift
    ("output_loss_forward", dict(N=300, H=257, V=521)),  # rows > 128, K > 256
    ("output_loss_forward", dict(N=40, H=19, V=1009, ties=True)),  # exact arg-max ties, across vocabulary blocks
    ("output_loss_forward", dict(N=64, H=37, V=100003)),  # C++: 1042 vocabulary blocks of 96
    ("output_loss_forward", dict(N=300, H=37, V=20011)),  # C++: row blocks of 256 and 44
    ("output_loss_forward", dict(N=300, H=37, V=100003)),  # C++: row chunks of 256 and 44 (statistics bound)
    ("output_loss_forward", dict(N=600, H=19, V=65)),  # C++: one vocabulary block, rows split over threads
    ("output_loss_backward", dict(N=1, H=19, V=2)),
    ("output_loss_backward", dict(N=15, H=37, V=1009)),
    # Peaked softmax for the gradient at x4 (logits up to ~33, top probabilities up to 0.99),
    # not x20: a float32 logit z carries an absolute rounding of ~eps*|z|, so softmax values
    # (and the float32 lse input itself) are only good to ~eps*|z| relative. At x20 (|z| up
    # to 187) the NumPy float32 twin is itself 2e-5 from float64, and the C++ op 2.5e-5.
    # exp(z - lse) cannot overflow, so the large-logit path is the forward's (x20 above).
    ("output_loss_backward", dict(N=15, H=37, V=1009, scale=4.0)),
    ("output_loss_backward", dict(N=300, H=257, V=521)),
    ("output_loss_backward", dict(N=64, H=37, V=100003)),
    ("output_loss_backward", dict(N=300, H=37, V=20011)),
    ("output_loss_forward_backward", dict(N=1, H=19, V=2)),
    ("output_loss_forward_backward", dict(N=15, H=37, V=1009, scale=4.0)),
    ("output_loss_forward_backward", dict(N=300, H=257, V=521)),
    ("output_loss_forward_backward", dict(N=64, H=37, V=100003)),
    ("output_loss_forward_backward", dict(N=300, H=37, V=20011)),
    ("adaptive_loss_forward", dict(N=1, H=5, cutoffs=[2], V=4, widths=[3])),
    ("adaptive_loss_forward", dict(N=40, H=37, cutoffs=[50, 200], V=1009, widths=[9, 2], head_bias=False)),
    (
        "adaptive_loss_forward",
        dict(N=300, H=64, cutoffs=[100, 1000, 5000], V=20011, widths=[16, 4, 1], scale=4.0),
    ),  # peaked heads: many rows predict beyond the shortlist
    ("adaptive_loss_forward", dict(N=600, H=37, cutoffs=[30], V=1009, widths=[9], empty_cluster=True)),
    ("adaptive_loss_forward_backward", dict(N=1, H=5, cutoffs=[2], V=4, widths=[3])),
    ("adaptive_loss_forward_backward", dict(N=40, H=37, cutoffs=[50, 200], V=1009, widths=[9, 2], head_bias=False)),
    ("adaptive_loss_forward_backward", dict(N=300, H=64, cutoffs=[100, 1000, 5000], V=20011, widths=[16, 4, 1])),
    ("adaptive_loss_forward_backward", dict(N=600, H=37, cutoffs=[30, 500], V=1009, widths=[9, 2], empty_cluster=True)),
    # a tail wider than 64 (its logits stored) beside a thin one (recomputed)
    ("adaptive_loss_forward_backward", dict(N=200, H=300, cutoffs=[50, 400], V=3000, widths=[75, 18])),
    # a thin tail with more rows than one pass of its gradients takes (1024) and 16 groups
    ("adaptive_loss_forward_backward", dict(N=4000, H=8, cutoffs=[10], V=3000, widths=[4], head_bias=False)),
    # the thin layer's widest tail (64, W's) beside the narrowest stored one (65); clusters of 97
    # and 191 words: blocks of 96 and a one-word or 95-word last block, fewer blocks than groups
    ("adaptive_loss_forward_backward", dict(N=300, H=130, cutoffs=[20, 117], V=308, widths=[65, 64])),
    ("adaptive_log_prob", dict(N=1, H=5, cutoffs=[2], V=4, widths=[3])),
    ("adaptive_log_prob", dict(N=300, H=64, cutoffs=[100, 1000, 5000], V=20011, widths=[16, 4, 1])),
    ("embedding_backward_sparse", dict(V=1009, E=19, B=3, T=5)),
    ("embedding_backward_sparse", dict(V=3, E=1, B=1, T=1)),
    ("embedding_backward_sparse", dict(V=50, E=130, B=33, T=17)),  # repeats; threaded over rows
    ("sparse_adam_update", dict(V=37, E=19, steps=5)),
    ("sparse_adam_update", dict(V=1009, E=7, steps=3, lr=0.1, betas=(0.5, 0.9), eps=1e-6)),
    ("sparse_adam_update", dict(V=900, E=130, steps=3)),  # threaded
    ("sparse_sgd_update", dict(V=37, E=19, steps=5)),
    ("sparse_sgd_update", dict(V=3, E=1, steps=1, lr=1.0)),
    ("sparse_sgd_update", dict(V=900, E=130, steps=3, lr=0.5)),  # threaded
    ("gather_windows", dict(length=2, seq_len=1, count=1)),
    ("gather_windows", dict(length=1000, seq_len=7, count=64)),
    ("gather_windows", dict(length=100000, seq_len=100, count=1000)),  # threaded
    ("gather_windows", dict(length=1000, seq_len=7, count=64, dtype=np.uint16, high=65536)),  # a token file's ids
    ("gather_windows", dict(length=100000, seq_len=100, count=1000, dtype=np.uint16, high=65536)),  # threaded
    ("gather_windows", dict(length=1000, seq_len=7, count=64, dtype=np.int64)),  # converted
    ("adam_update", dict(shape=(37, 19), steps=5)),
    ("adam_update", dict(shape=(37, 19), steps=5, weight_decay=0.01)),
    ("adam_update", dict(shape=(1009,), steps=3, lr=0.1, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1)),
    ("adam_update", dict(shape=(520, 130), steps=3, weight_decay=0.01)),  # threaded
    ("adam_update_rows", dict(V=37, E=19, steps=5)),
    ("adam_update_rows", dict(V=37, E=19, steps=5, weight_decay=0.01)),
    ("adam_update_rows", dict(V=1009, E=1, steps=4, lr=0.1, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1)),
    ("adam_update_rows", dict(V=520, E=130, steps=4, weight_decay=0.01)),  # threaded
    ("adam_update_rows", dict(V=7, E=5000, steps=4)),  # rows wider than a block of zeros
    ("sgd_update", dict(shape=(37, 19), steps=3)),
    ("sgd_update", dict(shape=(37, 19), steps=3, weight_decay=0.01)),
    ("sgd_update", dict(shape=(1009,), steps=4, momentum=0.9)),
    ("sgd_update", dict(shape=(1009,), steps=4, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("sgd_update", dict(shape=(37, 19), steps=1, lr=20.0, momentum=0.5, nesterov=True)),  # the first step only
    ("sgd_update", dict(shape=(520, 130), steps=3, momentum=0.9, weight_decay=0.01)),  # threaded
    ("sgd_update_rows", dict(V=37, E=19, steps=5)),  # plain: only the rows given move
    ("sgd_update_rows", dict(V=37, E=19, steps=5, weight_decay=0.01)),
    ("sgd_update_rows", dict(V=1009, E=1, steps=4, momentum=0.9)),
    ("sgd_update_rows", dict(V=1009, E=3, steps=4, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("sgd_update_rows", dict(V=520, E=130, steps=4, momentum=0.9, weight_decay=0.01)),  # threaded
    ("sgd_update_rows", dict(V=520, E=130, steps=4)),  # threaded, plain
    ("sgd_update_rows", dict(V=7, E=5000, steps=4, momentum=0.5)),  # rows wider than a block of zeros
    ("clip_grad_norm", dict(shapes=[(148, 37), (148,), (1009, 19)], max_norm=0.5)),  # clips
    ("clip_grad_norm", dict(shapes=[(148, 37), (148,), (1009, 19)], max_norm=1e6)),  # leaves alone
    ("clip_grad_norm", dict(shapes=[(7,)], max_norm=1.0)),
    ("clipped_sgd_update", dict(shapes=[(148, 37), (148,), (1009, 19)], steps=3, max_norm=0.5)),  # clips
    ("clipped_sgd_update", dict(shapes=[(148, 37), (148,)], steps=2, max_norm=1e6)),  # leaves alone
    ("clipped_sgd_update", dict(shapes=[(37, 19), (7,)], steps=3, max_norm=0.05, momentum=0.9, weight_decay=0.01)),
    ("clipped_sgd_update", dict(shapes=[(1009,)], steps=2, max_norm=0.05, momentum=0.5, nesterov=True)),
    ("clipped_sgd_update", dict(shapes=[(520, 130), (1009, 130)], steps=2, max_norm=1.0, momentum=0.9)),  # threaded
    # the first gradient in row form: plain, momentum and weight decay, clipping and not
    ("clipped_sgd_update", dict(shapes=[(1009, 19), (148,)], steps=4, max_norm=0.5, row_form=True)),
    ("clipped_sgd_update", dict(shapes=[(1009, 19), (148,)], steps=4, max_norm=1e6, row_form=True)),
    (
        "clipped_sgd_update",
        dict(shapes=[(37, 19), (7,)], steps=4, max_norm=0.05, momentum=0.9, weight_decay=0.01, row_form=True),
    ),
    ("clipped_sgd_update", dict(shapes=[(1009, 130), (520,)], steps=4, max_norm=1.0, momentum=0.9, row_form=True)),
    ("clipped_sgd_update", dict(shapes=[(1009, 130), (520,)], steps=4, max_norm=1.0, row_form=True)),  # threaded
    ("clip_grad_norm", dict(shapes=[(520, 130), (520,), (1009, 130)], max_norm=1.0)),  # threaded
    ("clip_grad_norm_rows", dict(shapes=[(148, 37), (148,)], V=1009, E=19, count=300, max_norm=0.5)),  # clips
    ("clip_grad_norm_rows", dict(shapes=[(148, 37), (148,)], V=1009, E=19, count=300, max_norm=1e6)),
    ("clip_grad_norm_rows", dict(shapes=[(7,), (1,)], V=3, E=1, count=1, max_norm=1.0)),
    ("clip_grad_norm_rows", dict(shapes=[(7,), (1,)], V=5, E=3, count=0, max_norm=1.0)),  # no rows
    ("clip_grad_norm_rows", dict(shapes=[(520, 130), (520,)], V=3001, E=130, count=900, max_norm=1.0)),  # threaded
    ("clip_grad_norm_rows", dict(shapes=[(7,), (1,)], V=9, E=5000, count=4, max_norm=1.0)),  # rows over blocks
    ("windows", dict(length=2, seq_len=1)),
    ("windows", dict(length=1000, seq_len=7)),
    ("windows", dict(length=1000, seq_len=5, stride=3)),
    ("windows", dict(length=1001, seq_len=10, stride=10, dtype="int64")),
    ("windows", dict(length=100000, seq_len=35, stride=1)),  # threaded
    # Sequences of different lengths, empty and one-token ones among them, in unsorted order.
    ("score_sequences", dict(V=2, E=1, H=3, layers=1, lengths=[1, 0, 2])),
    ("score_sequences", dict(V=2, E=1, H=3, layers=1, lengths=[1, 0, 2], bos=1)),
    ("score_sequences", dict(V=1009, E=19, H=37, layers=2, lengths=[5, 30, 0, 1, 17, 30, 2, 9])),
    (
        "score_sequences",
        dict(V=1009, E=19, H=37, layers=2, lengths=[5, 30, 0, 1, 17, 30, 2, 9], bos=0, batch_size=3),
    ),  # groups of 3, longest first
    ("score_sequences", dict(V=101, E=19, H=37, layers=1, lengths=[3, 80, 21], bos=7, scale=8.0)),  # peaked
    # Many sequences, one group of 400: threaded recurrence and output layer, and 16,200 packed
    # rows, many chunks of steps: the state is carried across chunks in both layers.
    ("score_sequences", dict(V=521, E=64, H=130, layers=2, lengths=range(1, 81), repeat=5, bos=3, batch_size=1000)),
    # Streams continued from a state: one stream of one step; a few streams; one stream over
    # many chunks of steps (1024 rows each), its recurrence on one thread while the other
    # threads score the previous chunk; 64 streams of H = 130, a recurrence shared between
    # threads (2^22 multiply-adds a step and more); an adaptive decoder.
    ("score_streams", dict(V=2, E=1, H=3, layers=1, B=1, T=1, state="zero")),
    ("score_streams", dict(V=1009, E=19, H=37, layers=2, B=3, T=17)),
    ("score_streams", dict(V=101, E=8, H=16, layers=2, B=1, T=2100)),
    ("score_streams", dict(V=521, E=64, H=130, layers=1, B=1, T=1100)),
    ("score_streams", dict(V=101, E=8, H=130, layers=1, B=64, T=20)),
    ("score_streams", dict(V=300, E=8, H=16, layers=1, B=2, T=40, cutoffs=[50, 150])),
    # C++: the adaptive decoder packed once, each block of 64 rows in two chunks of 32 (2^20 / V rows at most)
    ("score_streams", dict(V=30011, E=8, H=16, layers=1, B=2, T=70, cutoffs=[50, 1000], target_words=50)),
    ("output_scores", dict(N=1, H=19, V=2)),
    ("output_scores", dict(N=15, H=37, V=1009, scale=20.0)),  # logits to ~190
    ("output_scores", dict(N=40, H=19, V=1009, ties=True)),  # arg-max ties: the first wins
    ("output_scores", dict(N=300, H=37, V=20011)),  # threaded rows, two row chunks
    ("prediction_counts", dict(V=1, n=1)),
    ("prediction_counts", dict(V=1009, n=5000)),
]


def case_id(op, shapes):
    return op + "-" + "-".join(f"{k}={v}" for k, v in shapes.items()).replace(" ", "")


CASE_PARAMS = [pytest.param(op, shapes, id=case_id(op, shapes)) for op, shapes in CASES]


def make_inputs(op, shapes):
    seed = zlib.crc32(case_id(op, shapes).encode())
    return OPS[op].build(np.random.default_rng(seed), **shapes)


def run(op, fn, inputs):
    """Run fn on a private deep copy of the inputs; returns {output name: value}."""
    result = OPS[op].run(fn, copy.deepcopy(inputs))
    if isinstance(result, dict):
        return result
    result = result if isinstance(result, tuple) else (result,)
    assert len(result) == len(OPS[op].outputs), f"{op} returned {len(result)} outputs"
    return dict(zip(OPS[op].outputs, result))


# Where logits come out of an LSTM the twins compute in different orders, two logits a
# few float32 roundings apart can compare the other way: at most this share of an
# arg-max or rank output may differ (ranks by one place only). A wrong index or a
# missing term changes most entries.
NEAR_TIE_SHARE = 1e-3


def check_near_ties(name, cpp, ref):
    cpp, ref = np.asarray(cpp), np.asarray(ref)
    assert cpp.dtype == ref.dtype and cpp.shape == ref.shape, (
        f"{name}: {cpp.dtype}{cpp.shape} vs {ref.dtype}{ref.shape}"
    )
    differ = np.flatnonzero(cpp != ref)
    assert differ.size <= max(1, NEAR_TIE_SHARE * cpp.size), f"{name}: {differ.size} of {cpp.size} entries differ"
    if name == "ranks":
        assert np.all(np.abs(cpp[differ].astype(np.int64) - ref[differ]) <= 1), f"{name} differ by more than 1"
    return differ.size / max(1, cpp.size)


def check_ranks(cpp, ref, inputs):
    """Ranks (how many logits beat the target's) of an output layer given h, weight and bias
    must agree, except by as many places as there are logits within TIE_TOL of the target's
    (in float64): the kernels' dot products round differently on each instruction set."""
    cpp, ref = np.asarray(cpp), np.asarray(ref)
    assert cpp.dtype == ref.dtype and cpp.shape == ref.shape
    differ = np.flatnonzero(cpp != ref)
    if differ.size == 0:
        return 0.0
    h, weight, bias, targets = inputs.args[:4]
    logits = np.asarray(h, np.float64)[differ] @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)
    target_logits = logits[np.arange(differ.size), np.asarray(targets)[differ]]
    scale = np.maximum(1.0, np.max(np.abs(logits), axis=1))
    near = np.sum(np.abs(logits - target_logits[:, None]) <= TIE_TOL * scale[:, None], axis=1) - 1
    gaps = np.abs(cpp[differ].astype(np.int64) - ref[differ])
    assert np.all(gaps <= near), f"ranks differ in rows {differ[gaps > near][:10].tolist()} beyond near ties"
    return differ.size / cpp.size


def check_predictions(cpp, ref, inputs):
    """Arg-max rows must agree, except where the two picks tie within TIE_TOL."""
    cpp, ref = np.asarray(cpp), np.asarray(ref)
    assert cpp.dtype == np.int32 and cpp.shape == ref.shape
    differ = np.flatnonzero(cpp != ref)
    if differ.size == 0:
        return 0.0
    if len(inputs.args) == 6:  # the adaptive softmax: compare the words' full log-probabilities
        h, head, bias, projs, outs, _ = inputs.args
        f64 = [np.asarray(a, np.float64) for a in (h[differ], head)]
        logits = reference.adaptive_log_prob(
            *f64,
            None if bias is None else np.asarray(bias, np.float64),
            [np.asarray(a, np.float64) for a in projs],
            [np.asarray(a, np.float64) for a in outs],
        )
    else:
        h, weight, bias = (np.asarray(a, np.float64) for a in inputs.args[:3])
        logits = h[differ] @ weight.T + bias
    rows = np.arange(differ.size)
    gap = np.abs(logits[rows, cpp[differ]] - logits[rows, ref[differ]])
    scale = np.maximum(1.0, np.max(np.abs(logits), axis=1))
    worst = float(np.max(gap / scale))
    assert worst <= TIE_TOL, (
        f"predictions differ in rows {differ[:10].tolist()} by logit gaps up to {worst:.3g} of the row's scale"
    )
    return worst


@pytest.mark.parametrize("op, shapes", CASE_PARAMS)
def test_op(op, shapes):
    inputs = make_inputs(op, shapes)
    cpp = run(op, getattr(_core, op), inputs)
    ref = run(op, getattr(reference, op), inputs)
    assert cpp.keys() == ref.keys()
    failures = []
    for name in ref:
        a, b = cpp[name], ref[name]
        if name == "ranks" and name in OPS[op].by_logits:
            err = check_ranks(a, b, inputs)
        elif name == "predictions" or name in OPS[op].by_logits:
            err = check_predictions(a, b, inputs)
        elif name in OPS[op].near_ties:
            err = check_near_ties(name, a, b)
        elif name in OPS[op].exact or np.asarray(b).dtype.kind in "iu":
            assert np.asarray(a).dtype == np.asarray(b).dtype, f"{name}: dtype {np.asarray(a).dtype}"
            assert np.array_equal(a, b), f"{name} differs from the reference"
            err = 0.0
        elif np.ndim(b) == 0:
            err = scalar_error(a, b)
            if err > SCALAR_TOL:
                failures.append(f"{name}: {float(a)!r} vs reference {float(b)!r}, normalised error {err:.3g}")
        else:
            assert np.asarray(a).dtype == np.float32, f"{name}: dtype {np.asarray(a).dtype}"
            err = normalised_error(a, b)
            if not err <= TOL:
                failures.append(f"{name}: normalised error {err:.3g} > {TOL}")
        _record(op, name, err)
    assert not failures, f"{case_id(op, shapes)}: " + "; ".join(failures)


def assert_bit_identical(first, second, what):
    assert first.keys() == second.keys()
    differ = []
    for name in first:
        a, b = np.asarray(first[name]), np.asarray(second[name])
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {name}"
        if not np.array_equal(a, b):
            first_diff = np.argmax(a != b)
            differ.append(
                f"{name} ({a.flat[first_diff]!r} vs {b.flat[first_diff]!r}, "
                f"max |diff| {np.max(np.abs(a.astype(np.float64) - b)):.3g})"
            )
    assert not differ, f"{what}: " + "; ".join(differ)


@pytest.mark.parametrize("op, shapes", CASE_PARAMS)
def test_op_deterministic(op, shapes, restore_threads):
    """Same inputs twice, and one thread vs two: bit-identical C++ results."""
    inputs = make_inputs(op, shapes)
    fn = getattr(_core, op)
    fastlm.set_num_threads(2)
    first = run(op, fn, inputs)
    assert_bit_identical(first, run(op, fn, inputs), "two runs with 2 threads")
    fastlm.set_num_threads(1)
    assert_bit_identical(first, run(op, fn, inputs), "1 thread vs 2 threads")


@pytest.mark.parametrize("H, cutoffs", [(37, None), (37, [20, 60]), (520, None)])
def test_a_rows_results_do_not_depend_on_the_rows_beside_it(H, cutoffs, restore_threads):
    """Scoring's and generation's products are row-invariant (gemm.h): a sequence scored, or
    a sample generated, beside others gets the bits it gets alone. test_scoring and
    test_generate check it on this machine's best kernels; here because CI runs this file
    once per instruction set (.ci/run), and each family has its own few-row kernels
    (kOneChainRows, micro_kernel_one_chain). Sequences of lengths 1..10 (longest first)
    run steps of every row count from 10 down to 1: every edge tile of MR 4, 6 and 8; 4H = 148
    columns end in an edge panel of every NR; H = 520 is two k blocks in a many-row product
    and one in a few-row one (generation there only 9 samples against 1, as each session
    packs the weights); an adaptive decoder's three products."""
    V, L = 101, 2
    params = fastlm.LSTMLM(V, 19, H, L, seed=5, cutoffs=cutoffs).state_dict()
    rng = np.random.default_rng(H)
    seqs = [rng.integers(0, V, n, dtype=np.int32) for n in range(1, 11)]

    def score(group):
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in group])]).astype(np.int64)
        scores = _core.score_sequences(params, L, np.concatenate(group), offsets, 3, 256)
        return [np.split(np.asarray(a), offsets[1:-1]) for a in scores]

    prompts = rng.integers(0, V, (9, 3), dtype=np.int32)
    for threads in (1, 2):
        fastlm.set_num_threads(threads)
        together = score(seqs)
        for i, s in enumerate(seqs):
            alone = score([s])
            for k, name in enumerate(("log_probs", "predictions", "ranks")):
                assert np.array_equal(together[k][i], alone[k][0]), f"{threads} threads: sequence {i}'s {name}"
        for n in (2, 3, 9) if H < 500 else (9,):  # 9 rows against 1: the k blocking of each
            session = _core.GenerationSession(params, L, prompts[:n], 1.0, 0, 1.0, 7)
            alone = [_core.GenerationSession(params, L, prompts[s : s + 1], 1.0, 0, 1.0, 7 + s) for s in range(n)]
            for step in range(3):
                probabilities = session.probabilities()
                for s in range(n):
                    assert np.array_equal(probabilities[s], alone[s].probabilities()[0]), (
                        f"{threads} threads, {n} samples, step {step}: sample {s}"
                    )
                drawn = session.next(1)
                for s in range(n):
                    np.testing.assert_array_equal(alone[s].next(1)[0], drawn[s])


@pytest.mark.parametrize("momentum, nesterov, weight_decay", [(0.0, False, 0.0), (0.9, False, 0.01), (0.5, True, 0.0)])
@pytest.mark.parametrize("max_norm", [0.05, 1e6])  # clips, leaves alone
def test_clipped_sgd_update_is_clip_then_sgd(momentum, nesterov, weight_decay, max_norm, restore_threads):
    """fit's fused clip and SGD step: the same parameters, buffers and norm to the bit as
    clip_grad_norm followed by one sgd_update per parameter, with one thread and with two."""
    rng = np.random.default_rng(14)
    shapes = [(520, 130), (130,), (1009, 19)]
    params = [uniform(rng, s) for s in shapes]
    bufs = [normal(rng, s, 100.0) for s in shapes]
    settings = dict(momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    for threads in (1, 2):
        fastlm.set_num_threads(threads)
        fused_params, fused_bufs = copy.deepcopy(params), copy.deepcopy(bufs)
        split_params, split_bufs = copy.deepcopy(params), copy.deepcopy(bufs)
        for step in (1, 2, 3):
            grads = [normal(rng, s, 0.1) for s in shapes]
            norm = _core.clipped_sgd_update(
                fused_params, grads, fused_bufs if momentum else None, step, 20.0, max_norm, **settings
            )
            scaled = copy.deepcopy(grads)
            assert _core.clip_grad_norm(scaled, max_norm) == norm
            for p, g, b in zip(split_params, scaled, split_bufs):
                _core.sgd_update(p, g, b if momentum else None, step, 20.0, **settings)
        for fused, split in zip(fused_params + fused_bufs, split_params + split_bufs):
            assert np.array_equal(fused, split), f"{threads} threads"


def float_bits(a):
    """The bit patterns of a float32 array: np.array_equal counts -0.0 equal to 0.0, this does not."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("V, E", [(1009, 19), (50, 1), (700, 256), (9, 5000)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("max_norm", [None, 1e-3, 1e9])  # no clipping, clips, leaves alone
def test_row_form_gradient_is_the_dense_gradient_to_the_bit(V, E, weight_decay, max_norm, restore_threads):
    """fit's embedding step under Adam: clip_grad_norm_rows, then adam_update_rows on a
    gradient in row form, give the norm, scaled values, parameters and moments of
    clip_grad_norm, then adam_update on its dense twin, to the bit (signed zeros included),
    with one thread and with two: parameters and moments holding -0.0 and subnormals, rows
    holding zeros of both signs, steps with no rows, one row and every row."""
    rng = np.random.default_rng(V * E)
    param = normal(rng, (V, E))
    param[::7, ::3], param[1::11] = -0.0, 1e-40
    m0, v0 = normal(rng, (V, E), 1e-3), np.abs(normal(rng, (V, E), 1e-6))
    m0[::5], m0[2::9], v0[3::4] = -0.0, -1e-42, 0.0
    for threads in (1, 2):
        fastlm.set_num_threads(threads)
        dense_state = [param.copy(), m0.copy(), v0.copy()]
        rows_state = [param.copy(), m0.copy(), v0.copy()]
        for step, rows in enumerate(row_subsets(np.random.default_rng(E), V, 5), start=1):
            values = normal(rng, (len(rows), E), 0.1)
            values[::3, ::2] = -0.0
            values[1::4, 1::2] = 0.0
            others = [normal(rng, (13, 7), 0.1), normal(rng, (5,), 0.1)]
            dense = np.zeros((V, E), np.float32)
            dense[rows] = values
            dense_grads = [others[0].copy(), dense, others[1].copy()]
            row_grads = [others[0].copy(), (rows, values, V), others[1].copy()]
            if max_norm is not None:
                norm = _core.clip_grad_norm(dense_grads, max_norm)
                assert _core.clip_grad_norm_rows(row_grads, max_norm) == norm
                assert np.array_equal(float_bits(dense_grads[1][rows]), float_bits(values))
                for i in (0, 2):
                    assert np.array_equal(float_bits(dense_grads[i]), float_bits(row_grads[i]))
            _core.adam_update(*dense_state[:1], dense_grads[1], *dense_state[1:], step, 1e-2, weight_decay=weight_decay)
            _core.adam_update_rows(rows_state[0], rows, values, *rows_state[1:], step, 1e-2, weight_decay=weight_decay)
            for name, a, b in zip(("param", "m", "v"), dense_state, rows_state):
                assert np.array_equal(float_bits(a), float_bits(b)), f"{threads} threads, step {step}: {name}"


@pytest.mark.parametrize("V, E", [(1009, 19), (700, 256), (9, 5000)])
@pytest.mark.parametrize(
    "settings",
    [dict(), dict(weight_decay=0.01), dict(momentum=0.9), dict(momentum=0.5, nesterov=True, weight_decay=0.01)],
    ids=["plain", "weight-decay", "momentum", "nesterov-weight-decay"],
)
@pytest.mark.parametrize("max_norm", [None, 1e-3, 1e9])  # sgd_update_rows, clipped_sgd_update clipping and not
def test_row_form_gradient_under_sgd_is_the_dense_gradient_to_the_bit(V, E, settings, max_norm, restore_threads):
    """As for Adam: sgd_update_rows and clipped_sgd_update on a gradient in row form give the
    parameters, momentum buffers and norm of sgd_update and clipped_sgd_update on its dense
    twin, to the bit (signed zeros included), with one thread and with two."""
    rng = np.random.default_rng(V + E)
    param = normal(rng, (V, E))
    param[::7, ::3], param[1::11] = -0.0, 1e-40
    buf0 = normal(rng, (V, E), 1e-3)
    buf0[::5] = -0.0
    other0 = normal(rng, (130,))
    momentum = settings.get("momentum", 0.0)
    for threads in (1, 2):
        fastlm.set_num_threads(threads)
        dense_state = [param.copy(), buf0.copy(), other0.copy(), other0.copy()]
        rows_state = copy.deepcopy(dense_state)
        for step, rows in enumerate(row_subsets(np.random.default_rng(E), V, 5), start=1):
            values = normal(rng, (len(rows), E), 0.1)
            values[::3, ::2], values[1::4, 1::2] = -0.0, 0.0
            other_grad = normal(rng, (130,), 0.1)
            dense = np.zeros((V, E), np.float32)
            dense[rows] = values
            for state, grad in ((dense_state, dense), (rows_state, (rows, values))):
                p, buf, other, other_buf = state
                if max_norm is None:
                    if isinstance(grad, tuple):
                        _core.sgd_update_rows(p, *grad, buf if momentum else None, step, 0.5, **settings)
                    else:
                        _core.sgd_update(p, grad, buf if momentum else None, step, 0.5, **settings)
                    continue
                bufs = [buf, other_buf] if momentum else None
                state.append(
                    _core.clipped_sgd_update([p, other], [grad, other_grad], bufs, step, 0.5, max_norm, **settings)
                )
            if max_norm is not None:
                assert dense_state.pop() == rows_state.pop(), "norm"
            for name, a, b in zip(("param", "buf", "other", "other buf"), dense_state, rows_state):
                assert np.array_equal(float_bits(a), float_bits(b)), f"{threads} threads, step {step}: {name}"


@pytest.mark.parametrize("V, E", [(1009, 19), (700, 256)])
@pytest.mark.parametrize("max_norm", [None, 1e-3, 1e9])  # sgd_update_rows, clipped_sgd_update clipping and not
def test_sgd_skipping_absent_rows_leaves_the_bits_of_the_walk(V, E, max_norm, restore_threads):
    """skip_absent_rows=True (plain SGD leaves the rows without gradient unread) gives the
    parameters of the walk over every row, to the bit, when those rows hold no subnormal float,
    with one thread and with two; a subnormal there is the one thing it keeps (the walk reads it
    as zero and writes 0.0), which is why the caller must know there is none. With momentum
    the flag changes nothing."""
    rng = np.random.default_rng(V * 3 + E)
    param = normal(rng, (V, E))
    param[::7, ::3] = -0.0
    other0 = normal(rng, (130,))

    def step(state, rows, values, other_grad, step_number, skip, **settings):
        p, other, buf, other_buf = state
        bufs = [buf, other_buf] if settings.get("momentum") else None
        if max_norm is None:
            _core.sgd_update_rows(
                p, rows, values, buf if bufs else None, step_number, 0.5, skip_absent_rows=skip, **settings
            )
        else:
            _core.clipped_sgd_update(
                [p, other],
                [(rows, values), other_grad],
                bufs,
                step_number,
                0.5,
                max_norm,
                skip_absent_rows=skip,
                **settings,
            )

    for threads in (1, 2):
        fastlm.set_num_threads(threads)
        for settings in (dict(), dict(momentum=0.9)):
            walk = [param.copy(), other0.copy(), np.zeros_like(param), np.zeros_like(other0)]
            skip = copy.deepcopy(walk)
            for number, rows in enumerate(row_subsets(np.random.default_rng(E), V, 5), start=1):
                values = normal(rng, (len(rows), E), 0.1)
                other_grad = normal(rng, (130,), 0.1)
                step(walk, rows, values, other_grad, number, False, **settings)
                step(skip, rows, values, other_grad, number, True, **settings)
                for name, a, b in zip(("param", "other", "buf"), walk, skip):
                    where = f"{threads} threads, {settings}, step {number}: {name}"
                    assert np.array_equal(float_bits(a), float_bits(b)), where
        # A subnormal in a row without gradient: the walk writes 0.0, the skip keeps it.
        rows = np.array([0, 2], np.int32)
        walk, skip = param.copy(), param.copy()
        walk[1, 0] = skip[1, 0] = 1e-40
        for p, flag in ((walk, False), (skip, True)):
            _core.sgd_update_rows(p, rows, normal(rng, (2, E), 0.0), None, 1, 0.5, skip_absent_rows=flag)
        assert walk[1, 0] == 0.0 and skip[1, 0] == np.float32(1e-40)


# Bindings that are not ops of the math: thread control, build facts and the FMA peak
# the benchmarks divide by. Generation is random sampling; its twin (and the session's)
# is compared in test_generate.py.
NOT_OPS = {
    "set_num_threads",
    "get_num_threads",
    "build_info",
    "fma_peak_gflops",
    "generate",
    "tune_malloc",
    "GenerationSession",
}


def test_fma_peak_is_a_measured_rate(restore_threads):
    """The benchmarks' denominator measures work that was really done.

    Speed itself is not asserted (a busy machine slows any figure down); the bound is
    against a loop the compiler drops or merges, which once reported 5 PFLOP/s. No core
    does 10 TFLOP/s.
    """
    for threads in (1, 2):
        fastlm.set_num_threads(threads)
        rate = _core.fma_peak_gflops(0.05)
        assert np.isfinite(rate) and 0 < rate < 10_000 * threads


@pytest.mark.parametrize("H, V", [(40, 500), (200, 1009)])
def test_a_rows_output_statistics_do_not_depend_on_the_rows_around_it(H, V, restore_threads):
    """output_loss_forward's log-sum-exp and arg-max and output_scores' results of a row are
    the same bits whatever the number of rows in the call: the vector kernels reduce a
    block's rows 16 or 32 at a time and its last 1-31 rows in masked vectors (AVX-512) or a
    scalar loop, and both must give each row the bits of the full-width lanes. Rows holding
    a NaN and an infinity, ties of the maximum; 1 and 2 threads."""
    rng = np.random.default_rng(H + V)
    N = 700
    h, w = normal(rng, (N, H)), normal(rng, (V, H), 0.3)
    w[7] = w[8]  # tied logits: the first index wins
    b, t = normal(rng, (V,)), rng.integers(0, V, N).astype(np.int32)
    h[3, 0], h[600, 1] = np.nan, np.inf
    for threads in (1, 2):
        fastlm.set_num_threads(threads)
        _, lse, predictions = _core.output_loss_forward(h, w, b, t)
        scores = _core.output_scores(h, w, b, t)
        for n in (1, 5, 16, 17, 31, 33, 47, 64, 95, 161, 188, 257, 699):
            _, lse_n, predictions_n = _core.output_loss_forward(h[:n], w, b, t[:n])
            assert np.array_equal(float_bits(lse_n), float_bits(lse[:n])), f"{threads} threads, {n} rows: lse"
            assert np.array_equal(predictions_n, predictions[:n]), f"{threads} threads, {n} rows: predictions"
            for name, a, full in zip(
                ("log_probs", "predictions", "ranks"), _core.output_scores(h[:n], w, b, t[:n]), scores
            ):
                a, full = np.asarray(a), np.asarray(full)[:n]
                if a.dtype == np.float32:
                    a, full = float_bits(a), float_bits(full)
                assert np.array_equal(a, full), f"{threads} threads, {n} rows: {name}"


def test_every_op_has_a_twin_and_a_case():
    ops = {op for op, _ in CASES}
    assert ops == set(OPS)
    core_ops = {name for name in dir(_core) if not name.startswith("_")} - NOT_OPS
    assert core_ops == set(OPS), "every C++ op needs an entry in OPS and CASES"
    for op in core_ops | {"generate", "GenerationSession"}:
        assert callable(getattr(_core, op)) and callable(getattr(reference, op))


# ------------------------------------------------------------------ the model


def batch(V, B, T, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T), dtype=np.int32), rng.integers(0, V, (B, T), dtype=np.int32)


MODEL_SIZES = [
    pytest.param(dict(vocab_size=1009, embed_dim=19, hidden_size=37, num_layers=1), 3, 5, id="L1-V1009-E19-H37"),
    pytest.param(dict(vocab_size=1009, embed_dim=19, hidden_size=37, num_layers=2), 3, 5, id="L2-V1009-E19-H37"),
    pytest.param(dict(vocab_size=13, embed_dim=19, hidden_size=37, num_layers=2), 1, 1, id="L2-B1-T1"),
    pytest.param(dict(vocab_size=521, embed_dim=37, hidden_size=19, num_layers=2), 33, 9, id="L2-E37-H19-B33"),
]


@pytest.mark.parametrize("sizes, B, T", MODEL_SIZES)
def test_model_gradients_cpp_vs_numpy(sizes, B, T):
    cpp_model = fastlm.LSTMLM(**sizes, seed=3, backend="cpp")
    ref_model = fastlm.LSTMLM(**sizes, seed=3, backend="numpy")
    for name, value in cpp_model.state_dict().items():
        assert np.array_equal(value, ref_model.state_dict()[name]), name
    inputs, targets = batch(sizes["vocab_size"], B, T)
    loss, grads = cpp_model.gradients(inputs, targets)
    ref_loss, ref_grads = ref_model.gradients(inputs, targets)
    assert list(grads) == list(ref_grads) == list(cpp_model.state_dict())
    assert scalar_error(loss, ref_loss) <= SCALAR_TOL, (loss, ref_loss)
    _record("model", "loss", scalar_error(loss, ref_loss))
    errors = {}
    for name, ref in ref_grads.items():
        assert grads[name].shape == ref.shape and grads[name].dtype == np.float32, name
        errors[name] = normalised_error(grads[name], ref)
        _record("model", name, errors[name])
    bad = {name: err for name, err in errors.items() if not err <= TOL}
    assert not bad, f"gradients beyond {TOL}: {bad}"
    assert np.array_equal(grads["lstm.bias_ih_l0"], grads["lstm.bias_hh_l0"])


MODEL = dict(vocab_size=1009, embed_dim=19, hidden_size=37, num_layers=2)


def test_state_dict_round_trip_exact():
    source = fastlm.LSTMLM(**MODEL, seed=0)
    state = source.state_dict()
    assert list(state) == list(source.parameter_shapes())
    fresh = fastlm.LSTMLM(**MODEL, seed=12345)
    assert not np.array_equal(fresh.state_dict()["decoder.weight"], state["decoder.weight"])
    fresh.load_state_dict(state)
    reloaded = fresh.state_dict()
    assert list(reloaded) == list(state)
    for name, value in state.items():
        assert reloaded[name].dtype == np.float32 and np.array_equal(reloaded[name], value), name
    # Same weights, same function: bit-identical gradients from either model.
    inputs, targets = batch(MODEL["vocab_size"], 3, 5)
    loss_a, grads_a = source.gradients(inputs, targets)
    loss_b, grads_b = fresh.gradients(inputs, targets)
    assert loss_a == loss_b
    assert all(np.array_equal(grads_a[k], grads_b[k]) for k in grads_a)
    # Loading into the model it came from changes nothing either.
    source.load_state_dict(state)
    assert all(np.array_equal(source.state_dict()[k], v) for k, v in state.items())


def test_state_dict_returns_copies():
    model = fastlm.LSTMLM(**MODEL, seed=0)
    before = model.state_dict()
    handed_out = model.state_dict()
    for value in handed_out.values():
        value[...] = 7.0
    after = model.state_dict()
    assert all(np.array_equal(after[k], before[k]) for k in before)
    assert all(not np.shares_memory(after[k], before[k]) for k in before)
    # load_state_dict keeps its own copy too: later edits of the source do not leak in.
    state = model.state_dict()
    other = fastlm.LSTMLM(**MODEL, seed=1)
    other.load_state_dict(state)
    for value in state.values():
        value[...] = -3.0
    assert all(np.array_equal(other.state_dict()[k], before[k]) for k in before)


# Big enough that every threaded path runs: the cell loops (B * 4H >= 2**13), the GEMMs,
# the fused output layer and the embedding gradient's column slices.
THREADED_MODEL = dict(vocab_size=1009, embed_dim=131, hidden_size=130, num_layers=2)


def test_model_gradients_deterministic(restore_threads):
    model = fastlm.LSTMLM(**THREADED_MODEL, seed=5)
    inputs, targets = batch(THREADED_MODEL["vocab_size"], 33, 9, seed=2)
    fastlm.set_num_threads(2)
    loss, grads = model.gradients(inputs, targets)
    loss_again, grads_again = model.gradients(inputs, targets)
    assert loss == loss_again
    for name in grads:
        assert np.array_equal(grads[name], grads_again[name]), f"{name} differs between two runs"
    fastlm.set_num_threads(1)
    loss_one, grads_one = model.gradients(inputs, targets)
    for name in grads:
        assert np.array_equal(grads[name], grads_one[name]), f"{name} differs between 1 and 2 threads"
    assert loss == loss_one, f"loss {loss!r} with 2 threads, {loss_one!r} with 1"


@pytest.fixture(scope="module", autouse=True)
def report_observed_errors():
    """Prints the largest normalised error seen per op output after the module (with -s)."""
    yield
    lines = [f"  {op:22s} {name:22s} {err:.3g}" for (op, name), err in sorted(OBSERVED.items())]
    print(f"\nlargest normalised errors (tolerance {TOL:g}):\n" + "\n".join(lines))
