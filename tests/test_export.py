"""Export (issue 15): model.to_onnx run in ONNX Runtime against fastlm, model.to_torch and
LSTMLM.from_torch against PyTorch (fastlm's names, PyTorch's word_language_model's, tied or
not, adaptive softmax), and export's bad input.

Tolerances: float32 on every side with different summation orders; log-probabilities of
these small models agree to ~1e-6 (atol 2e-5), states to ~1e-7 (atol 1e-5).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import fastlm
from fastlm import onnx_export

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

LOG_ATOL = 2e-5
STATE_ATOL = 1e-5

# (name, constructor arguments): the full softmax, a tied one, an adaptive softmax with a head bias.
MODELS = {
    "full-L2": dict(vocab_size=53, embed_dim=12, hidden_size=16, num_layers=2, seed=1),
    "tied-L1": dict(vocab_size=41, embed_dim=16, hidden_size=16, num_layers=1, seed=2, tie_weights=True),
    "adaptive-L2": dict(
        vocab_size=60,
        embed_dim=12,
        hidden_size=16,
        num_layers=2,
        seed=3,
        cutoffs=[10, 30],
        div_value=2.0,
        head_bias=True,
    ),
}


def make_model(name, backend="cpp"):
    model = fastlm.LSTMLM(**MODELS[name], backend=backend)
    state = model.state_dict()
    for key in ("decoder.weight", "decoder.head.weight"):  # peaked distributions: they depend on the context
        if key in state and not model.tie_weights:
            state[key] *= 4
    model.load_state_dict(state)
    return model


def random_ids(model, shape, seed=0):
    return np.random.default_rng(seed).integers(0, model.vocab_size, shape).astype(np.int64)


def fastlm_log_probs(model, x, state=None):
    """fastlm's (B, T, V) natural-log distributions after every position, and the final state
    as (L, B, H) arrays: the LSTM through the model's forward path (internal interface), the
    decoder's full distribution through its kernels (adaptive_log_prob) or, for the full
    softmax, float64 NumPy on the same rows."""
    p = model.params
    x = np.asarray(x, np.int32)
    rows, _, tape = model._lstm_forward(x, state, None)
    if model.cutoffs is not None:
        from fastlm import adaptive

        flat = model.ops.adaptive_log_prob(rows, *adaptive.decoder_arguments(p, len(model.cutoffs)))
    else:
        logits = rows.astype(np.float64) @ p["decoder.weight"].T.astype(np.float64) + p["decoder.bias"]
        flat = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    final = model._final_state(tape)
    h = np.stack([h for h, _ in final])
    c = np.stack([c for _, c in final])
    return flat.reshape(*x.shape, -1), h, c


def zeros(model, batch):
    return np.zeros((model.num_layers, batch, model.hidden_size), np.float32)


# ================================================================= ONNX


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="onnx not installed: pip install 'fastlm[onnx]' (the [test] extra brings it)")
    return pytest.importorskip(
        "onnxruntime", reason="onnxruntime not installed: pip install 'fastlm[onnx]' (the [test] extra brings it)"
    )


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, ort, tmp_path_factory):
    """(model, ONNX Runtime session on its exported file, the file)."""
    model = make_model(request.param)
    path = model.to_onnx(tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return model, session, path


def run(session, ids, h0, c0):
    return session.run(["log_probs", "hn", "cn"], {"ids": np.asarray(ids, np.int64), "h0": h0, "c0": c0})


def test_onnx_graph_has_the_promised_inputs_outputs_and_operators(exported):
    import onnx

    model, _, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("LSTM") == model.num_layers
    assert {"Gather", "MatMul", "LogSoftmax"} <= set(ops)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    L, H, V = model.num_layers, model.hidden_size, model.vocab_size
    assert {v.name: dims(v) for v in proto.graph.input} == {
        "ids": ["batch", "time"],
        "h0": [L, "batch", H],
        "c0": [L, "batch", H],
    }
    assert {v.name: dims(v) for v in proto.graph.output} == {
        "log_probs": ["batch", "time", V],
        "hn": [L, "batch", H],
        "cn": [L, "batch", H],
    }
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    if model.tie_weights:  # the shared matrix is stored once
        names = [init.name for init in proto.graph.initializer]
        assert names.count("embedding.weight") == 1 and not any(n.startswith("decoder.weight") for n in names)


def test_onnx_log_probs_and_state_equal_fastlm(exported):
    model, session, _ = exported
    x = random_ids(model, (3, 9))
    log_probs, hn, cn = run(session, x, zeros(model, 3), zeros(model, 3))
    assert log_probs.shape == (3, 9, model.vocab_size) and hn.shape == cn.shape == (model.num_layers, 3, 16)
    expected, h, c = fastlm_log_probs(model, x)
    np.testing.assert_allclose(log_probs, expected, atol=LOG_ATOL, rtol=0)
    np.testing.assert_allclose(hn, h, atol=STATE_ATOL, rtol=0)
    np.testing.assert_allclose(cn, c, atol=STATE_ATOL, rtol=0)
    # The model's own scoring paths, through the C++ kernels: forward's loss, predictions and
    # state; next_token_probs after a whole row.
    y = random_ids(model, (3, 9), seed=1)
    loss, predictions, state = model.forward(*model.check_batch(x, y))
    onnx_loss = -np.mean(np.take_along_axis(log_probs, y[..., None], axis=2), dtype=np.float64)
    assert loss == pytest.approx(onnx_loss, rel=1e-5)
    top2 = np.sort(log_probs, axis=2)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4  # a near tie may go either way in float32
    assert np.array_equal(predictions[clear], log_probs.argmax(axis=2)[clear])
    np.testing.assert_allclose(hn, np.stack([h for h, _ in state]), atol=STATE_ATOL, rtol=0)
    np.testing.assert_allclose(np.exp(log_probs[1, -1]), model.next_token_probs(x[1]), atol=1e-6, rtol=0)


def test_onnx_scores_equal_model_log_probs(exported):
    """model.log_probs (each sequence from a zero state, its first token context only) against
    the graph's log_probs of the tokens that follow."""
    model, session, _ = exported
    x = random_ids(model, (2, 8), seed=4)
    log_probs, _, _ = run(session, x, zeros(model, 2), zeros(model, 2))
    scored = model.log_probs(list(x))
    for b in range(2):
        expected = np.take_along_axis(log_probs[b, :-1], x[b, 1:, None], axis=1)[:, 0]
        np.testing.assert_allclose(scored[b], expected, atol=LOG_ATOL, rtol=0)


