"""Bad input gets a clear Python exception that names the problem, never a crash or garbage.

And input that is merely *unusual* -- non-contiguous, Fortran-ordered, strided,
non-native byte order, another integer or float width -- is accepted and gives exactly
the result of the contiguous native array (nothing is misread).

Documented behaviour for NaN: the C++ ops do not check float inputs for NaN (that would
cost a pass over every array); NaN propagates to exactly the outputs that depend on it
(the loss becomes NaN) and nothing crashes. The places that do check are those where
NaN would silently destroy state: load_state_dict, adam_update's grad, clip_grad_norm.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import fastlm
from fastlm import _core

BACKENDS = ["cpp", "numpy"]
V, E, H, L = 11, 4, 5, 2
f32 = np.float32


@pytest.fixture(params=BACKENDS)
def model(request):
    return fastlm.LSTMLM(V, embed_dim=E, hidden_size=H, num_layers=L, seed=3, backend=request.param)


def batch(B=2, T=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)).astype(np.int32), rng.integers(0, V, (B, T)).astype(np.int32)


def assert_same_result(first, second):
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    assert loss_a == loss_b
    assert list(grads_a) == list(grads_b)
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


def assert_state_equal(a, b):
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ================================================================= LSTMLM.gradients


class TestGradientsRejects:
    @pytest.mark.parametrize("which", ["inputs", "targets"])
    @pytest.mark.parametrize("bad_id", [V, V + 1000, -1, -(2**31)])
    def test_id_out_of_range(self, model, which, bad_id):
        x, y = batch()
        (x if which == "inputs" else y)[1, 2] = bad_id
        with pytest.raises(ValueError, match=rf"{which} holds id {bad_id}\b.*outside"):
            model.gradients(x, y)

    def test_id_out_of_range_int64(self, model):
        x, y = batch()
        x = x.astype(np.int64)
        x[0, 0] = 2**40  # would wrap to 0 if cast to int32 before checking
        with pytest.raises(ValueError, match=rf"inputs holds id {2**40}"):
            model.gradients(x, y)

    @pytest.mark.parametrize("which", ["inputs", "targets"])
    def test_float_ids(self, model, which):
        x, y = batch()
        args = {"inputs": x, "targets": y}
        args[which] = args[which].astype(np.float64)  # integral values, still not ids
        with pytest.raises(TypeError, match=rf"{which} must hold integer token ids.*float64"):
            model.gradients(args["inputs"], args["targets"])

    @pytest.mark.parametrize("which", ["inputs", "targets"])
    def test_bool_ids(self, model, which):
        x, y = batch()
        args = {"inputs": x, "targets": y}
        args[which] = args[which] > 3
        with pytest.raises(TypeError, match=rf"{which} must hold integer token ids.*bool"):
            model.gradients(args["inputs"], args["targets"])

    def test_none_ids(self, model):
        x, y = batch()
        with pytest.raises(TypeError, match="inputs"):
            model.gradients(None, y)
        with pytest.raises(TypeError, match="targets"):
            model.gradients(x, None)

    @pytest.mark.parametrize("shape", [(6,), (1, 2, 3)], ids=["1-D", "3-D"])
    def test_wrong_ndim(self, model, shape):
        ids = np.zeros(shape, np.int32)
        with pytest.raises(ValueError, match=r"inputs must be 2-D"):
            model.gradients(ids, ids)
        x, _ = batch()
        with pytest.raises(ValueError, match=r"targets must be 2-D"):
            model.gradients(x, np.zeros(shape, np.int32))

    @pytest.mark.parametrize("y_shape", [(2, 4), (3, 3), (3, 2)])
    def test_mismatched_shapes(self, model, y_shape):
        x, _ = batch(2, 3)
        with pytest.raises(ValueError, match=r"same shape.*\(2, 3\).*" + re.escape(str(y_shape))):
            model.gradients(x, np.zeros(y_shape, np.int32))

    @pytest.mark.parametrize("shape", [(0, 3), (2, 0), (0, 0)], ids=["B=0", "T=0", "B=T=0"])
    def test_empty_batch(self, model, shape):
        ids = np.zeros(shape, np.int32)
        with pytest.raises(ValueError, match=r"inputs is empty"):
            model.gradients(ids, ids)


class TestGradientsAcceptsUnusualLayouts:
    """Non-contiguous, byte-swapped and other-width ids are read correctly."""

    @pytest.mark.parametrize(
        "variant",
        [
            "transposed",
            "strided-slice",
            "fortran",
            "big-endian-i4",
            "big-endian-i8",
            "int64",
            "uint8",
            "int16",
            "negative-stride",
            "list",
        ],
    )
    def test_same_result_as_contiguous_int32(self, model, variant):
        x, y = batch(3, 5, seed=4)
        expected = model.gradients(x, y)
        if variant == "transposed":
            xv, yv = np.ascontiguousarray(x.T).T, np.ascontiguousarray(y.T).T
            assert not xv.flags.c_contiguous
        elif variant == "strided-slice":
            wide_x = np.zeros((3, 10), np.int32)
            wide_y = np.zeros((3, 10), np.int32)
            wide_x[:, ::2], wide_y[:, ::2] = x, y
            wide_x[:, 1::2] = V + 7  # out-of-range filler: misreading the stride would hit it
            wide_y[:, 1::2] = -5
            xv, yv = wide_x[:, ::2], wide_y[:, ::2]
            assert not xv.flags.c_contiguous
        elif variant == "fortran":
            xv, yv = np.asfortranarray(x), np.asfortranarray(y)
        elif variant == "big-endian-i4":
            xv, yv = x.astype(">i4"), y.astype(">i4")
        elif variant == "big-endian-i8":
            xv, yv = x.astype(">i8"), y.astype(">i8")
        elif variant == "int64":
            xv, yv = x.astype(np.int64), y.astype(np.int64)
        elif variant == "uint8":
            xv, yv = x.astype(np.uint8), y.astype(np.uint8)
        elif variant == "int16":
            xv, yv = x.astype(np.int16), y.astype(np.int16)
        elif variant == "negative-stride":
            xv, yv = x[::-1, ::-1].copy()[::-1, ::-1], y[::-1, ::-1].copy()[::-1, ::-1]
            assert xv.strides[0] < 0
        else:
            xv, yv = x.tolist(), y.tolist()
        assert_same_result(model.gradients(xv, yv), expected)

    def test_caller_arrays_not_modified(self, model):
        x, y = batch()
        x0, y0 = x.copy(), y.copy()
        model.gradients(x, y)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)


# ================================================================= load_state_dict


def modified_state(model):
    """A complete, valid state that differs from the model's in every entry."""
    return {name: value + f32(0.5) for name, value in model.state_dict().items()}


