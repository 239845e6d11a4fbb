"""fastlm against PyTorch: same function, same gradients, same optimizer trajectory.

docs/DESIGN.md promises that ``fastlm.LSTMLM`` computes exactly
``Embedding(V, E) -> LSTM(E, H, num_layers=L, batch_first=True) -> Linear(H, V)`` with mean
cross-entropy, in float32, with PyTorch's parameter names, shapes and gate order, and
that training from the same weights on the same batches follows torch.optim.Adam.

Tolerances (float32 on both sides, different summation orders):
- loss: rtol 1e-6 (observed differences ~1e-7 relative);
- gradients: |fastlm - torch| <= 1e-5 * |torch| + 2e-6 * max|torch| per named tensor
  (observed worst normalised error ~5e-7 with 2 threads);
- Adam fed identical gradients: rtol 1e-6 on the weights (same float32 formula);
- Adam trajectory, each side with its own gradients: atol 1e-4 = lr / 100. Adam divides
  by sqrt(v), so a gradient element's float32 rounding difference (~1e-6 relative to the
  tensor's largest element) is amplified for small elements; observed worst ~4e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch",
    reason="PyTorch not installed; these comparisons need it (CI installs torch==2.13.0 on CPU)",
)

import fastlm  # noqa: E402
from fastlm import _core, reference  # noqa: E402
from fastlm._torch_twin import TorchLM  # noqa: E402

torch.set_num_threads(2)

BACKENDS = ["cpp", "numpy"]
LOSS_RTOL = 1e-6
GRAD_RTOL = 1e-5
GRAD_ATOL_SCALE = 2e-6  # times the largest magnitude of the reference tensor


def make_torch_model(V, E, H, L, seed):
    torch.manual_seed(seed)
    return TorchLM(V, E, H, L).eval()


def make_batch(rng, V, B, T):
    """(B, T) inputs and targets; include ids 0 and V-1 and a repeated id when there is room."""
    x = rng.integers(0, V, size=(B, T))
    y = rng.integers(0, V, size=(B, T))
    edge = [0, V - 1, 0][: x.size]
    x.flat[: len(edge)] = edge
    y.flat[: len(edge)] = edge[::-1]
    return x.astype(np.int64), y.astype(np.int64)


def torch_loss_and_grads(net, x, y):
    net.zero_grad()
    loss = net.loss(x, y)
    loss.backward()
    return float(loss.detach()), {name: p.grad.detach().numpy().copy() for name, p in net.named_parameters()}


def numpy_state(net):
    return {name: t.detach().numpy().copy() for name, t in net.state_dict().items()}


def assert_grad_close(actual, expected, name):
    assert actual.dtype == np.float32, f"{name}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} vs {expected.shape}"
    atol = GRAD_ATOL_SCALE * float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=GRAD_RTOL, atol=atol, err_msg=name)


# V prime and H, E awkward for any SIMD width / GEMM block; B=1 and T=1 edge cases.
SIZES = [
    pytest.param(1009, 19, 37, 1, 3, 5, id="L1-B3-T5"),
    pytest.param(1009, 19, 37, 2, 4, 7, id="L2-B4-T7"),
    pytest.param(1009, 19, 37, 2, 1, 1, id="L2-B1-T1"),
    pytest.param(1009, 19, 37, 1, 1, 6, id="L1-B1-T6"),
    pytest.param(1009, 19, 37, 2, 5, 1, id="L2-B5-T1"),
]


# ---------------------------------------------------------------- (a) torch weights -> fastlm


@pytest.mark.parametrize("load_as", ["numpy", "torch-tensors", "torch-parameters"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("V,E,H,L,B,T", SIZES)
def test_torch_weights_give_torch_loss_and_gradients(V, E, H, L, B, T, backend, load_as):
    seed = 1000 * L + 10 * B + T
    net = make_torch_model(V, E, H, L, seed)
    x, y = make_batch(np.random.default_rng(seed), V, B, T)
    torch_loss, torch_grads = torch_loss_and_grads(net, x, y)

    model = fastlm.LSTMLM(V, embed_dim=E, hidden_size=H, num_layers=L, backend=backend)
    if load_as == "numpy":
        model.load_state_dict(numpy_state(net))
    elif load_as == "torch-tensors":
        model.load_state_dict(net.state_dict())
    else:  # parameters that require grad: load_state_dict must detach them
        model.load_state_dict(dict(net.named_parameters()))
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, net.state_dict()[name].numpy(), err_msg=name)

    loss, grads = model.gradients(x, y)
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, torch_loss, rtol=LOSS_RTOL)
    assert list(grads) == list(torch_grads), "gradient names/order differ from torch's named_parameters"
    for name in torch_grads:  # bias_ih and bias_hh are compared separately, like every other tensor
        assert_grad_close(grads[name], torch_grads[name], name)
    for k in range(L):
        assert grads[f"lstm.bias_ih_l{k}"] is not grads[f"lstm.bias_hh_l{k}"], "bias gradients share memory"


@pytest.mark.parametrize("backend", BACKENDS)
def test_int32_and_int64_ids_agree_with_torch(backend):
    V, E, H, L, B, T = 1009, 19, 37, 2, 2, 3
    net = make_torch_model(V, E, H, L, seed=7)
    x, y = make_batch(np.random.default_rng(7), V, B, T)
    torch_loss, _ = torch_loss_and_grads(net, x, y)
    model = fastlm.LSTMLM(V, embed_dim=E, hidden_size=H, num_layers=L, backend=backend)
    model.load_state_dict(net.state_dict())
    loss32, _ = model.gradients(x.astype(np.int32), y.astype(np.int32))
    loss64, _ = model.gradients(x, y)
    assert loss32 == loss64
    np.testing.assert_allclose(loss32, torch_loss, rtol=LOSS_RTOL)


# ---------------------------------------------------------------- (b) fastlm weights -> torch


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [1, 2])
def test_fastlm_state_dict_loads_into_torch_strict(L, backend):
    V, E, H, B, T = 1009, 19, 37, 3, 4
    model = fastlm.LSTMLM(V, embed_dim=E, hidden_size=H, num_layers=L, seed=5, backend=backend)
    state = model.state_dict()
    net = TorchLM(V, E, H, L).eval()
    assert list(state) == list(net.state_dict()), "names or order differ from torch's state_dict"

    result = net.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, tensor in net.state_dict().items():
        assert tensor.dtype == torch.float32
        np.testing.assert_array_equal(tensor.numpy(), state[name], err_msg=name)

    x, y = make_batch(np.random.default_rng(11), V, B, T)
    with torch.no_grad():
        torch_loss = float(net.loss(x, y))
    loss, _ = model.gradients(x, y)
    np.testing.assert_allclose(loss, torch_loss, rtol=LOSS_RTOL)


# ---------------------------------------------------------------- (c) Adam and gradient clipping

OPTIMIZER_OPS = [pytest.param(_core, id="core"), pytest.param(reference, id="reference")]


def fake_gradients(shapes, rng, count):
    """count sets of gradients, one array per parameter, some elements exactly zero."""
    sets = []
    for _ in range(count):
        grads = {}
        for name, shape in shapes.items():
            g = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, 0, shape)).astype(np.float32)
            g[rng.random(shape) < 0.1] = 0.0
            grads[name] = g
        sets.append(grads)
    return sets


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("ops", OPTIMIZER_OPS)
def test_adam_update_matches_torch_adam_on_identical_gradients(ops, weight_decay):
    """The optimizer alone: torch.optim.Adam and adam_update fed the same gradients."""
    V, E, H, L = 1009, 19, 37, 2
    net = make_torch_model(V, E, H, L, seed=21)
    state = numpy_state(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=weight_decay)
    m = {name: np.zeros_like(value) for name, value in state.items()}
    v = {name: np.zeros_like(value) for name, value in state.items()}
    params = dict(net.named_parameters())
    gradient_sets = fake_gradients({k: s.shape for k, s in state.items()}, np.random.default_rng(21), 3)
    for step, grads in enumerate(gradient_sets, start=1):
        for name, p in params.items():
            p.grad = torch.from_numpy(grads[name].copy())
        opt.step()
        for name in state:
            ops.adam_update(state[name], grads[name], m[name], v[name], step, 1e-2, weight_decay=weight_decay)
    for name, p in params.items():
        np.testing.assert_allclose(state[name], p.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=name)
        # torch updates m by lerp (m + (1-b1)(g - m)), fastlm by b1*m + (1-b1)*g: the same value
        # up to float32 rounding of the terms, which matters where the terms cancel.
        gradient_mass = sum(np.abs(grads[name]).astype(np.float64) for grads in gradient_sets)
        for mine, theirs in [(m[name], opt.state[p]["exp_avg"]), (v[name], opt.state[p]["exp_avg_sq"])]:
            theirs = theirs.numpy()
            bound = 1e-6 * (np.abs(theirs) + (gradient_mass if mine is m[name] else 0.0))
            excess = np.abs(mine.astype(np.float64) - theirs) - bound
            assert excess.max() <= 0, f"{name}: Adam moment differs from torch's by {np.abs(mine - theirs).max()}"


SGD_SETTINGS = [
    pytest.param(dict(lr=1.0), id="plain"),
    pytest.param(dict(lr=0.5, weight_decay=0.1), id="weight-decay"),
    pytest.param(dict(lr=0.5, momentum=0.9), id="momentum"),
    pytest.param(dict(lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.01), id="nesterov"),
]


@pytest.mark.parametrize("settings", SGD_SETTINGS)
@pytest.mark.parametrize("ops", OPTIMIZER_OPS)
def test_sgd_update_matches_torch_sgd_step_for_step(ops, settings):
    """The optimizer alone: torch.optim.SGD and sgd_update fed the same gradients, compared after every step."""
    V, E, H, L = 1009, 19, 37, 2
    net = make_torch_model(V, E, H, L, seed=22)
    state = numpy_state(net)
    opt = torch.optim.SGD(net.parameters(), **settings)
    momentum = settings.get("momentum", 0.0)
    buf = {name: np.zeros_like(value) for name, value in state.items()}
    params = dict(net.named_parameters())
    gradient_sets = fake_gradients({k: s.shape for k, s in state.items()}, np.random.default_rng(22), 4)
    for step, grads in enumerate(gradient_sets, start=1):
        for name, p in params.items():
            p.grad = torch.from_numpy(grads[name].copy())
        opt.step()
        for name in state:
            ops.sgd_update(state[name], grads[name], buf[name], step, **settings)
        for name, p in params.items():
            # The same float32 formula; torch fuses some multiply-adds where fastlm may round twice,
            # so elements where param and lr * step cancel differ by an ulp of the tensor's scale.
            pairs = [("weights", state[name], p.detach().numpy())]
            if momentum:
                pairs.append(("momentum buffer", buf[name], opt.state[p]["momentum_buffer"].numpy()))
            for what, mine, theirs in pairs:
                error = np.abs(mine - theirs).max() / np.abs(theirs).max()
                assert error <= 1e-6, f"{what} of {name} after step {step}: normalised error {error:.3g}"
    start = numpy_state(make_torch_model(V, E, H, L, seed=22))
    assert max(float(np.abs(state[k] - start[k]).max()) for k in state) > 0.1, "the weights did not move"


@pytest.mark.parametrize("max_norm", [0.05, 1e6], ids=["clips", "no-clip"])
@pytest.mark.parametrize("ops", OPTIMIZER_OPS)
def test_clip_grad_norm_matches_torch(ops, max_norm):
    shapes = {"a": (1009, 19), "b": (148,), "c": (148,), "d": (37, 5)}
    grads = fake_gradients(shapes, np.random.default_rng(3), 1)[0]
    tensors = [torch.from_numpy(g.copy()) for g in grads.values()]
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in tensors]
    for p, t in zip(params, tensors):
        p.grad = t
    torch_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    arrays = list(grads.values())
    norm = ops.clip_grad_norm(arrays, max_norm)
    assert isinstance(norm, float)
    np.testing.assert_allclose(norm, torch_norm, rtol=1e-6)
    if max_norm < torch_norm:
        assert np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)) <= max_norm * (1 + 1e-6)
    for array, p in zip(arrays, params):
        np.testing.assert_allclose(array, p.grad.numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("clip", [None, 0.1], ids=["no-clip", "clip-0.1"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_three_adam_steps_follow_torch(backend, clip):
    """Same weights, same 3 batches: torch (autograd, clip_grad_norm_, Adam) vs fastlm
    (model.gradients, clip_grad_norm, adam_update per parameter with its own moments)."""
    V, E, H, L, B, T, lr = 1009, 19, 37, 2, 4, 7, 1e-2
    net = make_torch_model(V, E, H, L, seed=31)
    rng = np.random.default_rng(31)
    batches = [make_batch(rng, V, B, T) for _ in range(3)]
    ops = _core if backend == "cpp" else reference

    state = numpy_state(net)
    m = {name: np.zeros_like(value) for name, value in state.items()}
    v = {name: np.zeros_like(value) for name, value in state.items()}
    model = fastlm.LSTMLM(V, embed_dim=E, hidden_size=H, num_layers=L, backend=backend)
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    for step, (x, y) in enumerate(batches, start=1):
        # torch
        opt.zero_grad()
        torch_loss = net.loss(x, y)
        torch_loss.backward()
        torch_norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), clip)) if clip else None
        opt.step()
        # fastlm
        model.load_state_dict(state)
        loss, grads = model.gradients(x, y)
        np.testing.assert_allclose(loss, float(torch_loss.detach()), rtol=1e-5, err_msg=f"loss at step {step}")
        if clip:
            norm = _core.clip_grad_norm(list(grads.values()), clip)
            np.testing.assert_allclose(norm, torch_norm, rtol=1e-5, err_msg=f"norm at step {step}")
            assert norm > clip, "test set-up: clipping should be active"
        for name in state:
            ops.adam_update(state[name], grads[name], m[name], v[name], step, lr)

    for name, p in net.named_parameters():
        np.testing.assert_allclose(state[name], p.detach().numpy(), rtol=0, atol=lr / 100, err_msg=name)
    # and the moved weights really moved: not a vacuous comparison
    start = numpy_state(make_torch_model(V, E, H, L, seed=31))
    assert max(float(np.abs(state[k] - start[k]).max()) for k in state) > 2 * lr


# ---------------------------------------------------------------- (d) the twin with an adaptive decoder


@pytest.mark.parametrize("head_bias", [False, True])
def test_adaptive_twin_loads_fastlm_weights_and_gives_its_loss(head_bias):
    V, E, H, L, B, T = 300, 12, 16, 2, 3, 5
    options = dict(cutoffs=[20, 100], div_value=2.0, head_bias=head_bias)
    model = fastlm.LSTMLM(V, embed_dim=E, hidden_size=H, num_layers=L, seed=4, **options)
    net = TorchLM(V, E, H, L, **options).eval()
    net.load_state_dict({name: torch.from_numpy(value) for name, value in model.state_dict().items()}, strict=True)
    x, y = make_batch(np.random.default_rng(4), V, B, T)
    with torch.no_grad():
        torch_loss = float(net.loss(x, y))
        probs = net.next_token_probs(net(torch.as_tensor(x[:1]))[0])
    np.testing.assert_allclose(model.gradients(x, y)[0], torch_loss, rtol=LOSS_RTOL)
    assert probs.shape == (V,) and abs(float(probs.sum()) - 1) < 1e-5


# ---------------------------------------------------------------- (e) the recipes: SGD through fit, tying, init


class RecipeLM(torch.nn.Module):
    """PyTorch's word_language_model example: dropout on the embedding, between layers, before the decoder."""

    def __init__(self, V, E, H, L, dropout=0.0, tie=False):
        super().__init__()
        self.embedding = torch.nn.Embedding(V, E)
        self.lstm = torch.nn.LSTM(E, H, num_layers=L, dropout=dropout, batch_first=True)
        self.decoder = torch.nn.Linear(H, V)
        self.drop = torch.nn.Dropout(dropout)
        if tie:
            self.decoder.weight = self.embedding.weight

    def forward(self, x, state=None):
        out, state = self.lstm(self.drop(self.embedding(x)), state)
        return self.decoder(self.drop(out)), state