def test_onnx_step_by_step_with_carried_state_equals_one_call(exported):
    model, session, _ = exported
    x = random_ids(model, (2, 7), seed=2)
    whole, hn, cn = run(session, x, zeros(model, 2), zeros(model, 2))
    h, c = zeros(model, 2), zeros(model, 2)
    steps = []
    for t in range(x.shape[1]):
        lp, h, c = run(session, x[:, t : t + 1], h, c)
        steps.append(lp)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, atol=LOG_ATOL, rtol=0)
    np.testing.assert_allclose(h, hn, atol=STATE_ATOL, rtol=0)
    np.testing.assert_allclose(c, cn, atol=STATE_ATOL, rtol=0)


def test_onnx_continues_from_a_given_state_as_fastlm(exported):
    """h0 and c0 go to the right layers: a prefix's state, then the rest, as fastlm's forward."""
    model, session, _ = exported
    x = random_ids(model, (2, 10), seed=3)
    _, h, c = fastlm_log_probs(model, x[:, :4])
    log_probs, hn, cn = run(session, x[:, 4:], h, c)
    expected, h_end, c_end = fastlm_log_probs(model, x[:, 4:], [(h[k], c[k]) for k in range(model.num_layers)])
    np.testing.assert_allclose(log_probs, expected, atol=LOG_ATOL, rtol=0)
    np.testing.assert_allclose(hn, h_end, atol=STATE_ATOL, rtol=0)
    np.testing.assert_allclose(cn, c_end, atol=STATE_ATOL, rtol=0)


def test_onnx_greedy_generation_equals_fastlm_generate(exported):
    model, session, _ = exported
    prompt = random_ids(model, (1, 3), seed=5)
    lp, h, c = run(session, prompt, zeros(model, 1), zeros(model, 1))
    tokens = []
    for _ in range(12):
        token = int(lp[0, -1].argmax())
        tokens.append(token)
        lp, h, c = run(session, [[token]], h, c)
    assert tokens == model.generate(prompt[0], max_new_tokens=12, temperature=0).tolist()


def test_onnx_export_of_a_numpy_backend_model_is_the_same_file(ort, tmp_path):
    """The file depends on the weights, not on the kernels that run them in fastlm."""
    a = make_model("full-L2").to_onnx(tmp_path / "cpp.onnx")
    b = make_model("full-L2", backend="numpy").to_onnx(tmp_path / "numpy.onnx")
    assert a.read_bytes() == b.read_bytes()