class TestLoadStateDict:
    @pytest.mark.parametrize("state", [None, [("embedding.weight", 1)], "embedding.weight"])
    def test_not_a_mapping(self, model, state):
        with pytest.raises(TypeError, match="state_dict must be a mapping of parameter names to arrays, got"):
            model.load_state_dict(state)

    @pytest.mark.parametrize("entry", ["embedding.weight", "lstm.bias_hh_l1", "decoder.bias"])
    def test_missing_entry(self, model, entry):
        before = model.state_dict()
        state = modified_state(model)
        del state[entry]
        with pytest.raises(KeyError, match=rf"missing.*'{entry}'"):
            model.load_state_dict(state)
        assert_state_equal(model.state_dict(), before)

    def test_extra_entry(self, model):
        before = model.state_dict()
        state = modified_state(model)
        state["lstm.weight_ih_l2"] = np.zeros((4 * H, H), f32)
        with pytest.raises(KeyError, match=r"unexpected.*'lstm\.weight_ih_l2'"):
            model.load_state_dict(state)
        assert_state_equal(model.state_dict(), before)

    @pytest.mark.parametrize(
        "entry,bad_shape",
        [
            ("decoder.bias", (V + 1,)),
            ("lstm.weight_hh_l1", (H, 4 * H)),  # transposed
            ("embedding.weight", (V * E,)),  # right size, wrong shape
            ("lstm.bias_ih_l0", (1, 4 * H)),
        ],
    )
    def test_misshaped_entry(self, model, entry, bad_shape):
        before = model.state_dict()
        state = modified_state(model)
        state[entry] = np.zeros(bad_shape, f32)
        with pytest.raises(ValueError, match=rf"'{entry}'.*shape"):
            model.load_state_dict(state)
        assert_state_equal(model.state_dict(), before)

    @pytest.mark.parametrize("dtype", [np.int32, np.int64, bool, object])
    def test_non_float_entry(self, model, dtype):
        before = model.state_dict()
        state = modified_state(model)
        state["decoder.weight"] = np.zeros((V, H), dtype)
        with pytest.raises(TypeError, match=r"'decoder\.weight'.*float"):
            model.load_state_dict(state)
        assert_state_equal(model.state_dict(), before)

    @pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
    @pytest.mark.parametrize("entry", ["embedding.weight", "decoder.bias"])
    def test_non_finite_entry(self, model, entry, value):
        before = model.state_dict()
        state = modified_state(model)
        state[entry].flat[-1] = value
        with pytest.raises(ValueError, match=rf"'{entry}'.*NaN or infinity"):
            model.load_state_dict(state)
        assert_state_equal(model.state_dict(), before)

    @pytest.mark.parametrize("value", [1e39, -3.5e38])
    def test_float64_beyond_float32(self, model, value):
        """Finite as float64, infinite once cast to float32: the check runs after the cast."""
        before = model.state_dict()
        state = {name: array.astype(np.float64) for name, array in modified_state(model).items()}
        state["decoder.bias"][2] = value
        with pytest.raises(ValueError, match=r"'decoder\.bias'.*NaN or infinity"):
            model.load_state_dict(state)
        assert_state_equal(model.state_dict(), before)

    def test_none_entry(self, model):
        before = model.state_dict()
        state = modified_state(model)
        state["lstm.weight_ih_l0"] = None
        with pytest.raises(TypeError, match=r"'lstm\.weight_ih_l0'"):
            model.load_state_dict(state)
        assert_state_equal(model.state_dict(), before)

    def test_valid_unusual_layouts_are_accepted_and_copied(self, model):
        state = modified_state(model)
        unusual = dict(state)
        unusual["decoder.weight"] = np.asfortranarray(state["decoder.weight"])
        unusual["lstm.weight_hh_l0"] = state["lstm.weight_hh_l0"].astype(">f4")
        unusual["embedding.weight"] = state["embedding.weight"].astype(np.float64)
        model.load_state_dict(unusual)
        assert_state_equal(model.state_dict(), state)
        unusual["decoder.weight"][0, 0] = 123.0  # the model holds its own copy
        assert model.state_dict()["decoder.weight"][0, 0] != 123.0


# ================================================================= constructor


class TestConstructor:
    @pytest.mark.parametrize(
        "kwargs, error, message",
        [
            (
                dict(embed_dim=8, hidden_size=16, tie_weights=True),
                ValueError,
                r"tie_weights=True .* needs embed_dim == hidden_size; got embed_dim=8, hidden_size=16",
            ),
            (
                dict(embed_dim=16, hidden_size=16, tie_weights=True, cutoffs=[10]),
                ValueError,
                r"tie_weights=True needs the full softmax decoder",
            ),
            (dict(tie_weights=1), TypeError, r"tie_weights must be True or False, got 1"),
            (dict(init_range=0.0), ValueError, r"init_range must be positive and finite, got 0.0"),
            (dict(init_range=-0.1), ValueError, r"init_range must be positive and finite"),
            (dict(init_range=float("inf")), ValueError, r"init_range must be positive and finite"),
            (dict(init_range="0.1"), TypeError, r"init_range must be a number or None, got '0.1'"),
            (dict(init_range=True), TypeError, r"init_range must be a number or None"),
        ],
    )
    def test_recipe_options(self, kwargs, error, message):
        with pytest.raises(error, match=message):
            fastlm.LSTMLM(V, **kwargs)

    @pytest.mark.parametrize("value", [0, -3])
    def test_vocab_size_not_positive(self, value):
        with pytest.raises(ValueError, match=rf"vocab_size must be a positive integer, got {value}"):
            fastlm.LSTMLM(value)

    @pytest.mark.parametrize("value", [10.0, "10", None, True])
    def test_vocab_size_not_int(self, value):
        with pytest.raises(TypeError, match="vocab_size must be an int"):
            fastlm.LSTMLM(value)

    @pytest.mark.parametrize("name", ["embed_dim", "hidden_size", "num_layers"])
    def test_other_sizes(self, name):
        with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got 0"):
            fastlm.LSTMLM(V, **{name: 0})

    @pytest.mark.parametrize(
        "sizes", [dict(num_layers=2**31), dict(hidden_size=10**6), dict(vocab_size=10**12), dict(embed_dim=2**40)]
    )
    def test_larger_than_memory(self, sizes):
        """Checked by formula before anything is allocated: num_layers=2**31 used to grow for ever."""
        import time

        from fastlm.model import physical_memory

        if physical_memory() is None:
            pytest.skip("the system does not report its memory")
        started = time.process_time()  # processor time: a busy machine does not stretch it
        with pytest.raises(ValueError, match=r"parameters \(.* GiB as float32\), more than this machine's memory"):
            fastlm.LSTMLM(**{"vocab_size": V, **sizes})
        assert time.process_time() - started < 1.0

    def test_size_beyond_a_float_is_reported_not_overflowed(self):
        """The size check's message must not overflow (GiB of 10**400 parameters as a float)."""
        from fastlm.model import physical_memory

        if physical_memory() is None:
            pytest.skip("the system does not report its memory")
        with pytest.raises(
            ValueError, match=r"hidden_size=about 10\*\*400, num_layers=1 make about 10\*\*800 parameters \(more than"
        ):
            fastlm.LSTMLM(V, 4, 10**400)

    @pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan")])
    def test_dropout_out_of_range(self, value):
        with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
            fastlm.LSTMLM(V, dropout=value)

    @pytest.mark.parametrize("backend", ["cuda", "CPP", ""])
    def test_unknown_backend(self, backend):
        with pytest.raises(ValueError, match=r"backend must be one of"):
            fastlm.LSTMLM(V, backend=backend)

    @pytest.mark.parametrize("backend", [None, 0, b"cpp"])
    def test_backend_not_str(self, backend):
        with pytest.raises(TypeError, match=r"backend must be one of 'cpp', 'numpy', got"):
            fastlm.LSTMLM(V, backend=backend)


# ================================================================= C++ ops: shared inputs


def lstm_inputs(B=2, T=3, I=4, Hd=5, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        x=rng.standard_normal((B, T, I)).astype(f32),
        w_ih=(rng.standard_normal((4 * Hd, I)) * 0.3).astype(f32),
        w_hh=(rng.standard_normal((4 * Hd, Hd)) * 0.3).astype(f32),
        b_ih=(rng.standard_normal(4 * Hd) * 0.1).astype(f32),
        b_hh=(rng.standard_normal(4 * Hd) * 0.1).astype(f32),
        h0=(rng.standard_normal((B, Hd)) * 0.1).astype(f32),
        c0=(rng.standard_normal((B, Hd)) * 0.1).astype(f32),
    )


def lstm_backward_inputs(B=2, T=3, I=4, Hd=5, seed=0):
    a = lstm_inputs(B, T, I, Hd, seed)
    hs, cs, gates = _core.lstm_forward(**a)
    dhs = np.random.default_rng(seed + 1).standard_normal((B, T, Hd)).astype(f32)
    dh_n = (np.random.default_rng(seed + 2).standard_normal((B, Hd)) * 0.1).astype(f32)
    dc_n = (np.random.default_rng(seed + 3).standard_normal((B, Hd)) * 0.1).astype(f32)
    return dict(
        dhs=dhs,
        dh_n=dh_n,
        dc_n=dc_n,
        x=a["x"],
        w_ih=a["w_ih"],
        w_hh=a["w_hh"],
        h0=a["h0"],
        c0=a["c0"],
        hs=hs,
        cs=cs,
        gates=gates,
    )


def output_inputs(N=6, Hd=5, Vo=7, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        h=rng.standard_normal((N, Hd)).astype(f32),
        weight=rng.standard_normal((Vo, Hd)).astype(f32),
        bias=rng.standard_normal(Vo).astype(f32),
        targets=rng.integers(0, Vo, N).astype(np.int32),
    )


def output_backward_inputs(N=6, Hd=5, Vo=7, seed=0):
    a = output_inputs(N, Hd, Vo, seed)
    _, lse, _ = _core.output_loss_forward(**a)
    return dict(a, lse=lse)


def embedding_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return dict(weight=rng.standard_normal((V, E)).astype(f32), ids=rng.integers(0, V, (2, 3)).astype(np.int32))


def embedding_backward_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        dout=rng.standard_normal((2, 3, E)).astype(f32), ids=rng.integers(0, V, (2, 3)).astype(np.int32), vocab_size=V
    )


OPS = {
    "embedding_forward": embedding_inputs,
    "embedding_backward": embedding_backward_inputs,
    "lstm_forward": lstm_inputs,
    "lstm_backward": lstm_backward_inputs,
    "output_loss_forward": output_inputs,
    "output_loss_backward": output_backward_inputs,
}