def test_fit_with_sgd_follows_torch_sgd_batch_for_batch():
    """LSTMLM.fit(optimizer="sgd", momentum, nesterov, clipping, stateful batches, epoch schedule) against
    the same loop written with torch.optim.SGD, from the same weights, for two epochs."""
    V, E, H, L, B, T = 53, 16, 16, 2, 4, 5
    ids = np.random.default_rng(5).integers(0, V, 4 * 5 * 3 + 1)  # 3 batches per epoch
    model = fastlm.LSTMLM(V, E, H, L, init_range=0.1, seed=5)
    net = RecipeLM(V, E, H, L)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    settings = dict(lr=2.0, momentum=0.9, nesterov=True, clip=0.5, decay=0.5, decay_epoch=2)
    history = model.fit(
        ids,
        seq_len=T,
        batch_size=B,
        epochs=2,
        lr=settings["lr"],
        optimizer="sgd",
        momentum=settings["momentum"],
        nesterov=True,
        clip_norm=settings["clip"],
        stateful=True,
        lr_decay=settings["decay"],
        lr_decay_epoch=settings["decay_epoch"],
        progress=False,
    )
    assert history["lr"] == [2.0, 1.0]

    opt = torch.optim.SGD(net.parameters(), lr=settings["lr"], momentum=0.9, nesterov=True)
    streams = torch.from_numpy(ids[:60].reshape(B, 15)), torch.from_numpy(ids[1:61].reshape(B, 15))
    for lr in history["lr"]:
        for group in opt.param_groups:
            group["lr"] = lr
        state = None
        for start in range(0, 15, T):
            x, y = (s[:, start : start + T] for s in streams)
            logits, state = net(x, state)
            state = tuple(s.detach() for s in state)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), settings["clip"])
            opt.step()
    mine, theirs = model.state_dict(), numpy_state(net)
    start = fastlm.LSTMLM(V, E, H, L, init_range=0.1, seed=5).state_dict()
    for name in mine:
        error = np.abs(mine[name] - theirs[name]).max() / np.abs(theirs[name]).max()
        assert error <= 1e-5, f"{name}: normalised difference {error:.3g} after 6 SGD steps"
        assert not np.allclose(mine[name], start[name]), f"{name} did not move"


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_model_loss_and_gradients_equal_torch_autograd(backend):
    """A tied PyTorch module (decoder.weight = embedding.weight): its state_dict loads, and loss and the
    shared matrix's gradient (both uses summed by autograd) agree."""
    V, E, L, B, T = 211, 24, 2, 3, 6
    torch.manual_seed(8)
    net = RecipeLM(V, E, E, L, tie=True).eval()
    state = net.state_dict()
    assert set(state) >= {"embedding.weight", "decoder.weight"}
    model = fastlm.LSTMLM(V, E, E, L, tie_weights=True, backend=backend)
    model.load_state_dict(state)
    x, y = make_batch(np.random.default_rng(8), V, B, T)
    net.zero_grad()
    logits, _ = net(torch.as_tensor(x))
    torch_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.as_tensor(y).reshape(-1))
    torch_loss.backward()
    torch_grads = {name: p.grad.numpy() for name, p in net.named_parameters()}
    assert "decoder.weight" not in torch_grads  # autograd holds one tensor, under its first name

    loss, grads = model.gradients(x, y)
    np.testing.assert_allclose(loss, torch_loss.item(), rtol=LOSS_RTOL)
    assert list(grads) == list(model.state_dict())
    np.testing.assert_array_equal(grads["decoder.weight"], grads["embedding.weight"])
    for name, expected in torch_grads.items():
        assert_grad_close(grads[name], expected, name)
    # and back: fastlm's tied state_dict loads into the tied module, strictly, with both names equal
    trained = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    RecipeLM(V, E, E, L, tie=True).load_state_dict(trained, strict=True)


