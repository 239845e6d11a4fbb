"""The adaptive softmax against torch.nn.AdaptiveLogSoftmaxWithLoss and its autograd.

Both twins (C++ and NumPy) take the module's own weights; the loss, each target's
log-probability, the full distribution, the predictions and every gradient must agree
with PyTorch's. Tolerances as in test_torch.py (float32 on both sides).
"""

from __future__ import annotations

import numpy as np
import pytest

from fastlm import _core, reference

torch = pytest.importorskip(
    "torch", reason="PyTorch not installed; these comparisons need it (CI installs torch==2.13.0 on CPU)"
)

from fastlm._torch_twin import TorchLM  # noqa: E402

torch.set_num_threads(2)

OPS = {"cpp": _core, "numpy": reference}
LOSS_RTOL = 1e-6
GRAD_RTOL = 1e-5
GRAD_ATOL_SCALE = 2e-6  # times the largest magnitude of the reference tensor


def assert_grad_close(ours, theirs, name):
    theirs = theirs.detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=GRAD_RTOL, atol=GRAD_ATOL_SCALE * np.abs(theirs).max(), err_msg=name)


def torch_case(N, H, V, cutoffs, div_value, head_bias, seed=0, zipf=1.2):
    torch.manual_seed(seed)
    module = torch.nn.AdaptiveLogSoftmaxWithLoss(H, V, cutoffs, div_value=div_value, head_bias=head_bias)
    rng = np.random.default_rng(seed)
    h = torch.tensor(rng.uniform(-1, 1, (N, H)), dtype=torch.float32, requires_grad=True)
    targets = np.minimum(rng.zipf(zipf, N) - 1, V - 1).astype(np.int32)
    return module, h, targets


def op_args(module, h):
    bias = module.head.bias.detach().numpy() if module.head.bias is not None else None
    return (
        h.detach().numpy(),
        module.head.weight.detach().numpy(),
        bias,
        [tail[0].weight.detach().numpy() for tail in module.tail],
        [tail[1].weight.detach().numpy() for tail in module.tail],
    )


CASES = [
    dict(N=64, H=32, V=500, cutoffs=[20, 100], div_value=4.0, head_bias=False),
    dict(N=200, H=48, V=3000, cutoffs=[100, 1000, 2000], div_value=2.0, head_bias=True),
    dict(N=7, H=16, V=50, cutoffs=[10], div_value=1.5, head_bias=True),
]


