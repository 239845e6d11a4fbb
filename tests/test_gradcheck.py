"""The NumPy reference checked against central finite differences, in float64.

``tests/test_ops.py`` holds the C++ ops to the NumPy reference; this file holds the
reference to the mathematics. Every analytic gradient -- of a whole 2-layer model composed
from the reference ops exactly as ``LSTMLM.forward_backward`` composes them, and of each
backward op on its own -- is compared entry by entry with central differences.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastlm import reference

# Central differences (f(p + eps) - f(p - eps)) / 2 eps in float64: truncation error
# ~eps^2 |f'''| ~ 1e-12, rounding error ~1e-16 |f| / eps ~ 1e-10. eps = 1e-6 balances them.
EPS = 1e-6
# An entry passes when |analytic - numeric| <= RTOL * max(|analytic|, |numeric|) + ATOL.
# ATOL covers the ~1e-10 rounding floor of the difference quotient (entries whose true
# gradient is ~0); RTOL is the relative agreement required of every other entry.
RTOL = 1e-6
ATOL = 1e-9


def numeric_gradient(f, x):
    """Central differences of the scalar f() with respect to every entry of x (in place)."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + EPS
        plus = f()
        x[index] = saved - EPS
        minus = f()
        x[index] = saved
        grad[index] = (plus - minus) / (2 * EPS)
    return grad


def assert_gradient_close(analytic, numeric, name):
    assert analytic.shape == numeric.shape, name
    assert analytic.dtype == np.float64, f"{name}: computed in {analytic.dtype}, expected float64"
    diff = np.abs(analytic - numeric)
    bound = RTOL * np.maximum(np.abs(analytic), np.abs(numeric)) + ATOL
    bad = diff > bound
    assert not bad.any(), (
        f"{name}: {int(bad.sum())} of {bad.size} entries disagree with finite differences; worst at "
        f"{np.unravel_index(np.argmax(diff / bound), diff.shape)}: analytic "
        f"{analytic.flat[np.argmax(diff / bound)]:.10g} vs numeric {numeric.flat[np.argmax(diff / bound)]:.10g}"
    )
    # A check that passes because everything is ~0 checks nothing.
    assert np.max(np.abs(numeric)) > 1e3 * ATOL, f"{name}: gradient is identically ~0"


def check(f, params, analytic):
    """Check analytic[name] against central differences of f for every array in params."""
    for name, value in params.items():
        assert_gradient_close(analytic[name], numeric_gradient(f, value), name)


# ------------------------------------------------------------------ the whole model

V, E, H, L, B, T = 7, 5, 4, 2, 2, 3


def model_parameters(rng):
    """A 2-layer model's parameters in float64, named and shaped as LSTMLM.state_dict()."""
    bound = 1.0 / np.sqrt(H)
    params = {"embedding.weight": rng.standard_normal((V, E))}
    for k in range(L):
        width = E if k == 0 else H
        params[f"lstm.weight_ih_l{k}"] = rng.uniform(-bound, bound, (4 * H, width))
        params[f"lstm.weight_hh_l{k}"] = rng.uniform(-bound, bound, (4 * H, H))
        params[f"lstm.bias_ih_l{k}"] = rng.uniform(-bound, bound, 4 * H)
        params[f"lstm.bias_hh_l{k}"] = rng.uniform(-bound, bound, 4 * H)
    params["decoder.weight"] = rng.uniform(-bound, bound, (V, H))
    params["decoder.bias"] = rng.uniform(-bound, bound, V)
    return params