def test_tied_model_refuses_an_untied_state_dict():
    V, E = 50, 8
    untied = fastlm.LSTMLM(V, E, E).state_dict()
    with pytest.raises(ValueError, match="embedding.weight and decoder.weight differ"):
        fastlm.LSTMLM(V, E, E, tie_weights=True).load_state_dict(untied)


@pytest.mark.parametrize("init_range", [None, 0.1])
def test_initialisation_matches_torch_in_distribution(init_range):
    """init_range=None: PyTorch's default initialisation; r: every parameter U[-r, r] as the recipes'
    `p.data.uniform_(-r, r)`. Different generators, so the spread of each tensor is compared."""
    V, E, H, L = 3001, 64, 64, 2
    torch.manual_seed(0)
    net = RecipeLM(V, E, H, L)
    if init_range is not None:
        for p in net.parameters():
            p.data.uniform_(-init_range, init_range)
    mine = fastlm.LSTMLM(V, E, H, L, init_range=init_range).state_dict()
    for name, theirs in numpy_state(net).items():
        bound = init_range if init_range is not None else (None if name == "embedding.weight" else 1 / np.sqrt(H))
        if bound is not None:
            assert np.abs(mine[name]).max() <= bound, name
        spread = float(np.std(mine[name])) / float(np.std(theirs))
        # the standard error of a std estimate from n >= 256 values is below 5%
        assert abs(spread - 1) < 0.15, f"{name}: std {np.std(mine[name]):.4g} vs torch's {np.std(theirs):.4g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_placement_equals_torch_with_the_same_masks(backend, monkeypatch):
    """Dropout on the embedding output, between the layers and before the decoder (PyTorch's
    word_language_model example): with fastlm's masks replayed in torch, loss and gradients agree."""
    V, E, H, L, B, T, p = 97, 12, 16, 2, 3, 5, 0.4
    model = fastlm.LSTMLM(V, E, H, L, dropout=p, seed=4, backend=backend)
    masks = []
    original = model._dropout

    def recording(values, rng):
        dropped, mask = original(values, rng)
        masks.append(mask)
        return dropped, mask

    monkeypatch.setattr(model, "_dropout", recording)
    x, y = make_batch(np.random.default_rng(4), V, B, T)
    loss, grads = model.gradients(x, y, train=True)
    assert len(masks) == L + 1 and all(m is not None for m in masks)  # L layer inputs + the top output

    state = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    embedding = torch.nn.Embedding(V, E)
    layers = [torch.nn.LSTM(E if k == 0 else H, H, batch_first=True) for k in range(L)]
    decoder = torch.nn.Linear(H, V)
    embedding.weight.data, decoder.weight.data, decoder.bias.data = (
        state["embedding.weight"],
        state["decoder.weight"],
        state["decoder.bias"],
    )
    for k, layer in enumerate(layers):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer, f"{kind}_l0").data = state[f"lstm.{kind}_l{k}"].clone()
    h = embedding(torch.as_tensor(x))
    for k, layer in enumerate(layers):
        h, _ = layer(h * torch.from_numpy(masks[k]))
    logits = decoder(h * torch.from_numpy(masks[L]))
    torch_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.as_tensor(y).reshape(-1))
    torch_loss.backward()
    np.testing.assert_allclose(loss, torch_loss.item(), rtol=LOSS_RTOL)
    assert_grad_close(grads["embedding.weight"], embedding.weight.grad.numpy(), "embedding.weight")
    assert_grad_close(grads["decoder.weight"], decoder.weight.grad.numpy(), "decoder.weight")
    for k, layer in enumerate(layers):
        assert_grad_close(grads[f"lstm.weight_ih_l{k}"], layer.weight_ih_l0.grad.numpy(), f"weight_ih_l{k}")
        assert_grad_close(grads[f"lstm.weight_hh_l{k}"], layer.weight_hh_l0.grad.numpy(), f"weight_hh_l{k}")
    # the masks really drop: without them the loss would differ
    assert abs(loss - model.gradients(x, y)[0]) > 1e-4