@pytest.mark.parametrize("backend", list(OPS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"V{c['V']}-cutoffs{c['cutoffs']}")
def test_loss_and_gradients_equal_torch_autograd(case, backend):
    module, h, targets = torch_case(**case)
    output, loss = module(h, torch.from_numpy(targets).long())
    loss.backward()
    ops = OPS[backend]
    ours, dh, dhead, dbias, dprojs, douts = ops.adaptive_loss_forward_backward(*op_args(module, h), targets)
    np.testing.assert_allclose(ours, loss.item(), rtol=LOSS_RTOL)
    assert_grad_close(dh, h.grad, "dh")
    assert_grad_close(dhead, module.head.weight.grad, "head.weight")
    if case["head_bias"]:
        assert_grad_close(dbias, module.head.bias.grad, "head.bias")
    else:
        assert dbias is None
    for i, tail in enumerate(module.tail):
        assert_grad_close(dprojs[i], tail[0].weight.grad, f"tail.{i}.0.weight")
        assert_grad_close(douts[i], tail[1].weight.grad, f"tail.{i}.1.weight")
    # Evaluation: the same loss, each target's log-probability, and torch's predict.
    ours, log_prob, predictions = ops.adaptive_loss_forward(*op_args(module, h), targets)
    np.testing.assert_allclose(ours, loss.item(), rtol=LOSS_RTOL)
    np.testing.assert_allclose(log_prob, output.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(predictions, module.predict(h).numpy())


@pytest.mark.parametrize("backend", list(OPS))
def test_full_log_prob_equals_torch(backend):
    module, h, _ = torch_case(N=50, H=32, V=700, cutoffs=[30, 300], div_value=4.0, head_bias=True)
    ours = OPS[backend].adaptive_log_prob(*op_args(module, h))
    np.testing.assert_allclose(ours, module.log_prob(h).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_predictions_beyond_the_shortlist_equal_torch():
    """A large head bias on the cluster columns makes most rows' head arg-max a cluster, and
    large tail weights make a tail word the full arg-max in many of them: the tails must
    then be searched, as torch's predict does."""
    module, h, targets = torch_case(N=300, H=32, V=2000, cutoffs=[50, 500], div_value=2.0, head_bias=True)
    with torch.no_grad():
        module.head.bias[50:] += 2.0
        for tail in module.tail:
            tail[1].weight *= 20.0
    _, _, predictions = _core.adaptive_loss_forward(*op_args(module, h), targets)
    expected = module.predict(h).numpy()
    assert 0.3 < np.mean(expected >= 50) < 0.9  # the case tests what it says
    np.testing.assert_array_equal(predictions, expected)


# ------------------------------------------------------------------ the model (PyTorch's: fastlm/_torch_twin.py)

MODEL = dict(vocab_size=300, embed_dim=12, hidden_size=16, num_layers=2)
ADAPTIVE = dict(cutoffs=[20, 100], div_value=2.0)


def zipf_batch(V, B, T, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.2, (B, T + 1)) - 1, V - 1).astype(np.int32)
    return ids[:, :-1], ids[:, 1:]


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("head_bias", [False, True], ids=["no-head-bias", "head-bias"])
def test_model_loss_gradients_and_evaluation_equal_torch(backend, head_bias):
    import fastlm

    model = fastlm.LSTMLM(**MODEL, **ADAPTIVE, head_bias=head_bias, seed=3, backend=backend)
    torch.manual_seed(0)
    reference_model = TorchLM(*MODEL.values(), **ADAPTIVE, head_bias=head_bias)
    assert set(model.state_dict()) == set(reference_model.state_dict())
    model.load_state_dict(reference_model.state_dict())  # torch -> fastlm, names and shapes as torch's
    x, y = zipf_batch(MODEL["vocab_size"], 4, 9)
    loss, grads = model.gradients(x, y)
    expected = reference_model.loss(x, y)
    expected.backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=LOSS_RTOL)
    for name, param in reference_model.named_parameters():
        assert_grad_close(grads[name], param.grad, name)
    # Evaluation: the same loss, and accuracy from torch's predict (the full arg-max).
    result = model.evaluate(x, y, batch_size=4)
    with torch.no_grad():
        rows = reference_model(torch.as_tensor(x, dtype=torch.long))[0].reshape(-1, MODEL["hidden_size"])
        predicted = reference_model.decoder.predict(rows).numpy()
    np.testing.assert_allclose(result["loss"], expected.item(), rtol=LOSS_RTOL)
    assert result["accuracy"] == np.mean(predicted == y.reshape(-1))


def test_model_state_dict_loads_into_torch():
    import fastlm

    model = fastlm.LSTMLM(**MODEL, **ADAPTIVE, seed=5)
    reference_model = TorchLM(*MODEL.values(), **ADAPTIVE)
    reference_model.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x, y = zipf_batch(MODEL["vocab_size"], 2, 5, seed=1)
    loss, _ = model.gradients(x, y)
    np.testing.assert_allclose(loss, reference_model.loss(x, y).item(), rtol=LOSS_RTOL)
    # torch's initialisation bounds: 1/sqrt(fan_in) for every Linear.
    shapes = model.parameter_shapes()
    for name, value in model.state_dict().items():
        if name.startswith("decoder."):
            assert np.abs(value).max() <= 1 / np.sqrt(shapes[name][-1])


# ------------------------------------------------------------------ generation


def sampling_model(backend="cpp"):
    """A small adaptive model with peaked, uneven tails, so that temperature changes the
    clusters' weights (Z_c far from 1 and from its bound)."""
    import fastlm

    model = fastlm.LSTMLM(60, 8, 8, cutoffs=[10, 30], div_value=1.5, head_bias=True, seed=2, backend=backend)
    for name, value in model.params.items():
        if name.startswith("decoder.tail"):
            value *= 6.0
    return model


def next_token_distribution(model, prompt, temperature):
    from fastlm import adaptive

    rows, _, _ = model._lstm_forward(np.asarray([prompt], np.int32), None, None)
    log_prob = reference.adaptive_log_prob(
        rows[-1:].astype(np.float64), *adaptive.decoder_arguments(model.params, len(model.cutoffs))
    )[0]
    p = np.exp((log_prob - log_prob.max()) / temperature)
    return p / p.sum(), log_prob


def naive_factorised_distribution(model, prompt, temperature):
    """Temperature on the head, then on the tail, each normalised on its own: not p^(1/T)."""
    from fastlm import adaptive

    head, bias, projs, outs = adaptive.decoder_arguments(model.params, len(model.cutoffs))
    rows, _, _ = model._lstm_forward(np.asarray([prompt], np.int32), None, None)
    h = rows[-1:].astype(np.float64)

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    p_head = softmax((h @ head.T + bias)[0] / temperature)
    parts = [p_head[:10]] + [
        p_head[10 + i] * softmax(((h @ projs[i].T) @ outs[i].T)[0] / temperature) for i in range(2)
    ]
    return np.concatenate(parts)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_sampling_is_exact_at_any_temperature(temperature):
    """20000 first tokens after one prompt, one per seed: their frequencies against p(w)^(1/T)
    normalised (total variation within sampling noise), while the head-then-tail shortcut
    with temperature on each part would be visibly off."""
    model = sampling_model()
    prompt = [3, 1, 4]
    draws = model.generate(prompt, max_new_tokens=1, temperature=temperature, seed=123, num_samples=20000)[:, 0]
    expected, _ = next_token_distribution(model, prompt, temperature)
    observed = np.bincount(draws, minlength=60) / len(draws)
    distance = 0.5 * np.abs(observed - expected).sum()
    assert distance < 0.03, distance
    if temperature != 1.0:
        naive = naive_factorised_distribution(model, prompt, temperature)
        assert 0.5 * np.abs(naive - expected).sum() > 0.1  # the test can tell the two apart


def test_greedy_is_the_full_arg_max_and_twins_agree():
    model = sampling_model()
    _, log_prob = next_token_distribution(model, [5, 9], 1.0)
    assert model.generate([5, 9], max_new_tokens=1, temperature=0)[0] == np.argmax(log_prob)
    twin = sampling_model("numpy")
    for temperature, top_k, top_p in [
        (0.0, None, None),
        (1.0, None, None),
        (0.6, None, None),
        (1.7, None, None),
        (1.0, 7, None),
        (0.9, None, 0.8),
    ]:
        ours = model.generate([5, 9], 25, temperature, top_k, top_p, seed=4, num_samples=3)
        theirs = twin.generate([5, 9], 25, temperature, top_k, top_p, seed=4, num_samples=3)
        np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------ sparse embedding updates


def clip_with_sparse_grads(params, max_norm):
    """torch.nn.utils.clip_grad_norm_'s rule, which torch itself cannot apply to sparse grads:
    the norm of a sparse gradient is that of its coalesced values. A parameter without a
    gradient (a tail no target reached) counts as zero."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad.coalesce() if p.grad.is_sparse else p.grad for p in params]
    norm = torch.sqrt(sum((g.values() if g.is_sparse else g).double().pow(2).sum() for g in grads))
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for p, g in zip(params, grads):
            p.grad = g * scale.float()
    return bool(scale < 1)


def test_sparse_embedding_training_follows_torch_sparse_adam():
    """fit(..., sparse_embedding=True) against torch: Embedding(sparse=True) under
    torch.optim.SparseAdam, every other parameter under torch.optim.Adam, same lr, same
    batches, from the same weights; with an adaptive decoder and clipping."""
    import fastlm

    V = MODEL["vocab_size"]
    model = fastlm.LSTMLM(**MODEL, **ADAPTIVE, seed=3)
    torch.manual_seed(0)
    twin = TorchLM(*MODEL.values(), **ADAPTIVE, sparse_embedding=True)
    model.load_state_dict(twin.state_dict())
    x, y = zipf_batch(V, 6, 8, seed=4)  # three batches of 2 rows: each step sees other ids
    lr, epochs = 0.01, 2
    sparse = torch.optim.SparseAdam([twin.embedding.weight], lr=lr)
    dense = torch.optim.Adam([p for n, p in twin.named_parameters() if n != "embedding.weight"], lr=lr)
    clipped = 0
    for _ in range(epochs):
        for r in range(0, 6, 2):
            sparse.zero_grad()
            dense.zero_grad()
            twin.loss(x[r : r + 2], y[r : r + 2]).backward()
            clipped += clip_with_sparse_grads(list(twin.parameters()), 0.1)
            sparse.step()
            dense.step()
    assert clipped  # the clipping rule was exercised
    before = model.state_dict()["embedding.weight"]
    model.fit(
        x, y, batch_size=2, epochs=epochs, lr=lr, shuffle=False, clip_norm=0.1, progress=False, sparse_embedding=True
    )
    after = model.state_dict()
    for name, value in twin.state_dict().items():
        np.testing.assert_allclose(after[name], value.numpy(), rtol=0, atol=1e-4, err_msg=name)
    unused = np.setdiff1d(np.arange(V), x)
    np.testing.assert_array_equal(after["embedding.weight"][unused], before[unused])  # rows never seen


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_sparse_embedding_training_follows_torch_sgd(backend):
    """fit(..., optimizer='sgd', sparse_embedding=True) against torch.optim.SGD over the whole
    model with Embedding(sparse=True): the embedding's rows seen take SGD's step from their
    sparse gradient, the rest of the model its dense step; same batches, same clipping."""
    import fastlm

    V = MODEL["vocab_size"]
    model = fastlm.LSTMLM(**MODEL, **ADAPTIVE, seed=3, backend=backend)
    torch.manual_seed(1)
    twin = TorchLM(*MODEL.values(), **ADAPTIVE, sparse_embedding=True)
    model.load_state_dict(twin.state_dict())
    x, y = zipf_batch(V, 6, 8, seed=7)
    lr, epochs = 0.5, 2
    sgd = torch.optim.SGD(twin.parameters(), lr=lr)
    clipped = 0
    for _ in range(epochs):
        for r in range(0, 6, 2):
            sgd.zero_grad()
            twin.loss(x[r : r + 2], y[r : r + 2]).backward()
            assert twin.embedding.weight.grad.is_sparse
            clipped += clip_with_sparse_grads(list(twin.parameters()), 0.05)
            sgd.step()
    assert clipped  # the clipping rule was exercised
    before = model.state_dict()["embedding.weight"]
    model.fit(
        x,
        y,
        batch_size=2,
        epochs=epochs,
        lr=lr,
        shuffle=False,
        clip_norm=0.05,
        progress=False,
        optimizer="sgd",
        sparse_embedding=True,
    )
    after = model.state_dict()
    for name, value in twin.state_dict().items():
        np.testing.assert_allclose(after[name], value.numpy(), rtol=0, atol=1e-5, err_msg=name)
    unused = np.setdiff1d(np.arange(V), x)
    np.testing.assert_array_equal(after["embedding.weight"][unused], before[unused])  # rows never seen


def test_torch_refuses_what_sparse_sgd_refuses():
    """fit refuses weight_decay with sparse_embedding because PyTorch's SGD fails on it too."""
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    embedding(torch.tensor([1, 2, 2])).sum().backward()
    with pytest.raises(RuntimeError):
        torch.optim.SGD(embedding.parameters(), lr=0.1, weight_decay=0.1).step()


def test_sparse_embedding_never_forms_the_dense_gradient():
    import fastlm

    model = fastlm.LSTMLM(**MODEL, **ADAPTIVE, seed=3)
    x, y = zipf_batch(MODEL["vocab_size"], 3, 4, seed=2)
    _, grads, _ = model.forward_backward(*model.check_batch(x, y), sparse_embedding=True)
    rows, values = grads["embedding.weight"]
    np.testing.assert_array_equal(rows, np.unique(x))
    assert values.shape == (len(rows), MODEL["embed_dim"])
    _, dense = model.gradients(x, y)
    np.testing.assert_allclose(values, dense["embedding.weight"][rows], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_sparse_embedding_checkpoint_resumes_exactly(tmp_path, optimizer):
    import fastlm

    x, y = zipf_batch(MODEL["vocab_size"], 8, 6, seed=5)
    settings = dict(batch_size=2, epochs=2, progress=False, sparse_embedding=True, optimizer=optimizer)
    whole = fastlm.LSTMLM(**MODEL, **ADAPTIVE, seed=1)
    whole.fit(x, y, **settings)
    parts = fastlm.LSTMLM(**MODEL, **ADAPTIVE, seed=1)
    parts.fit(x, y, **settings, checkpoint_dir=tmp_path, max_batches=5)
    parts.fit(x, y, **settings, checkpoint_dir=tmp_path, resume=True)
    for name, value in whole.state_dict().items():
        np.testing.assert_array_equal(parts.state_dict()[name], value, err_msg=name)
    with pytest.raises(ValueError, match="sparse_embedding"):
        parts.fit(x, y, **dict(settings, sparse_embedding=False, epochs=3), checkpoint_dir=tmp_path, resume=True)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(cutoffs=[100, 20]), ValueError, "strictly increasing"),
        (dict(cutoffs=[20, 20]), ValueError, "strictly increasing"),
        (dict(cutoffs=[0, 20]), ValueError, "positive"),
        (dict(cutoffs=[-5]), ValueError, "positive"),
        (dict(cutoffs=[20, 300]), ValueError, "vocab_size"),
        (dict(cutoffs=[]), ValueError, "empty"),
        (dict(cutoffs=[20.5]), TypeError, "cutoffs"),
        (dict(cutoffs="20"), TypeError, "cutoffs"),
        (dict(cutoffs=[20], div_value=1.0), ValueError, "div_value"),
        (dict(cutoffs=[20], div_value=0.5), ValueError, "div_value"),
        (dict(cutoffs=[20], div_value=float("nan")), ValueError, "div_value"),
        (dict(cutoffs=[20, 100], div_value=5.0), ValueError, "div_value=5.0 is too large"),  # 16 // 25 = 0
        (dict(cutoffs=[20], div_value="4"), TypeError, "div_value"),
        (dict(cutoffs=[20], head_bias=1), TypeError, "head_bias"),
    ],
)
def test_bad_adaptive_arguments_are_named(kwargs, error, match):
    import fastlm

    with pytest.raises(error, match=match):
        fastlm.LSTMLM(**MODEL, **kwargs)