# Every array argument of every op.
ARRAY_ARGS = [(op, name) for op, make in OPS.items() for name, value in make().items() if isinstance(value, np.ndarray)]
FLOAT_ARGS = [(op, name) for op, name in ARRAY_ARGS if OPS[op]()[name].dtype.kind == "f"]
ID_ARGS = [(op, name) for op, name in ARRAY_ARGS if OPS[op]()[name].dtype.kind == "i"]

# dh_n and dc_n of lstm_backward may be None by design.
NONE_ARGS = [(op, name) for op, name in ARRAY_ARGS if name not in ("dh_n", "dc_n")]

# (op, argument, add or drop an axis, regex of the argument names the message may name)
WRONG_NDIM = [
    (op, name, change, name)
    for op, name in ARRAY_ARGS
    for change in ("add-axis", "drop-axis")
    if op != "embedding_forward" or name != "ids"
]  # ids of any ndim >= 1 are valid there
# embedding_backward: ids of any ndim are valid, dout must then have one axis more
WRONG_NDIM = [
    (op, name, change, "dout" if (op, name) == ("embedding_backward", "ids") else names)
    for op, name, change, names in WRONG_NDIM
]

# (op, argument, axis grown by one, names the message may name: the argument, or the one
#  whose shape it no longer fits when the grown axis is what defines a size)
MISMATCH = [
    ("embedding_backward", "dout", 0, "dout"),
    ("embedding_backward", "dout", 1, "dout"),
    ("embedding_backward", "ids", 0, "dout|ids"),
    ("embedding_backward", "ids", 1, "dout|ids"),
]
for _op in ("lstm_forward", "lstm_backward"):
    MISMATCH += [
        (_op, "x", 0, "x|h0|c0|dhs|hs|cs|gates"),
        (_op, "x", 2, "x|w_ih"),
        (_op, "w_ih", 0, "w_ih"),
        (_op, "w_ih", 1, "w_ih"),
        (_op, "w_hh", 0, "w_hh"),
        (_op, "w_hh", 1, "w_hh"),
        (_op, "h0", 0, "h0"),
        (_op, "h0", 1, "h0"),
        (_op, "c0", 0, "c0"),
        (_op, "c0", 1, "c0"),
    ]
MISMATCH += [
    ("lstm_forward", "b_ih", 0, "b_ih"),
    ("lstm_forward", "b_hh", 0, "b_hh"),
    ("lstm_backward", "x", 1, "x|dhs|hs|cs|gates"),
]  # x defines T in lstm_forward
MISMATCH += [
    ("lstm_backward", name, axis, name)
    for name in ("dhs", "hs", "cs", "gates", "dh_n", "dc_n")
    for axis in range(3 if name in ("dhs", "hs", "cs", "gates") else 2)
]
for _op in ("output_loss_forward", "output_loss_backward"):
    MISMATCH += [
        (_op, "h", 0, "h|targets|lse"),
        (_op, "h", 1, "h|weight"),
        (_op, "weight", 0, "weight|bias"),
        (_op, "weight", 1, "weight|h"),
        (_op, "bias", 0, "bias"),
        (_op, "targets", 0, "targets"),
    ]
MISMATCH += [("output_loss_backward", "lse", 0, "lse")]


def call(op, args):
    return getattr(_core, op)(**args)


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def assert_outputs_equal(a, b):
    a, b = as_tuple(a), as_tuple(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y


class TestOpsRejectWrongArguments:
    @pytest.mark.parametrize("op,arg", NONE_ARGS, ids=[f"{o}-{a}" for o, a in NONE_ARGS])
    def test_none_instead_of_array(self, op, arg):
        args = OPS[op]()
        args[arg] = None
        with pytest.raises(TypeError, match=rf"^{arg} must be an array, got None"):
            call(op, args)

    @pytest.mark.parametrize("op,arg,change,names", WRONG_NDIM, ids=[f"{o}-{a}-{c}" for o, a, c, _ in WRONG_NDIM])
    def test_wrong_ndim(self, op, arg, change, names):
        args = OPS[op]()
        value = args[arg]
        if change == "add-axis":
            args[arg] = value[None]
        elif value.ndim == 1:
            args[arg] = value[0]  # 0-D
        else:
            args[arg] = value.reshape((-1,) + value.shape[2:])  # merge the first two axes
        with pytest.raises(ValueError, match=rf"^({names}) must (be|have)"):
            call(op, args)

    @pytest.mark.parametrize("op,arg,axis,names", MISMATCH, ids=[f"{o}-{a}-axis{x}" for o, a, x, _ in MISMATCH])
    def test_mismatched_shape_names_the_argument(self, op, arg, axis, names):
        """Grow one axis of one argument by one: the message names it (or the argument it
        no longer fits, when its shape is what defines the size)."""
        args = OPS[op]()
        value = args[arg]
        args[arg] = np.concatenate([value, np.take(value, [0], axis=axis)], axis=axis)
        with pytest.raises(ValueError, match=rf"^({names}) must have shape"):
            call(op, args)

    @pytest.mark.parametrize("op,arg", FLOAT_ARGS, ids=[f"{o}-{a}" for o, a in FLOAT_ARGS])
    @pytest.mark.parametrize("dtype", [np.int32, bool, complex])
    def test_non_float_dtype(self, op, arg, dtype):
        args = OPS[op]()
        args[arg] = args[arg].astype(dtype)
        with pytest.raises(TypeError, match=rf"^{arg} must be a float array"):
            call(op, args)

    @pytest.mark.parametrize("op,arg", ID_ARGS, ids=[f"{o}-{a}" for o, a in ID_ARGS])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64, bool])
    def test_non_integer_ids(self, op, arg, dtype):
        args = OPS[op]()
        args[arg] = args[arg].astype(dtype)
        with pytest.raises(TypeError, match=rf"^{arg} must be an integer array of token ids"):
            call(op, args)

    @pytest.mark.parametrize("bad", [V, 10**6, -1, 2**40, -(2**40)])
    def test_embedding_forward_ids_out_of_range(self, bad):
        args = embedding_inputs()
        args["ids"] = args["ids"].astype(np.int64)
        args["ids"][1, 1] = bad
        with pytest.raises(ValueError, match=rf"ids holds id {bad} .*outside \[0, {V}\)"):
            _core.embedding_forward(**args)

    @pytest.mark.parametrize("op", ["output_loss_forward", "output_loss_backward"])
    @pytest.mark.parametrize("bad", [7, 8, -1, 2**33])
    def test_targets_out_of_range(self, op, bad):
        args = OPS[op]()
        args["targets"] = args["targets"].astype(np.int64)
        args["targets"][-1] = bad
        with pytest.raises(ValueError, match=rf"targets holds id {bad} .*outside \[0, 7\)"):
            call(op, args)

    def test_embedding_backward_vocab_too_small(self):
        args = embedding_backward_inputs()
        top = int(args["ids"].max())
        args["vocab_size"] = top  # the largest id no longer fits
        with pytest.raises(ValueError, match=rf"ids holds id {top} .*outside \[0, {top}\)"):
            _core.embedding_backward(**args)

    @pytest.mark.parametrize("vocab_size", [0, -4])
    def test_embedding_backward_vocab_not_positive(self, vocab_size):
        args = embedding_backward_inputs()
        args["vocab_size"] = vocab_size
        with pytest.raises(ValueError, match=r"vocab_size must be positive"):
            _core.embedding_backward(**args)

    def test_embedding_backward_negative_id(self):
        args = embedding_backward_inputs()
        args["ids"][0, 0] = -2
        with pytest.raises(ValueError, match=r"ids holds id -2"):
            _core.embedding_backward(**args)


def empty_variant(op, axis):
    """The op's arguments with B (axis 0) or T (axis 1) set to 0; output_loss ops have only N."""
    if op == "embedding_forward":
        args = embedding_inputs()
        args["ids"] = np.zeros((0, 3) if axis == 0 else (2, 0), np.int32)
    elif op == "embedding_backward":
        args = embedding_backward_inputs()
        shape = (0, 3) if axis == 0 else (2, 0)
        args["ids"] = np.zeros(shape, np.int32)
        args["dout"] = np.zeros(shape + (E,), f32)
    elif op in ("lstm_forward", "lstm_backward"):
        B, T = (0, 3) if axis == 0 else (2, 0)
        args = lstm_inputs()
        args["x"] = np.zeros((B, T, 4), f32)
        args["h0"], args["c0"] = np.zeros((B, 5), f32), np.zeros((B, 5), f32)
        if op == "lstm_backward":
            full = lstm_backward_inputs()
            args = dict(
                full,
                x=args["x"],
                h0=args["h0"],
                c0=args["c0"],
                dhs=np.zeros((B, T, 5), f32),
                hs=np.zeros((B, T, 5), f32),
                cs=np.zeros((B, T, 5), f32),
                gates=np.zeros((B, T, 20), f32),
            )
    else:
        args = OPS[op]()
        args["h"] = np.zeros((0, 5), f32)
        args["targets"] = np.zeros(0, np.int32)
        if op == "output_loss_backward":
            args["lse"] = np.zeros(0, f32)
    return args