def model_loss_and_gradients(p, x, y, backward=True):
    """LSTMLM.forward_backward (zero initial state, no dropout) on the reference ops, any dtype."""
    batch, steps = x.shape
    zeros = np.zeros((batch, H), dtype=p["decoder.weight"].dtype)
    layer_input = reference.embedding_forward(p["embedding.weight"], x)
    tape = []
    for k in range(L):
        hs, cs, gates = reference.lstm_forward(
            layer_input,
            p[f"lstm.weight_ih_l{k}"],
            p[f"lstm.weight_hh_l{k}"],
            p[f"lstm.bias_ih_l{k}"],
            p[f"lstm.bias_hh_l{k}"],
            zeros,
            zeros,
        )
        tape.append((layer_input, hs, cs, gates))
        layer_input = hs
    rows, row_targets = layer_input.reshape(batch * steps, H), y.reshape(batch * steps)
    loss, lse, _ = reference.output_loss_forward(rows, p["decoder.weight"], p["decoder.bias"], row_targets)
    if not backward:
        return loss, None
    dh, dweight, dbias = reference.output_loss_backward(rows, p["decoder.weight"], p["decoder.bias"], row_targets, lse)
    grads = {"decoder.weight": dweight, "decoder.bias": dbias}
    dhs = dh.reshape(batch, steps, H)
    for k in reversed(range(L)):
        layer_input, hs, cs, gates = tape[k]
        dx, dw_ih, dw_hh, db, _, _ = reference.lstm_backward(
            dhs,
            None,
            None,
            layer_input,
            p[f"lstm.weight_ih_l{k}"],
            p[f"lstm.weight_hh_l{k}"],
            zeros,
            zeros,
            hs,
            cs,
            gates,
        )
        grads[f"lstm.weight_ih_l{k}"] = dw_ih
        grads[f"lstm.weight_hh_l{k}"] = dw_hh
        grads[f"lstm.bias_ih_l{k}"] = db  # both bias vectors get the same gradient
        grads[f"lstm.bias_hh_l{k}"] = db
        dhs = dx
    grads["embedding.weight"] = reference.embedding_backward(dhs, x, V)
    return loss, grads