def test_bad_adaptive_state_dicts_change_nothing():
    import fastlm

    model = fastlm.LSTMLM(**MODEL, **ADAPTIVE)
    before = model.state_dict()
    missing = dict(before)
    del missing["decoder.tail.1.0.weight"]
    with pytest.raises(KeyError, match="decoder.tail.1.0.weight"):
        model.load_state_dict(missing)
    wrong = dict(before, **{"decoder.tail.0.1.weight": np.zeros((80, 7), np.float32)})
    with pytest.raises(ValueError, match="decoder.tail.0.1.weight"):
        model.load_state_dict(wrong)
    full = fastlm.LSTMLM(**MODEL).state_dict()
    with pytest.raises(KeyError, match="decoder"):
        model.load_state_dict(full)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_sparse_embedding_bad_combinations():
    import fastlm

    model = fastlm.LSTMLM(**MODEL, **ADAPTIVE)
    x, y = zipf_batch(MODEL["vocab_size"], 2, 4)
    before = model.state_dict()
    with pytest.raises(ValueError, match="weight_decay"):
        model.fit(x, y, epochs=1, progress=False, sparse_embedding=True, weight_decay=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        model.fit(x, y, epochs=1, progress=False, sparse_embedding=True, optimizer="sgd", weight_decay=0.1)
    with pytest.raises(ValueError, match="momentum=0.9"):
        model.fit(x, y, epochs=1, progress=False, sparse_embedding=True, optimizer="sgd", momentum=0.9)
    with pytest.raises(TypeError, match="sparse_embedding"):
        model.fit(x, y, epochs=1, progress=False, sparse_embedding="yes")
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


# ------------------------------------------------------------------ command line


def test_cli_trains_an_adaptive_model_with_sparse_embedding(tmp_path, capsys):
    import json

    import fastlm
    from fastlm import cli

    words = [f"w{i}" for i in range(60)]
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(words[k] for k in np.minimum(rng.zipf(1.3, 12) - 1, 59)) for _ in range(200))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text + "\n", encoding="utf-8")
    out = tmp_path / "model"
    argv = [
        "train",
        str(corpus),
        "--level",
        "word",
        "--epochs",
        "1",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--layers",
        "1",
        "--seq-len",
        "10",
        "--batch-size",
        "4",
        "--sample-tokens",
        "5",
        "--cutoffs",
        "10,30",
        "--div-value",
        "2",
        "--sparse-embedding",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "adaptive softmax, cutoffs 10,30" in printed
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["cutoffs"] == [10, 30] and config["div_value"] == 2.0
    model = fastlm.load(out)
    assert model.cutoffs == [10, 30] and "decoder.tail.1.1.weight" in model.state_dict()
    # --resume keeps sparse_embedding from the checkpoint without the flag.
    assert cli.main([*argv[:5], "2", *argv[6:-3], "--out", str(out), "--resume"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:
        cli.main(["train", str(corpus), "--cutoffs", "30,10", "--out", str(tmp_path / "bad")])
    assert usage.value.code == 2
    assert "--cutoffs" in capsys.readouterr().err
    assert (
        cli.main(["train", str(corpus), "--level", "word", "--cutoffs", "10,5000", "--out", str(tmp_path / "bad")]) == 1
    )
    assert "cutoffs must be < vocab_size" in capsys.readouterr().err