# (op, axis): B = 0 (axis 0) or T = 0 (axis 1) for the sequence ops; the output layer's ops
# take (N, H) rows, so only N = 0 (axis 0).
EMPTY_CASES = [(op, axis) for op in OPS for axis in ((0,) if op.startswith("output_loss") else (0, 1))]


def empty_case_id(case):
    op, axis = case
    return f"{op}-{'N' if op.startswith('output_loss') else 'BT'[axis]}=0"


class TestOpsRejectEmpty:
    @pytest.mark.parametrize("op, axis", EMPTY_CASES, ids=[empty_case_id(case) for case in EMPTY_CASES])
    def test_empty(self, op, axis):
        args = empty_variant(op, axis)
        with pytest.raises(ValueError, match=r"empty|B = 0|T = 0|no rows|non-empty"):
            call(op, args)


# ================================================================= C++ ops: unusual layouts are read correctly


def relayout(value, how):
    if how == "fortran":
        out = np.asfortranarray(value)
        if value.ndim > 1:
            assert not out.flags.c_contiguous
        return out
    if how == "strided":
        wide = np.full(value.shape[:-1] + (2 * value.shape[-1],), 99, dtype=value.dtype)
        if value.dtype.kind == "f":
            wide[...] = np.nan  # misreading the stride would pull NaN in
        wide[..., ::2] = value
        return wide[..., ::2]
    if how == "reversed":
        return np.flip(np.flip(value).copy())
    if how == "byteswapped":
        swapped = value.astype(value.dtype.newbyteorder("S"))  # non-native on any machine
        assert not swapped.dtype.isnative
        return swapped
    if how == "wider":  # float64 floats, int64 ids
        return value.astype(np.float64) if value.dtype.kind == "f" else value.astype(np.int64)
    raise AssertionError(how)


LAYOUTS = ["fortran", "strided", "reversed", "byteswapped", "wider"]


class TestOpsAcceptUnusualLayouts:
    @pytest.mark.parametrize("how", LAYOUTS)
    @pytest.mark.parametrize("op,arg", ARRAY_ARGS, ids=[f"{o}-{a}" for o, a in ARRAY_ARGS])
    def test_same_result_as_contiguous(self, op, arg, how):
        args = OPS[op]()
        expected = call(op, args)
        changed = dict(args)
        changed[arg] = relayout(args[arg], how)
        np.testing.assert_array_equal(changed[arg], args[arg])  # same values, other layout
        assert_outputs_equal(call(op, changed), expected)

    @pytest.mark.parametrize("how", LAYOUTS)
    def test_lstm_forward_all_arguments_at_once(self, how):
        args = lstm_inputs(B=3, T=4, I=6, Hd=7)
        expected = _core.lstm_forward(**args)
        changed = {name: relayout(value, how) for name, value in args.items()}
        assert_outputs_equal(_core.lstm_forward(**changed), expected)

    def test_lstm_forward_float64_is_rounded_to_float32(self):
        rng = np.random.default_rng(9)
        args64 = {
            name: value.astype(np.float64) + rng.standard_normal(value.shape) * 1e-9
            for name, value in lstm_inputs().items()
        }
        args32 = {name: value.astype(f32) for name, value in args64.items()}
        assert_outputs_equal(_core.lstm_forward(**args64), _core.lstm_forward(**args32))

    @pytest.mark.parametrize("how", ["fortran", "strided", "byteswapped", "wider"])
    def test_adam_grad_any_layout(self, how):
        rng = np.random.default_rng(2)
        param = rng.standard_normal((4, 6)).astype(f32)
        grad = rng.standard_normal((4, 6)).astype(f32)
        p1, m1, v1 = param.copy(), np.zeros_like(param), np.zeros_like(param)
        p2, m2, v2 = param.copy(), np.zeros_like(param), np.zeros_like(param)
        _core.adam_update(p1, grad, m1, v1, 1, 1e-2)
        _core.adam_update(p2, relayout(grad, how), m2, v2, 1, 1e-2)
        for a, b in [(p1, p2), (m1, m2), (v1, v2)]:
            np.testing.assert_array_equal(a, b)

    @pytest.mark.parametrize("how", ["strided", "reversed", "byteswapped", "wider"])
    def test_windows_ids_any_layout(self, how):
        ids = np.random.default_rng(5).integers(0, 1000, 50).astype(np.int32)
        expected = _core.windows(ids, 7, 3)
        assert_outputs_equal(_core.windows(relayout(ids, how), 7, 3), expected)


# ================================================================= windows


class TestWindows:
    ids = np.arange(20, dtype=np.int32)

    @pytest.mark.parametrize("seq_len", [0, -1])
    def test_seq_len_not_positive(self, seq_len):
        with pytest.raises(ValueError, match=rf"seq_len must be positive, got {seq_len}"):
            fastlm.windows(self.ids, seq_len)

    @pytest.mark.parametrize("stride", [0, -2])
    def test_stride_not_positive(self, stride):
        with pytest.raises(ValueError, match=rf"stride must be positive, got {stride}"):
            fastlm.windows(self.ids, 4, stride)

    @pytest.mark.parametrize("length,seq_len", [(0, 3), (3, 3), (1, 1), (10, 10)])
    def test_too_short(self, length, seq_len):
        message = rf"ids holds {length} tokens; a window needs seq_len \+ 1 = {seq_len + 1}"
        with pytest.raises(ValueError, match=message):
            fastlm.windows(np.arange(length, dtype=np.int32), seq_len)

    @pytest.mark.parametrize("seq_len", [2**63 - 1, 2**63 - 2, 2**62])
    def test_huge_seq_len(self, seq_len):
        """seq_len + 1 overflowed int64 in the bindings."""
        for call in (lambda: fastlm.windows(self.ids, seq_len), lambda: _core.gather_windows(self.ids, [0], seq_len)):
            with pytest.raises(ValueError, match=rf"ids holds 20 tokens; a window needs seq_len \+ 1 = {seq_len + 1}"):
                call()

    @pytest.mark.parametrize("arg", ["seq_len", "stride"])
    def test_beyond_int64(self, arg):
        kwargs = {"seq_len": 4, "stride": 1, arg: 2**63}
        with pytest.raises(ValueError, match=rf"{arg} must be below 2\*\*63, got {2**63}"):
            fastlm.windows(self.ids, **kwargs)
        with pytest.raises(TypeError, match=rf"{arg} must be an int, got float"):
            fastlm.windows(self.ids, **{**kwargs, arg: 4.0})

    def test_more_windows_than_memory(self):
        from fastlm.model import physical_memory

        if physical_memory() is None:
            pytest.skip("the system does not report its memory")
        n = int(np.sqrt(physical_memory())) + 2  # n/2 windows of n/2 tokens, x and y: 2 n^2 bytes
        ids = np.zeros(n, np.int32)
        with pytest.raises(ValueError, match=r"windows of seq_len=\d+ \(x and y.*GiB, more than this machine's memory"):
            fastlm.windows(ids, n // 2)

    def test_exactly_long_enough(self):
        x, y = fastlm.windows(np.arange(4, dtype=np.int32), 3)
        np.testing.assert_array_equal(x, [[0, 1, 2]])
        np.testing.assert_array_equal(y, [[1, 2, 3]])

    def test_two_dimensional_ids(self):
        with pytest.raises(ValueError, match=r"ids must be 1-D, got shape \(4, 5\)"):
            fastlm.windows(self.ids.reshape(4, 5), 2)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64, bool])
    def test_non_integer_ids(self, dtype):
        with pytest.raises(TypeError, match=r"ids must be an integer array of token ids"):
            fastlm.windows(self.ids.astype(dtype), 2)

    def test_negative_ids(self):
        ids = self.ids.copy()
        ids[5] = -1
        with pytest.raises(ValueError, match=r"ids holds id -1"):
            fastlm.windows(ids, 2)

    def test_none(self):
        with pytest.raises(TypeError, match=r"ids must be an array, got None"):
            fastlm.windows(None, 2)


# ================================================================= adam_update


def adam_args(shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        param=rng.standard_normal(shape).astype(f32),
        grad=rng.standard_normal(shape).astype(f32),
        m=(rng.standard_normal(shape) * 0.1).astype(f32),
        v=(rng.random(shape) * 0.1).astype(f32),
    )


