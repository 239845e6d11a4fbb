"""Property-based fuzzing of the public API with hypothesis (derandomized: the same cases on
every run, a fixed number of them, so the file takes seconds).

Every call must either succeed with a correct result or raise TypeError, ValueError or
KeyError (the documented kinds of bad input, whose messages name the argument); anything
else (a crash, OverflowError, IndexError, ZeroDivisionError, MemoryError, ...) is an
unclear error and fails the test. A watchdog (SIGALRM) turns a hang into a failure. The
counts of cases and outcomes are printed (pytest -s) for the record.
"""

from __future__ import annotations

import collections
import contextlib
import math
import signal
import threading

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the [test] extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastlm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FUZZ = settings(
    derandomize=True, max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
CLEAR = (TypeError, ValueError, KeyError)
COUNTS = collections.defaultdict(collections.Counter)
V = 12


@contextlib.contextmanager
def outcome(test, seconds=10):
    """Count the case, allow the clear errors, and fail a call that runs past `seconds`."""
    main = threading.current_thread() is threading.main_thread()

    def hung(signum, frame):
        raise TimeoutError(f"{test}: a call ran longer than {seconds} s")

    if main:
        previous = signal.signal(signal.SIGALRM, hung)
        signal.alarm(seconds)
    try:
        yield
        COUNTS[test]["ok"] += 1
    except CLEAR as error:
        COUNTS[test][type(error).__name__] += 1
    except TimeoutError:
        COUNTS[test]["hang"] += 1
        raise
    except BaseException as error:
        COUNTS[test][f"unclear {type(error).__name__}"] += 1
        raise
    finally:
        if main:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    for test, counter in sorted(COUNTS.items()):
        print(f"\nfuzz {test}: {sum(counter.values())} cases: {dict(counter)}")


@pytest.fixture(scope="module")
def model():
    return fastlm.LSTMLM(V, 4, 6, num_layers=2, seed=1)


anything = st.one_of(
    # integers at the edges only: a middling one (10**8 tokens, a 10**8 vocabulary) is valid and
    # would take its time and memory for real
    st.none(),
    st.booleans(),
    st.sampled_from([-(2**70), -(2**63), -1, 0, 2**31, 2**32 + 1, 2**63 - 1, 2**63, 2**64, 2**70]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.sampled_from([np.int64(3), np.float32(0.5), np.uint64(2**63), [], [1, 2], (3,), {}]),
)
small_ints = st.integers(min_value=-3, max_value=40)


def mostly(valid, invalid=anything):
    """Four valid draws to one invalid: most cases reach the kernels, some test the checks."""
    return st.integers(0, 4).flatmap(lambda k: invalid if k == 4 else valid)


# Mostly valid values, so that most cases get past the argument checks into the kernels.
sizes = st.one_of(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12), small_ints, anything)
dtypes = st.sampled_from(
    [
        "int32",
        "int64",
        "int32",
        "int64",
        "int8",
        "int16",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float32",
        "float64",
        "bool",
        "complex64",
        "object",
    ]
)


@st.composite
def id_arrays(draw, max_dims=2):
    shape = draw(
        st.one_of(
            st.lists(st.integers(1, 9), min_size=max_dims, max_size=max_dims),
            st.lists(st.integers(0, 9), min_size=0, max_size=max_dims + 1),
        )
    )
    dtype = draw(mostly(st.sampled_from(["int32", "int64", "uint8", "int16"]), dtypes))
    values = draw(
        st.lists(
            st.one_of(st.integers(0, V - 1), st.integers(0, V - 1), st.integers(-5, V + 5)),
            min_size=int(np.prod(shape)),
            max_size=int(np.prod(shape)),
        )
    )
    array = np.array(values, dtype=np.int64).reshape(shape)
    return array.astype(dtype) if dtype != "object" else array.astype(object)


@FUZZ
@given(
    vocab=mostly(st.integers(1, 40), sizes),
    embed=mostly(st.integers(1, 9), sizes),
    hidden=mostly(st.integers(1, 9), sizes),
    layers=mostly(st.integers(1, 3), sizes),
    dropout=mostly(st.floats(0, 0.9)),
    seed=mostly(st.integers(0, 2**64)),
)
def test_constructor(vocab, embed, hidden, layers, dropout, seed):
    with outcome("LSTMLM()"):
        model = fastlm.LSTMLM(vocab, embed, hidden, layers, dropout=dropout, seed=seed)
        assert model.state_dict()["decoder.bias"].shape == (vocab,)


@FUZZ
@given(
    ids=st.one_of(id_arrays(max_dims=1), id_arrays(max_dims=1), id_arrays(max_dims=2)),
    seq_len=mostly(st.integers(1, 6), sizes),
    stride=mostly(st.integers(1, 4), sizes),
)
def test_windows(ids, seq_len, stride):
    with outcome("windows()"):
        x, y = fastlm.windows(ids, seq_len, stride)
        flat = np.asarray(ids).astype(np.int64)
        for n in range(len(x)):
            assert np.array_equal(x[n], flat[n * stride : n * stride + seq_len])
            assert np.array_equal(y[n], flat[n * stride + 1 : n * stride + seq_len + 1])


@FUZZ
@given(
    prompt=st.one_of(id_arrays(max_dims=1), id_arrays(max_dims=2)),
    tokens=mostly(st.integers(0, 12)),
    temperature=mostly(st.one_of(st.floats(0, 5), st.floats(0, 1e-30))),
    top_k=mostly(st.one_of(st.none(), st.integers(1, 15))),
    top_p=mostly(st.one_of(st.none(), st.floats(1e-9, 1))),
    seed=mostly(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
    samples=mostly(st.integers(1, 3)),
)
def test_generate(model, prompt, tokens, temperature, top_k, top_p, seed, samples):
    with outcome("generate()"):
        out = model.generate(
            prompt, tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, num_samples=samples
        )
        assert out.dtype == np.int32 and out.shape[-1] == tokens
        if temperature == 0 or temperature < 1e-38:  # greedy, however it is asked for
            assert np.array_equal(out, model.generate(prompt, tokens, temperature=0, num_samples=samples))
        assert out.size == 0 or (out.min() >= 0 and out.max() < V)


@FUZZ
@given(inputs=id_arrays(), targets=id_arrays())
def test_gradients(model, inputs, targets):
    with outcome("gradients()"):
        loss, grads = model.gradients(inputs, targets)
        assert math.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())


@FUZZ
@given(
    data=id_arrays(max_dims=1), seq_len=mostly(st.integers(1, 8), sizes), batch_size=mostly(st.integers(1, 8), sizes)
)
def test_evaluate(model, data, seq_len, batch_size):
    with outcome("evaluate()"):
        result = model.evaluate(data, seq_len=seq_len, batch_size=batch_size)
        assert math.isfinite(result["loss"]) and 0 <= result["accuracy"] <= 1


@FUZZ
@given(
    name=st.sampled_from(["decoder.bias", "embedding.weight", "lstm.bias_ih_l1", "nope"]),
    shape=st.one_of(st.just("right"), st.just("right"), st.lists(st.integers(0, 13), max_size=3)),
    dtype=mostly(st.sampled_from(["float32", "float64", "float16"]), dtypes),
    value=st.floats(allow_nan=True, allow_infinity=True, width=64),
)
def test_load_state_dict(model, name, shape, dtype, value):
    state = model.state_dict()
    if shape == "right":
        shape = state.get(name, np.zeros(3)).shape
    with np.errstate(all="ignore"):
        state[name] = np.full(shape, value).astype(dtype) if dtype != "object" else np.full(shape, value, object)
    with outcome("load_state_dict()"):
        model.load_state_dict(state)
        assert all(np.isfinite(v).all() for v in model.state_dict().values())


@FUZZ
@given(
    text=st.text(max_size=60),
    level=st.sampled_from(["word", "char", "word", "char", "byte", None]),
    min_count=mostly(st.integers(1, 3), st.one_of(st.integers(-1, 0), anything)),
    max_vocab=mostly(st.none(), st.one_of(st.integers(-1, 8), anything)),
)
def test_tokenizer_round_trip(tmp_path_factory, text, level, min_count, max_vocab):
    with outcome("Tokenizer"):
        tokenizer = fastlm.Tokenizer.fit(text, level=level, min_count=min_count, max_vocab=max_vocab)
        path = tmp_path_factory.getbasetemp() / "fuzz-tokenizer.json"
        tokenizer.save(path)
        loaded = fastlm.Tokenizer.load(path)
        assert loaded == tokenizer and loaded.vocab == tokenizer.vocab
        assert np.array_equal(loaded.encode(text), tokenizer.encode(text))
        if level == "char" and min_count in (0, 1) and max_vocab is None:
            assert tokenizer.decode(tokenizer.encode(text)) == text
