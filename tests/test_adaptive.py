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
    "torch", reason="PyTorch not installed; these comparisons need it (CI installs torch==2.13.0 on CPU)")

torch.set_num_threads(2)

OPS = {"cpp": _core, "numpy": reference}
LOSS_RTOL = 1e-6
GRAD_RTOL = 1e-5
GRAD_ATOL_SCALE = 2e-6  # times the largest magnitude of the reference tensor


def assert_grad_close(ours, theirs, name):
    theirs = theirs.detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=GRAD_RTOL, atol=GRAD_ATOL_SCALE * np.abs(theirs).max(),
                               err_msg=name)


def torch_case(N, H, V, cutoffs, div_value, head_bias, seed=0, zipf=1.2):
    torch.manual_seed(seed)
    module = torch.nn.AdaptiveLogSoftmaxWithLoss(H, V, cutoffs, div_value=div_value, head_bias=head_bias)
    rng = np.random.default_rng(seed)
    h = torch.tensor(rng.uniform(-1, 1, (N, H)), dtype=torch.float32, requires_grad=True)
    targets = np.minimum(rng.zipf(zipf, N) - 1, V - 1).astype(np.int32)
    return module, h, targets


def op_args(module, h):
    bias = module.head.bias.detach().numpy() if module.head.bias is not None else None
    return (h.detach().numpy(), module.head.weight.detach().numpy(), bias,
            [tail[0].weight.detach().numpy() for tail in module.tail],
            [tail[1].weight.detach().numpy() for tail in module.tail])


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