def snapshot(args):
    return {name: np.array(value, copy=True) for name, value in args.items() if isinstance(value, np.ndarray)}


class TestAdamUpdate:
    @pytest.mark.parametrize("arg", ["param", "m", "v"])
    def test_read_only_in_place_argument(self, arg):
        args = adam_args()
        args[arg].flags.writeable = False
        before = snapshot(args)
        with pytest.raises((TypeError, ValueError), match=rf"^{arg} .*writeable"):
            _core.adam_update(**args, step=1, lr=1e-2)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("arg", ["param", "m", "v"])
    @pytest.mark.parametrize("dtype", [np.float64, np.float16, ">f4"])
    def test_in_place_argument_of_other_dtype(self, arg, dtype):
        """Converting would update a temporary copy and leave the caller's array untouched."""
        args = adam_args()
        args[arg] = args[arg].astype(dtype)
        before = snapshot(args)
        with pytest.raises(TypeError, match=rf"^{arg} is updated in place .*float32"):
            _core.adam_update(**args, step=1, lr=1e-2)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("arg", ["param", "m", "v"])
    @pytest.mark.parametrize("how", ["strided", "fortran"])
    def test_non_contiguous_in_place_argument(self, arg, how):
        args = adam_args()
        args[arg] = relayout(args[arg], how)
        assert not args[arg].flags.c_contiguous
        before = snapshot(args)
        with pytest.raises((TypeError, ValueError), match=rf"^{arg} .*contiguous"):
            _core.adam_update(**args, step=1, lr=1e-2)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_grad_leaves_everything_unchanged(self, bad):
        args = adam_args(shape=(300, 300))  # big enough for the threaded path
        args["grad"][123, 45] = bad
        before = snapshot(args)
        with pytest.raises(ValueError, match=r"grad holds NaN or infinity"):
            _core.adam_update(**args, step=3, lr=1e-2)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("step", [0, -1])
    def test_step_counts_from_one(self, step):
        args = adam_args()
        before = snapshot(args)
        with pytest.raises(ValueError, match=rf"step counts from 1, got {step}"):
            _core.adam_update(**args, step=step, lr=1e-2)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("arg", ["grad", "m", "v"])
    def test_mismatched_shape(self, arg):
        args = adam_args()
        args[arg] = np.zeros((4, 3), f32)
        with pytest.raises(ValueError, match=rf"^{arg} must have shape \(3, 4\), got \(4, 3\)"):
            _core.adam_update(**args, step=1, lr=1e-2)

    @pytest.mark.parametrize("arg", ["grad", "m", "v"])
    @pytest.mark.parametrize("shape", [(12,), (3, 4, 1)])
    def test_wrong_ndim(self, arg, shape):
        args = adam_args()
        args[arg] = np.zeros(shape, f32)
        before = snapshot(dict(args, **{arg: None}))
        with pytest.raises(ValueError, match=rf"^{arg} must (be 2-D|have shape \(3, 4\))"):
            _core.adam_update(**args, step=1, lr=1e-2)
        assert_state_equal(snapshot(dict(args, **{arg: None})), before)

    @pytest.mark.parametrize(
        "kwargs,fragment",
        [
            (dict(lr=-1.0), r"lr must be a finite number >= 0, got -1\.0"),
            (dict(lr=float("nan")), "lr must be a finite number >= 0, got nan"),
            (dict(lr=1e-2, beta1=1.0), r"betas must lie in \[0, 1\), got beta1 = 1\.0, beta2 = 0\.999"),
            (dict(lr=1e-2, beta2=-0.1), r"betas must lie in \[0, 1\), got beta1 = 0\.9, beta2 = -0\.1"),
            (dict(lr=1e-2, eps=-1.0), r"eps must be a finite number >= 0, got -1\.0"),
            (dict(lr=1e-2, weight_decay=-1.0), r"weight_decay must be a finite number >= 0, got -1\.0"),
            (dict(lr=float("inf")), "lr must be a finite number >= 0, got inf"),
            (dict(lr=1e-2, weight_decay=float("inf")), "weight_decay must be a finite number >= 0, got inf"),
            (dict(lr=1e-2, eps=float("inf")), "eps must be a finite number >= 0, got inf"),
        ],
    )
    def test_bad_hyperparameters(self, kwargs, fragment):
        args = adam_args()
        before = snapshot(args)
        with pytest.raises(ValueError, match=fragment):
            _core.adam_update(**args, step=1, **kwargs)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("arg", ["param", "grad", "m", "v"])
    def test_none(self, arg):
        args = adam_args()
        args[arg] = None
        with pytest.raises(TypeError, match=rf"^{arg} must be an array, got None"):
            _core.adam_update(**args, step=1, lr=1e-2)

    def test_grad_of_other_dtype_is_converted(self):
        a, b = adam_args(), adam_args()
        _core.adam_update(**a, step=1, lr=1e-2)
        b["grad"] = b["grad"].astype(np.float64)
        _core.adam_update(**b, step=1, lr=1e-2)
        assert_state_equal(snapshot(a), snapshot(dict(b, grad=a["grad"])))


# ================================================================= sgd_update


def sgd_args(shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        param=rng.standard_normal(shape).astype(f32),
        grad=rng.standard_normal(shape).astype(f32),
        buf=(rng.standard_normal(shape) * 0.1).astype(f32),
    )


class TestSgdUpdate:
    @pytest.mark.parametrize(
        "kwargs,message",
        [
            (dict(lr=-1.0), r"lr must be a finite number >= 0, got -1\.0$"),
            (dict(lr=float("nan")), "lr must be a finite number >= 0, got nan"),
            (dict(lr=float("inf")), "lr must be a finite number >= 0, got inf"),
            (dict(lr=0.1, momentum=-0.5), r"momentum must be a finite number >= 0, got -0\.5$"),
            (dict(lr=0.1, momentum=float("nan")), "momentum must be a finite number >= 0, got nan"),
            (dict(lr=0.1, momentum=float("inf")), "momentum must be a finite number >= 0, got inf"),
            (dict(lr=0.1, weight_decay=-1.0), r"weight_decay must be a finite number >= 0, got -1\.0$"),
            (dict(lr=0.1, weight_decay=float("inf")), "weight_decay must be a finite number >= 0, got inf"),
            (dict(lr=0.1, nesterov=True), "nesterov needs momentum > 0"),
            (dict(lr=0.1, momentum=0.0, nesterov=True), "nesterov needs momentum > 0"),
        ],
    )
    def test_bad_hyperparameters(self, kwargs, message):
        args = sgd_args()
        before = snapshot(args)
        with pytest.raises(ValueError, match=message):
            _core.sgd_update(**args, step=1, **kwargs)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_grad_leaves_everything_unchanged(self, bad):
        args = sgd_args(shape=(300, 300))  # big enough for the threaded path
        args["grad"][123, 45] = bad
        before = snapshot(args)
        with pytest.raises(ValueError, match=r"grad holds NaN or infinity"):
            _core.sgd_update(**args, step=2, lr=0.1, momentum=0.9)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("step", [0, -1])
    def test_step_counts_from_one(self, step):
        with pytest.raises(ValueError, match=rf"step counts from 1, got {step}"):
            _core.sgd_update(**sgd_args(), step=step, lr=0.1)

    @pytest.mark.parametrize("arg", ["param", "buf"])
    def test_in_place_argument_of_other_dtype(self, arg):
        args = sgd_args()
        args[arg] = args[arg].astype(np.float64)
        before = snapshot(args)
        with pytest.raises(TypeError, match=rf"^{arg} is updated in place .*float32"):
            _core.sgd_update(**args, step=1, lr=0.1, momentum=0.9)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("arg", ["grad", "buf"])
    def test_mismatched_shape(self, arg):
        args = sgd_args()
        args[arg] = np.zeros((4, 3), f32)
        with pytest.raises(ValueError, match=rf"^{arg} must have shape \(3, 4\), got \(4, 3\)"):
            _core.sgd_update(**args, step=1, lr=0.1, momentum=0.9)

    def test_momentum_needs_a_buffer_and_plain_sgd_does_not(self):
        args = sgd_args()
        with pytest.raises(ValueError, match="momentum > 0 needs buf"):
            _core.sgd_update(**dict(args, buf=None), step=1, lr=0.1, momentum=0.9)
        expected = args["param"] - np.float32(0.1) * args["grad"]
        _core.sgd_update(**dict(args, buf=None), step=1, lr=0.1)
        np.testing.assert_array_equal(args["param"], expected)


# ================================================================= clipped_sgd_update