# ----------------------------------------------------------------- bad input


def test_export_refuses_an_unwritable_path_before_writing(tmp_path):
    model = make_model("full-L2")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.to_onnx(tmp_path / "missing" / "m.onnx")
    with pytest.raises(IsADirectoryError):
        model.to_onnx(tmp_path)
    with pytest.raises(TypeError, match="path must be a file path"):
        model.to_onnx(3)
    with pytest.raises(ValueError, match="must name a file, got ''"):
        model.to_onnx("")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a POSIX user without root's override")
def test_export_refuses_a_read_only_directory(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            make_model("full-L2").to_onnx(tmp_path / "m.onnx")
    finally:
        tmp_path.chmod(0o700)
    assert list(tmp_path.iterdir()) == []


def test_export_without_onnx_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'fastlm\[onnx\]'"):
        make_model("full-L2").to_onnx(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_the_previous_file(ort, tmp_path, monkeypatch):
    import onnx

    path = tmp_path / "m.onnx"
    make_model("tied-L1").to_onnx(path)
    before = path.read_bytes()

    def failing(proto, target, *args, **kwargs):
        with open(target, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", failing)
    with pytest.raises(OSError, match="No space left"):
        make_model("full-L2").to_onnx(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_an_oversized_model_is_refused_before_writing(ort, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 1000)
    with pytest.raises(ValueError, match="more than one ONNX file"):
        make_model("full-L2").to_onnx(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# ================================================================= PyTorch


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip(
        "torch", reason="PyTorch not installed; these conversions need it (CI installs torch==2.13.0 on CPU)"
    )
    torch.set_num_threads(1)
    return torch


@pytest.mark.parametrize("name", list(MODELS))
def test_to_torch_gives_the_same_outputs(torch, name):
    model = make_model(name)
    module = model.to_torch()
    assert isinstance(module, torch.nn.Module) and not module.training
    x = random_ids(model, (3, 6), seed=6)
    expected, h, c = fastlm_log_probs(model, x)
    with torch.no_grad():
        log_probs, (hn, cn) = module.log_probs(torch.from_numpy(x))
    np.testing.assert_allclose(log_probs.numpy(), expected, atol=LOG_ATOL, rtol=0)
    np.testing.assert_allclose(hn.numpy(), h, atol=STATE_ATOL, rtol=0)
    np.testing.assert_allclose(cn.numpy(), c, atol=STATE_ATOL, rtol=0)
    assert (getattr(module.decoder, "weight", None) is module.embedding.weight) == model.tie_weights
    with torch.no_grad():  # a copy: changing the module leaves the model alone
        module.embedding.weight.add_(1.0)
    assert not np.array_equal(module.embedding.weight.detach().numpy(), model.params["embedding.weight"])


@pytest.mark.parametrize("name", list(MODELS))
def test_from_torch_of_to_torch_is_the_same_model(torch, name):
    model = make_model(name)
    back = fastlm.LSTMLM.from_torch(model.to_torch(), seed=model.seed)
    assert type(back) is fastlm.LSTMLM
    assert back.config() == model.config()
    for key, value in model.state_dict().items():
        assert np.array_equal(back.params[key], value), key
    assert (back.params["decoder.weight"] is back.params["embedding.weight"]) if model.tie_weights else True
    x = random_ids(model, (2, 5))
    assert np.array_equal(back.forward(*back.check_batch(x, x))[1], model.forward(*model.check_batch(x, x))[1])


def word_language_model(torch, V, E, H, L, tie, dropout=0.2):
    """PyTorch's examples/word_language_model RNNModel (LSTM): encoder, rnn, decoder, drop."""

    class RNNModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = torch.nn.Dropout(dropout)
            self.encoder = torch.nn.Embedding(V, E)
            self.rnn = torch.nn.LSTM(E, H, L, dropout=dropout)
            self.decoder = torch.nn.Linear(H, V)
            if tie:
                self.decoder.weight = self.encoder.weight

        def forward(self, x, hidden):  # x: (T, B), time-major as in the example
            output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
            decoded = self.decoder(self.drop(output)).view(-1, V)
            return torch.nn.functional.log_softmax(decoded, dim=1), hidden

    torch.manual_seed(7)
    return RNNModel().eval()


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("source", ["module", "state_dict"])
def test_from_torch_reads_word_language_model(torch, tie, source):
    V, E, H, L = 37, 16, 16, 2
    net = word_language_model(torch, V, E, H, L, tie)
    model = fastlm.LSTMLM.from_torch(net if source == "module" else net.state_dict())
    assert (model.vocab_size, model.embed_dim, model.hidden_size, model.num_layers) == (V, E, H, L)
    assert model.tie_weights == tie
    assert model.dropout == (0.2 if source == "module" else 0.0)  # a state_dict does not say
    x = random_ids(model, (2, 6), seed=8)
    with torch.no_grad():
        h0 = torch.zeros(L, 2, H)
        theirs, (hn, _) = net(torch.from_numpy(x.T.copy()), (h0, h0))  # time-major
    theirs = theirs.view(6, 2, V).transpose(0, 1).numpy()
    ours, h, _ = fastlm_log_probs(model, x)
    np.testing.assert_allclose(ours, theirs, atol=LOG_ATOL, rtol=0)
    np.testing.assert_allclose(h, hn.numpy(), atol=STATE_ATOL, rtol=0)


@pytest.mark.parametrize("div_value", [4.0, 1.5])
@pytest.mark.parametrize("source", ["module", "state_dict"])
def test_from_torch_reads_an_adaptive_softmax(torch, div_value, source):
    """An AdaptiveLogSoftmaxWithLoss decoder, under any attribute name in a module; a
    state_dict (decoder.* names) gives its cutoffs, and div_value from the projections' widths."""
    V, E, H = 70, 10, 64

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(V, E)
            self.lstm = torch.nn.LSTM(E, H, batch_first=True, bias=False)
            attribute = "decoder" if source == "state_dict" else "criterion"
            setattr(self, attribute, torch.nn.AdaptiveLogSoftmaxWithLoss(H, V, [8, 20, 40], div_value=div_value))

    torch.manual_seed(9)
    net = Net().eval()
    state = {("embedding.weight" if k == "embed.weight" else k): v for k, v in net.state_dict().items()}
    model = fastlm.LSTMLM.from_torch(net if source == "module" else state)
    assert model.cutoffs == [8, 20, 40] and model.div_value == div_value and not model.head_bias
    x = random_ids(model, (2, 5), seed=10)
    with torch.no_grad():
        out, _ = net.lstm(net.embed(torch.from_numpy(x)))
        decoder = net.decoder if source == "state_dict" else net.criterion
        theirs = decoder.log_prob(out.reshape(-1, H)).reshape(2, 5, V).numpy()
    np.testing.assert_allclose(fastlm_log_probs(model, x)[0], theirs, atol=LOG_ATOL, rtol=0)
    assert not model.params["lstm.bias_ih_l0"].any()  # bias=False: zeros


def test_from_torch_refuses_what_it_cannot_convert(torch):
    nn = torch.nn

    class GRUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.rnn, self.decoder = nn.Embedding(20, 8), nn.GRU(8, 8), nn.Linear(8, 20)

    with pytest.raises(ValueError, match="is a GRU: fastlm models are LSTMs"):
        fastlm.LSTMLM.from_torch(GRUNet())
    with pytest.raises(ValueError, match="a GRU's has 3 gates"):
        fastlm.LSTMLM.from_torch(GRUNet().state_dict())

    class Bidirectional(nn.Module):
        def __init__(self):
            super().__init__()
            self.e, self.r, self.d = nn.Embedding(20, 8), nn.LSTM(8, 8, bidirectional=True), nn.Linear(16, 20)

    with pytest.raises(ValueError, match="unidirectional"):
        fastlm.LSTMLM.from_torch(Bidirectional())

    class NoDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.e, self.r = nn.Embedding(20, 8), nn.LSTM(8, 8)

    with pytest.raises(ValueError, match=r"exactly one Linear\(8, 20\) decoder to convert, found 0"):
        fastlm.LSTMLM.from_torch(NoDecoder())
    with pytest.raises(KeyError, match="no embedding"):
        fastlm.LSTMLM.from_torch({"weight": torch.zeros(3)})
    with pytest.raises(KeyError, match="no embedding .*; it holds nothing"):
        fastlm.LSTMLM.from_torch({})
    with pytest.raises(TypeError, match="torch.nn.Module or a state_dict"):
        fastlm.LSTMLM.from_torch([1, 2])