@pytest.mark.parametrize("chunk_elements", [reference.LOGIT_CHUNK_ELEMENTS, 2 * V], ids=["one-chunk", "3-chunks"])
def test_model_gradients_match_finite_differences(chunk_elements, monkeypatch):
    # With 2 * V logits per chunk the output layer runs in chunks of 2 rows (3 chunks for
    # B * T = 6 rows), so the chunked accumulation of dweight and dbias is checked too.
    monkeypatch.setattr(reference, "LOGIT_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(0)
    params = model_parameters(rng)
    x = np.array([[1, 3, 1], [6, 0, 3]])  # repeated ids: embedding rows accumulate
    y = rng.integers(0, V, (B, T))
    loss, grads = model_loss_and_gradients(params, x, y)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert set(grads) == set(params)
    check(lambda: model_loss_and_gradients(params, x, y, backward=False)[0], params, grads)


def test_model_composition_matches_lstmlm():
    """The helper above is the model: in float32 it reproduces LSTMLM(backend="numpy") exactly."""
    import fastlm

    model = fastlm.LSTMLM(V, embed_dim=E, hidden_size=H, num_layers=L, seed=4, backend="numpy")
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    loss, grads = model.gradients(x, y)
    my_loss, my_grads = model_loss_and_gradients(model.state_dict(), x, y)
    assert loss == my_loss
    for name in grads:
        assert np.array_equal(grads[name], my_grads[name]), name


# ------------------------------------------------------------------ each op on its own


def lstm_case(rng, batch=2, steps=3, width=5, hidden=4):
    bound = 1.0 / np.sqrt(hidden)
    return {
        "x": rng.uniform(-1, 1, (batch, steps, width)),
        "w_ih": rng.uniform(-bound, bound, (4 * hidden, width)) * 2,
        "w_hh": rng.uniform(-bound, bound, (4 * hidden, hidden)) * 2,
        "b_ih": rng.uniform(-bound, bound, 4 * hidden),
        "b_hh": rng.uniform(-bound, bound, 4 * hidden),
        "h0": rng.uniform(-1, 1, (batch, hidden)),
        "c0": rng.uniform(-1, 1, (batch, hidden)),
    }


@pytest.mark.parametrize("final_grads", [False, True], ids=["dh_n-None", "dh_n-given"])
@pytest.mark.parametrize("steps", [1, 3])
def test_lstm_backward_matches_finite_differences(final_grads, steps):
    rng = np.random.default_rng(steps)
    p = lstm_case(rng, steps=steps)
    batch, hidden = p["h0"].shape
    r_hs = rng.standard_normal((batch, steps, hidden))
    r_h = rng.standard_normal((batch, hidden)) if final_grads else np.zeros((batch, hidden))
    r_c = rng.standard_normal((batch, hidden)) if final_grads else np.zeros((batch, hidden))

    def objective():  # J = sum(hs * R1) + sum(h_T * R2) + sum(c_T * R3)
        hs, cs, _ = reference.lstm_forward(p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["h0"], p["c0"])
        return float(np.sum(hs * r_hs) + np.sum(hs[:, -1] * r_h) + np.sum(cs[:, -1] * r_c))

    hs, cs, gates = reference.lstm_forward(p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["h0"], p["c0"])
    dh_n, dc_n = (r_h, r_c) if final_grads else (None, None)
    dx, dw_ih, dw_hh, db, dh0, dc0 = reference.lstm_backward(
        r_hs, dh_n, dc_n, p["x"], p["w_ih"], p["w_hh"], p["h0"], p["c0"], hs, cs, gates
    )
    analytic = {"x": dx, "w_ih": dw_ih, "w_hh": dw_hh, "b_ih": db, "b_hh": db, "h0": dh0, "c0": dc0}
    check(objective, p, analytic)


@pytest.mark.parametrize("chunk_elements", [reference.LOGIT_CHUNK_ELEMENTS, 11], ids=["one-chunk", "chunked"])
def test_output_loss_backward_matches_finite_differences(chunk_elements, monkeypatch):
    monkeypatch.setattr(reference, "LOGIT_CHUNK_ELEMENTS", chunk_elements)  # 11 // V=5: 2 rows a chunk
    rng = np.random.default_rng(7)
    n_rows, hidden, vocab = 5, 4, 5
    p = {
        "h": rng.uniform(-1, 1, (n_rows, hidden)),
        "weight": rng.uniform(-1, 1, (vocab, hidden)),
        "bias": rng.uniform(-1, 1, vocab),
    }
    targets = np.array([0, 3, 3, 4, 1])

    def objective():
        return reference.output_loss_forward(p["h"], p["weight"], p["bias"], targets)[0]

    loss, lse, _ = reference.output_loss_forward(p["h"], p["weight"], p["bias"], targets)
    assert lse.dtype == np.float64
    # lse is what it says: the log-sum-exp of each row's logits.
    logits = p["h"] @ p["weight"].T + p["bias"]
    np.testing.assert_allclose(lse, np.log(np.sum(np.exp(logits), axis=1)), rtol=1e-14)
    np.testing.assert_allclose(loss, np.mean(lse - logits[np.arange(n_rows), targets]), rtol=1e-14)
    dh, dweight, dbias = reference.output_loss_backward(p["h"], p["weight"], p["bias"], targets, lse)
    check(objective, p, {"h": dh, "weight": dweight, "bias": dbias})


def test_embedding_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    vocab, width = 6, 3
    ids = np.array([[0, 2, 2, 5], [2, 0, 1, 5]])  # repeats; id 3 and 4 unused
    p = {"weight": rng.standard_normal((vocab, width))}
    r = rng.standard_normal(ids.shape + (width,))

    def objective():
        return float(np.sum(reference.embedding_forward(p["weight"], ids) * r))

    dweight = reference.embedding_backward(r, ids, vocab)
    assert np.all(dweight[[3, 4]] == 0.0)
    check(objective, p, {"weight": dweight})


@pytest.mark.parametrize("head_bias", [True, False], ids=["head-bias", "no-head-bias"])
def test_adaptive_loss_backward_matches_finite_differences(head_bias):
    rng = np.random.default_rng(11)
    n_rows, hidden, widths, sizes = 7, 4, [3, 2], [3, 4]  # shortlist 2, clusters [2, 5) and [5, 9)
    p = {"h": rng.uniform(-1, 1, (n_rows, hidden)), "head": rng.uniform(-1, 1, (2 + len(sizes), hidden))}
    if head_bias:
        p["bias"] = rng.uniform(-1, 1, 2 + len(sizes))
    for i, (d, m) in enumerate(zip(widths, sizes)):
        p[f"proj{i}"], p[f"out{i}"] = rng.uniform(-1, 1, (d, hidden)), rng.uniform(-1, 1, (m, d))
    targets = np.array([0, 3, 2, 8, 1, 5, 4])  # every cluster hit, one twice

    def args():
        return (p["h"], p["head"], p.get("bias"), [p["proj0"], p["proj1"]], [p["out0"], p["out1"]])

    def objective():
        return reference.adaptive_loss_forward(*args(), targets)[0]

    loss, dh, dhead, dbias, dprojs, douts = reference.adaptive_loss_forward_backward(*args(), targets)
    # The loss is the mean negative log-probability under the full distribution.
    full = reference.adaptive_log_prob(*args())
    np.testing.assert_allclose(np.exp(full).sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(loss, -np.mean(full[np.arange(n_rows), targets]), rtol=1e-14)
    analytic = {"h": dh, "head": dhead, "proj0": dprojs[0], "proj1": dprojs[1], "out0": douts[0], "out1": douts[1]}
    if head_bias:
        analytic["bias"] = dbias
    else:
        assert dbias is None
    check(objective, p, analytic)