def clipped_sgd_args(shapes=((3, 4), (5,)), seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        params=[rng.standard_normal(s).astype(f32) for s in shapes],
        grads=[rng.standard_normal(s).astype(f32) for s in shapes],
        bufs=[(rng.standard_normal(s) * 0.1).astype(f32) for s in shapes],
    )


def clipped_snapshot(args):
    return [a.copy() for name in ("params", "grads", "bufs") for a in (args[name] or [])]


class TestClippedSgdUpdate:
    @pytest.mark.parametrize(
        "change,error,message",
        [
            (dict(lr=-1.0), ValueError, "lr must be a finite number >= 0, got -1.0"),
            (dict(lr=float("inf")), ValueError, "lr must be a finite number >= 0, got inf"),
            (dict(max_norm=0.0), ValueError, "max_norm must be positive"),
            (dict(max_norm=float("nan")), ValueError, "max_norm must be positive"),
            (dict(momentum=-0.5), ValueError, "momentum must be a finite number >= 0, got -0.5"),
            (dict(momentum=float("inf")), ValueError, "momentum must be a finite number >= 0, got inf"),
            (dict(weight_decay=-1.0), ValueError, "weight_decay must be a finite number >= 0, got -1.0"),
            (dict(weight_decay=float("inf")), ValueError, "weight_decay must be a finite number >= 0, got inf"),
            (dict(momentum=0.0, nesterov=True), ValueError, "nesterov needs momentum > 0"),
            (dict(step=0), ValueError, "step counts from 1, got 0"),
            (dict(bufs=None), ValueError, "momentum > 0 needs bufs"),
            (dict(params=np.zeros((3, 4), f32)), TypeError, "params must be a sequence of arrays"),
            (dict(grads=None), TypeError, "grads must be a sequence of arrays"),
            (dict(grads=[np.zeros((3, 4), f32)]), ValueError, "grads has 1 arrays but params 2"),
            (dict(bufs=[np.zeros((3, 4), f32)]), ValueError, "bufs has 1 arrays but params 2"),
            (dict(grads=[np.zeros((3, 4), f32), np.zeros(6, f32)]), ValueError, r"grads\[1\] must have shape \(5,\)"),
            (dict(bufs=[np.zeros((4, 3), f32), np.zeros(5, f32)]), ValueError, r"bufs\[0\] must have shape \(3, 4\)"),
            (dict(params=[np.zeros((3, 4)), np.zeros(5, f32)]), TypeError, r"params\[0\] is updated in place"),
        ],
    )
    def test_bad_arguments_change_nothing(self, change, error, message):
        args = dict(clipped_sgd_args(), step=1, lr=0.1, max_norm=0.5, momentum=0.9)
        args.update(change)
        with pytest.raises(error, match=message):
            _core.clipped_sgd_update(**args)
        fresh = clipped_sgd_args()
        for name in ("params", "bufs"):  # the arrays given that were not replaced are untouched
            if name not in change:
                for a, b in zip(args[name], fresh[name]):
                    np.testing.assert_array_equal(a, b)

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_grads_raise_and_change_nothing(self, bad):
        args = clipped_sgd_args(shapes=((300, 300), (50,)))  # big enough for the threaded path
        args["grads"][1][7] = bad
        before = clipped_snapshot(args)
        with pytest.raises(ValueError, match=r"NaN or infinity"):
            _core.clipped_sgd_update(**args, step=2, lr=0.1, max_norm=1e-3, momentum=0.9)
        for a, b in zip(clipped_snapshot(args), before):
            np.testing.assert_array_equal(a, b)

    @pytest.mark.parametrize(
        "grad,error,message",
        [
            ((np.array([0, 2], np.int32),), ValueError, r"grads\[0\] must be an array or a tuple \(rows, values\)"),
            ((np.array([2, 0], np.int32), np.ones((2, 4), f32)), ValueError, "rows must be strictly increasing"),
            ((np.array([0, 3], np.int32), np.ones((2, 4), f32)), ValueError, r"rows holds id 3 .*outside \[0, 3\)"),
            ((np.array([0, 2], np.int32), np.ones((2, 5), f32)), ValueError, r"grads\[0\]'s values must have shape"),
            ((np.array([0, 2], np.int32), np.ones(8, f32)), ValueError, r"grads\[0\]'s values must be 2-D"),
            ((None, np.ones((2, 4), f32)), TypeError, r"rows must be an array, got None"),
        ],
    )
    def test_bad_row_form_gradient_changes_nothing(self, grad, error, message):
        args = dict(clipped_sgd_args(), step=1, lr=0.1, max_norm=1e-3, momentum=0.9)
        args["grads"][0] = grad
        with pytest.raises(error, match=message):
            _core.clipped_sgd_update(**args)
        fresh = clipped_sgd_args()
        for name in ("params", "bufs"):
            for a, b in zip(args[name], fresh[name]):
                np.testing.assert_array_equal(a, b)

    def test_row_form_gradient_of_a_1d_parameter(self):
        args = dict(clipped_sgd_args(), step=1, lr=0.1, max_norm=1e-3, momentum=0.9)
        args["grads"][1] = (np.array([0, 2], np.int32), np.ones((2, 1), f32))
        with pytest.raises(ValueError, match=r"params\[1\] must be 2-D \(V, E\) with V, E > 0 for a gradient"):
            _core.clipped_sgd_update(**args)

    def test_row_form_gradient_of_an_empty_parameter(self):
        params, grads = [np.zeros((0, 3), f32)], [(np.zeros(0, np.int32), np.zeros((0, 3), f32))]
        with pytest.raises(ValueError, match=r"params\[0\] must be 2-D \(V, E\) with V, E > 0 .*got shape \(0, 3\)"):
            _core.clipped_sgd_update(params, grads, None, step=1, lr=0.1, max_norm=1.0)

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_row_form_values_raise_and_change_nothing(self, bad):
        args = clipped_sgd_args(shapes=((300, 300), (50,)))
        values = np.ones((3, 300), f32)
        values[1, 7] = bad
        args["grads"][0] = (np.array([4, 8, 200], np.int32), values)
        before = [a.copy() for a in args["params"] + args["bufs"]]
        with pytest.raises(ValueError, match=r"NaN or infinity"):
            _core.clipped_sgd_update(**args, step=2, lr=0.1, max_norm=1e9, momentum=0.9)
        for a, b in zip(args["params"] + args["bufs"], before):
            np.testing.assert_array_equal(a, b)


# ================================================================= sgd_update_rows


class TestSgdUpdateRows:
    @pytest.mark.parametrize(
        "change,error,message",
        [
            (dict(rows=np.array([5, 1, 9], np.int32)), ValueError, "rows must be strictly increasing"),
            (dict(rows=np.array([1, 5, 20], np.int32)), ValueError, r"rows holds id 20 .*outside \[0, 20\)"),
            (dict(rows=np.array([[1, 5, 9]], np.int32)), ValueError, "rows must be 1-D"),
            (dict(grad=np.zeros((2, 4), f32)), ValueError, r"grad must have shape \(3, 4\), got \(2, 4\)"),
            (dict(param=np.zeros(20, f32)), ValueError, "param must be 2-D"),
            (dict(param=np.zeros((20, 4))), TypeError, "param is updated in place"),
            (dict(buf=None), ValueError, "momentum > 0 needs buf"),
            (dict(buf=np.zeros((20, 5), f32)), ValueError, r"buf must have shape \(20, 4\)"),
            (dict(step=0), ValueError, "step counts from 1, got 0"),
            (dict(lr=-1.0), ValueError, "lr must be a finite number >= 0, got -1.0"),
            (dict(lr=float("inf")), ValueError, "lr must be a finite number >= 0, got inf"),
            (dict(momentum=-0.5), ValueError, "momentum must be a finite number >= 0, got -0.5"),
            (dict(momentum=float("inf")), ValueError, "momentum must be a finite number >= 0, got inf"),
            (dict(weight_decay=-1.0), ValueError, "weight_decay must be a finite number >= 0, got -1.0"),
            (dict(momentum=0.0, nesterov=True), ValueError, "nesterov needs momentum > 0"),
        ],
    )
    def test_bad_arguments_change_nothing(self, change, error, message):
        args = dict(sparse_sgd_args(), buf=np.zeros((20, 4), f32), step=1, lr=0.1, momentum=0.9)
        args.update(change)
        before = snapshot(args)
        with pytest.raises(error, match=message):
            _core.sgd_update_rows(**args)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_grad_leaves_everything_unchanged(self, bad):
        args = dict(sparse_sgd_args(V=3000, E=40), buf=np.ones((3000, 40), f32))
        args["grad"][1, 2] = bad
        before = snapshot(args)
        with pytest.raises(ValueError, match=r"grad holds NaN or infinity"):
            _core.sgd_update_rows(**args, step=2, lr=0.1, momentum=0.9)
        assert_state_equal(snapshot(args), before)


# ================================================================= sparse_sgd_update


def sparse_sgd_args(V=20, E=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = np.array([1, 5, 9], dtype=np.int32)
    return dict(param=rng.standard_normal((V, E)).astype(f32), rows=rows, grad=rng.standard_normal((3, E)).astype(f32))


class TestSparseSgdUpdate:
    @pytest.mark.parametrize(
        "change,error,message",
        [
            (dict(lr=-1.0), ValueError, "lr must be a finite number >= 0"),
            (dict(lr=float("inf")), ValueError, "lr must be a finite number >= 0"),
            (dict(rows=np.array([5, 1, 9], np.int32)), ValueError, "rows must be strictly increasing"),
            (dict(rows=np.array([1, 1, 9], np.int32)), ValueError, "rows must be strictly increasing"),
            (dict(rows=np.array([1, 5, 20], np.int32)), ValueError, "rows"),
            (dict(grad=np.zeros((2, 4), f32)), ValueError, r"grad must have shape \(3, 4\)"),
            (dict(param=np.zeros(20, f32)), ValueError, "param must be 2-D"),
            (dict(param=np.zeros((20, 4))), TypeError, "param is updated in place"),
        ],
    )
    def test_bad_arguments_change_nothing(self, change, error, message):
        args = dict(sparse_sgd_args(), lr=0.1)
        args.update(change)
        before = args["param"].copy()
        with pytest.raises(error, match=message):
            _core.sparse_sgd_update(**args)
        np.testing.assert_array_equal(args["param"], before)

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_grad_leaves_param_unchanged(self, bad):
        args = sparse_sgd_args()
        args["grad"][1, 2] = bad
        before = args["param"].copy()
        with pytest.raises(ValueError, match=r"grad holds NaN or infinity"):
            _core.sparse_sgd_update(**args, lr=0.1)
        np.testing.assert_array_equal(args["param"], before)

    def test_only_the_rows_given_move(self):
        args = sparse_sgd_args()
        expected = args["param"].copy()
        expected[args["rows"]] -= np.float32(0.1) * args["grad"]
        _core.sparse_sgd_update(**args, lr=0.1)
        others = np.setdiff1d(np.arange(len(expected)), args["rows"])
        np.testing.assert_array_equal(args["param"][others], expected[others])
        np.testing.assert_allclose(args["param"][args["rows"]], expected[args["rows"]], rtol=1e-6, atol=1e-7)


# ================================================================= adam_update_rows


def adam_rows_args(V=20, E=4, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        param=rng.standard_normal((V, E)).astype(f32),
        rows=np.array([1, 5, 9], dtype=np.int32),
        grad=rng.standard_normal((3, E)).astype(f32),
        m=(rng.standard_normal((V, E)) * 0.1).astype(f32),
        v=(rng.random((V, E)) * 0.1).astype(f32),
    )


class TestAdamUpdateRows:
    @pytest.mark.parametrize(
        "change,error,message",
        [
            (dict(rows=np.array([5, 1, 9], np.int32)), ValueError, r"rows must be strictly increasing .*rows\[1\] = 1"),
            (dict(rows=np.array([1, 1, 9], np.int32)), ValueError, "rows must be strictly increasing"),
            (dict(rows=np.array([1, 5, 20], np.int32)), ValueError, r"rows holds id 20 .*outside \[0, 20\)"),
            (dict(rows=np.array([-1, 5, 9], np.int32)), ValueError, "rows holds id -1"),
            (dict(rows=np.array([[1, 5, 9]], np.int32)), ValueError, "rows must be 1-D"),
            (dict(rows=np.array([1.0, 5.0, 9.0])), TypeError, "rows must be an integer array"),
            (dict(rows=None), TypeError, "rows must be an array, got None"),
            (dict(grad=np.zeros((2, 4), f32)), ValueError, r"grad must have shape \(3, 4\), got \(2, 4\)"),
            (dict(grad=np.zeros((3, 5), f32)), ValueError, r"grad must have shape \(3, 4\)"),
            (dict(grad=np.zeros(12, f32)), ValueError, "grad must be 2-D"),
            (dict(param=np.zeros(20, f32)), ValueError, "param must be 2-D"),
            (dict(param=np.zeros((20, 4))), TypeError, "param is updated in place"),
            (dict(m=np.zeros((20, 5), f32)), ValueError, r"m must have shape \(20, 4\)"),
            (dict(v=np.zeros((21, 4), f32)), ValueError, r"v must have shape \(20, 4\)"),
            (dict(step=0), ValueError, "step counts from 1, got 0"),
            (dict(lr=-1.0), ValueError, "lr must be a finite number >= 0"),
            (dict(beta1=1.0), ValueError, r"betas must lie in \[0, 1\), got beta1 = 1\.0"),
            (dict(weight_decay=float("nan")), ValueError, "weight_decay must be a finite number >= 0, got nan"),
        ],
    )
    def test_bad_arguments_change_nothing(self, change, error, message):
        args = dict(adam_rows_args(), step=1, lr=1e-2)
        args.update(change)
        before = snapshot(args)
        with pytest.raises(error, match=message):
            _core.adam_update_rows(**args)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("arg", ["param", "m", "v"])
    def test_read_only_in_place_argument(self, arg):
        args = adam_rows_args()
        args[arg].flags.writeable = False
        before = snapshot(args)
        with pytest.raises(ValueError, match=rf"^{arg} .*read-only"):
            _core.adam_update_rows(**args, step=1, lr=1e-2)
        assert_state_equal(snapshot(args), before)

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_grad_leaves_everything_unchanged(self, bad):
        args = adam_rows_args(V=3000, E=40)  # big enough for the threaded path
        args["grad"][2, 17] = bad
        before = snapshot(args)
        with pytest.raises(ValueError, match=r"grad holds NaN or infinity"):
            _core.adam_update_rows(**args, step=3, lr=1e-2)
        assert_state_equal(snapshot(args), before)

    def test_no_rows_is_a_step_with_a_zero_gradient(self):
        a, b = adam_rows_args(), adam_rows_args()
        _core.adam_update_rows(**dict(a, rows=np.zeros(0, np.int32), grad=np.zeros((0, 4), f32)), step=2, lr=1e-2)
        _core.adam_update(b["param"], np.zeros_like(b["param"]), b["m"], b["v"], step=2, lr=1e-2)
        for name in ("param", "m", "v"):
            np.testing.assert_array_equal(a[name], b[name])


# ================================================================= clip_grad_norm_rows

# A gradient in row form's rows and values (rows 2 and 7 of a (10, 3) gradient), only read.
ROWS, VALUES = np.array([2, 7], np.int32), np.ones((2, 3), f32)


class TestClipGradNormRows:
    def grads(self):
        rng = np.random.default_rng(0)
        rows = np.array([2, 7], np.int32)
        return [rng.standard_normal(5).astype(f32), (rows, rng.standard_normal((2, 3)).astype(f32), 10)]

    @pytest.mark.parametrize(
        "entry,error,message",
        [
            ((ROWS, VALUES), ValueError, r"grads\[1\] must be an array or a tuple"),
            ((np.array([7, 2], np.int32), VALUES, 10), ValueError, "rows must be strictly increasing"),
            (
                (np.array([2, 10], np.int32), VALUES, 10),
                ValueError,
                r"rows holds id 10 .*outside \[0, 10\)",
            ),
            (
                (ROWS, np.ones((3, 3), f32), 10),
                ValueError,
                r"grads\[1\]'s values must have one row",
            ),
            ((ROWS, np.ones(6, f32), 10), ValueError, r"grads\[1\]'s values must be 2-D"),
            ((ROWS, np.ones((2, 3)), 10), TypeError, r"grads\[1\]'s values is updated in place"),
            ((ROWS, VALUES, 0), ValueError, r"vocab_size must be positive"),
            (
                (ROWS, VALUES, 2**40),
                ValueError,
                r"vocab_size must be at most 2\*\*31",
            ),
            ((ROWS, VALUES, 1.5), TypeError, r"vocab_size must be an int"),
            ((None, VALUES, 10), TypeError, r"rows must be an array, got None"),
        ],
    )
    def test_bad_entries_change_nothing(self, entry, error, message):
        grads = self.grads()
        grads[1] = entry
        arrays = [grads[0]] + [a for a in entry if isinstance(a, np.ndarray)]
        before = [a.copy() for a in arrays]
        with pytest.raises(error, match=message):
            _core.clip_grad_norm_rows(grads, 1e-3)  # would clip everything if it went ahead
        for a, b in zip(arrays, before):
            np.testing.assert_array_equal(a, b)

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_values_raise_and_change_nothing(self, bad):
        grads = self.grads()
        grads[1][1][1, 2] = bad
        before = [grads[0].copy(), grads[1][1].copy()]
        with pytest.raises(ValueError, match=r"NaN or infinity"):
            _core.clip_grad_norm_rows(grads, 1e-3)
        np.testing.assert_array_equal(grads[0], before[0])
        np.testing.assert_array_equal(grads[1][1], before[1])

    @pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan")])
    def test_max_norm_not_positive(self, max_norm):
        with pytest.raises(ValueError, match=r"max_norm must be positive"):
            _core.clip_grad_norm_rows(self.grads(), max_norm)

    def test_a_bare_array_is_not_a_sequence_of_gradients(self):
        with pytest.raises(TypeError, match=r"grads must be a sequence of arrays"):
            _core.clip_grad_norm_rows(np.ones(3, f32), 1.0)


# ================================================================= clip_grad_norm


class TestClipGradNorm:
    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_grads_raise_and_change_nothing(self, bad):
        rng = np.random.default_rng(0)
        grads = [rng.standard_normal((200, 200)).astype(f32), rng.standard_normal(50).astype(f32)]
        grads[1][7] = bad
        before = [g.copy() for g in grads]
        with pytest.raises(ValueError, match=r"NaN or infinity"):
            _core.clip_grad_norm(grads, 1e-3)  # would clip everything if it went ahead
        for g, b in zip(grads, before):
            np.testing.assert_array_equal(g, b)

    @pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan")])
    def test_max_norm_not_positive(self, max_norm):
        grads = [np.ones(4, f32)]
        with pytest.raises(ValueError, match=r"max_norm must be positive"):
            _core.clip_grad_norm(grads, max_norm)
        np.testing.assert_array_equal(grads[0], np.ones(4, f32))

    def test_none_as_the_list(self):
        with pytest.raises(TypeError):
            _core.clip_grad_norm(None, 1.0)

    def test_none_in_the_list(self):
        with pytest.raises(TypeError, match=r"grads\[1\] must be an array, got None"):
            _core.clip_grad_norm([np.ones(3, f32), None], 1.0)

    @pytest.mark.parametrize("how", ["float64", "strided", "read-only", "byteswapped"])
    def test_grads_that_cannot_be_scaled_in_place(self, how):
        good = np.full(4, 3.0, f32)
        bad = np.full(4, 3.0, f32)
        if how == "float64":
            bad = bad.astype(np.float64)
        elif how == "strided":
            bad = np.full(8, 3.0, f32)[::2]
        elif how == "read-only":
            bad.flags.writeable = False
        else:
            bad = bad.astype(">f4")
        with pytest.raises((TypeError, ValueError), match=r"grads\[1\] is updated in place"):
            _core.clip_grad_norm([good, bad], 1.0)
        np.testing.assert_array_equal(good, np.full(4, 3.0, f32))

    def test_single_array_instead_of_list(self):
        """torch.nn.utils.clip_grad_norm_ accepts one tensor; here a bare 1-D array must either be
        clipped in place or be refused -- not report the norm and silently leave it unclipped."""
        g = np.array([3.0, 4.0], f32)
        try:
            norm = _core.clip_grad_norm(g, 1.0)
        except TypeError:
            return
        assert norm == pytest.approx(5.0)
        np.testing.assert_allclose(g, [0.6, 0.8], rtol=1e-5)


# ================================================================= NaN in float inputs: documented propagation


class TestNaNPropagates:
    def test_lstm_forward_nan_in_x(self):
        args = lstm_inputs(B=3, T=4)
        args["x"][1, 2, 0] = np.nan
        hs, cs, gates = _core.lstm_forward(**args)
        for out in (hs, cs, gates):
            nan_positions = np.isnan(out).any(axis=2)
            expected = np.zeros((3, 4), bool)
            expected[1, 2:] = True  # that sequence, from that step on; nothing else
            np.testing.assert_array_equal(nan_positions, expected)
            assert np.isnan(out[1, 2:]).all()

    def test_lstm_forward_nan_in_h0(self):
        args = lstm_inputs(B=3, T=4)
        args["h0"][2, 0] = np.nan
        hs, cs, _ = _core.lstm_forward(**args)
        assert np.isnan(hs[2]).all() and np.isnan(cs[2]).all()
        assert np.isfinite(hs[:2]).all() and np.isfinite(cs[:2]).all()

    def test_lstm_forward_nan_in_weights(self):
        args = lstm_inputs()
        args["w_hh"][0, 0] = np.nan
        hs, _, _ = _core.lstm_forward(**args)
        assert np.isnan(hs[:, 1:]).all()  # every recurrent step after the first uses w_hh

    # N = 70: rows 0-63 go through the C++ forward's 32-row vector reduction, 64-69 through
    # its scalar tail; N = 6 only through the tail.
    @pytest.mark.parametrize("N, row", [(6, 3), (70, 3), (70, 40), (70, 66)])
    def test_output_loss_forward_nan_in_h(self, N, row):
        args = output_inputs(N=N)
        args["h"][row, 2] = np.nan
        loss, lse, predictions = _core.output_loss_forward(**args)
        assert np.isnan(loss)
        np.testing.assert_array_equal(np.isnan(lse), np.arange(N) == row)
        assert ((predictions >= 0) & (predictions < 7)).all()
        clean = dict(args, h=np.delete(args["h"], row, axis=0), targets=np.delete(args["targets"], row))
        _, clean_lse, clean_predictions = _core.output_loss_forward(**clean)
        np.testing.assert_allclose(np.delete(lse, row), clean_lse, rtol=1e-6)
        np.testing.assert_array_equal(np.delete(predictions, row), clean_predictions)

    @pytest.mark.parametrize("N", [6, 70])
    def test_output_loss_forward_nan_in_bias(self, N):
        args = output_inputs(N=N)
        args["bias"][4] = np.nan
        loss, lse, predictions = _core.output_loss_forward(**args)
        assert np.isnan(loss) and np.isnan(lse).all()
        assert ((predictions >= 0) & (predictions < 7)).all()

    @pytest.mark.parametrize("N", [6, 70])
    def test_output_loss_forward_infinite_logit(self, N):
        # Infinite logits in a row (+inf and -inf, by the sign of each weight): that row's
        # log-sum-exp is not finite, its prediction is the first +inf; the other rows are
        # untouched.
        args = output_inputs(N=N)
        args["h"][N - 3, 0] = np.inf
        loss, lse, predictions = _core.output_loss_forward(**args)
        assert not np.isfinite(lse[N - 3])
        assert predictions[N - 3] == np.argmax(args["weight"][:, 0] > 0)
        clean = dict(args, h=np.delete(args["h"], N - 3, axis=0), targets=np.delete(args["targets"], N - 3))
        _, clean_lse, clean_predictions = _core.output_loss_forward(**clean)
        np.testing.assert_allclose(np.delete(lse, N - 3), clean_lse, rtol=1e-6)
        np.testing.assert_array_equal(np.delete(predictions, N - 3), clean_predictions)

    def test_output_loss_backward_nan_lse(self):
        args = output_backward_inputs(N=6)
        args["lse"][2] = np.nan
        dh, dweight, dbias = _core.output_loss_backward(**args)
        assert np.isnan(dh[2]).all() and np.isfinite(np.delete(dh, 2, axis=0)).all()
        assert np.isnan(dbias).all()


# ================================================================= threads


class TestThreads:
    @pytest.mark.parametrize("n", [0, -1, 4 * os.cpu_count() + 1, 10000])
    def test_set_num_threads_out_of_range(self, n):
        """10000 threads: GNU OpenMP, unable to create them, would end the process."""
        before = fastlm.get_num_threads()
        limit = 4 * os.cpu_count()
        with pytest.raises(ValueError, match=rf"number of threads\) must be an integer in \[1, {limit}\], got {n}"):
            fastlm.set_num_threads(n)
        assert fastlm.get_num_threads() == before

    def test_set_num_threads_accepts_up_to_four_per_core(self, restore_threads):
        fastlm.set_num_threads(4 * os.cpu_count())  # no kernel runs: the threads are never created
        assert fastlm.get_num_threads() == 4 * os.cpu_count()

    @pytest.mark.parametrize("n", [1.5, "2", None])
    def test_set_num_threads_not_int(self, n):
        with pytest.raises(TypeError):
            fastlm.set_num_threads(n)

    @pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan"), 61.0])
    def test_fma_peak_seconds_out_of_range(self, seconds):
        with pytest.raises(ValueError, match="seconds must be in"):
            fastlm._core.fma_peak_gflops(seconds)
