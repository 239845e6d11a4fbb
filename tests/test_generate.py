"""LSTMLM.generate (the sampling loop in C++) against its NumPy twin, and generate_text.

The C++ loop and ``fastlm.reference.generate`` draw from the same SplitMix64 stream
(sample s from seed + s) and apply the same temperature / top-k / top-p rules, so on the
same weights they return the same ids. Models are tiny (V = 40, E = 8, H = 16); their
weights are scaled up so the next-token distributions are peaked enough for top-k and
top-p to cut something off.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import fastlm

V, E, H = 40, 8, 16


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def twins(num_layers=1, seed=3):
    """The same weights on the C++ and on the NumPy backend."""
    cpp = fastlm.LSTMLM(V, E, H, num_layers, seed=seed)
    state = cpp.state_dict()
    state["decoder.weight"] *= 8  # sharper distributions: logits spread over several nats
    cpp.load_state_dict(state)
    ref = fastlm.LSTMLM(V, E, H, num_layers, seed=seed, backend="numpy")
    ref.load_state_dict(state)
    return cpp, ref


@pytest.fixture(scope="module")
def models():
    return {layers: twins(layers) for layers in (1, 2)}


@pytest.fixture
def model(models):
    return models[1][0]


PROMPT = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int32)

SETTINGS = {
    "greedy": dict(temperature=0),
    "temperature-1": dict(temperature=1.0),
    "temperature-0.6": dict(temperature=0.6),
    "hot": dict(temperature=2.5),
    "top-k": dict(temperature=1.0, top_k=5),
    "top-p": dict(temperature=1.0, top_p=0.7),
    "top-k-and-p": dict(temperature=0.8, top_k=10, top_p=0.9),
    "tiny-top-p": dict(temperature=1.0, top_p=1e-6),
}


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_cpp_equals_numpy_twin(models, layers, setting):
    cpp, ref = models[layers]
    kw = SETTINGS[setting]
    for seed in (0, 7, 2**63 + 5):
        a = cpp.generate(PROMPT, max_new_tokens=30, seed=seed, **kw)
        b = ref.generate(PROMPT, max_new_tokens=30, seed=seed, **kw)
        assert a.dtype == np.int32 and a.shape == (30,)
        np.testing.assert_array_equal(a, b, err_msg=f"{setting}, seed {seed}")


@pytest.mark.parametrize("layers", [1, 2])
def test_cpp_equals_numpy_twin_several_samples(models, layers):
    cpp, ref = models[layers]
    a = cpp.generate(PROMPT, max_new_tokens=25, temperature=1.0, top_k=8, seed=11, num_samples=4)
    b = ref.generate(PROMPT, max_new_tokens=25, temperature=1.0, top_k=8, seed=11, num_samples=4)
    assert a.shape == (4, 25)
    np.testing.assert_array_equal(a, b)
    prompts = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.int64)
    a = cpp.generate(prompts, max_new_tokens=12, temperature=0.9, top_p=0.8, seed=5)
    b = ref.generate(prompts, max_new_tokens=12, temperature=0.9, top_p=0.8, seed=5)
    assert a.shape == (3, 12)
    np.testing.assert_array_equal(a, b)


def test_sampling_actually_samples(model):
    """The settings above are not all greedy in disguise: sampling varies and top-k/top-p restrict it."""
    greedy = model.generate(PROMPT, 30, temperature=0, seed=0)
    samples = model.generate(PROMPT, 30, temperature=1.0, seed=0, num_samples=8)
    assert len({tuple(row) for row in samples}) == 8
    assert any(not np.array_equal(row, greedy) for row in samples)
    hot = model.generate(PROMPT, 30, temperature=1.5, seed=1, num_samples=8)
    top3 = model.generate(PROMPT, 30, temperature=1.5, top_k=3, seed=1, num_samples=8)
    assert len(np.unique(top3)) < len(np.unique(hot))


def test_same_seed_same_output_different_seed_different(model):
    a = model.generate(PROMPT, 40, temperature=1.0, seed=123)
    b = model.generate(PROMPT, 40, temperature=1.0, seed=123)
    c = model.generate(PROMPT, 40, temperature=1.0, seed=124)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    fresh = [tuple(model.generate(PROMPT, 40, temperature=1.0)) for _ in range(3)]  # seed=None: fresh seeds
    assert len(set(fresh)) == 3


def test_samples_independent_of_num_samples(model):
    """Sample s draws from seed + s, whatever the number of samples drawn with it."""
    three = model.generate(PROMPT, 20, temperature=1.0, top_p=0.95, seed=40, num_samples=3)
    for s in range(3):
        single = model.generate(PROMPT, 20, temperature=1.0, top_p=0.95, seed=40 + s)
        np.testing.assert_array_equal(three[s], single)
    five = model.generate(PROMPT, 20, temperature=1.0, top_p=0.95, seed=40, num_samples=5)
    np.testing.assert_array_equal(five[:3], three)
    # the same holds for a batch of distinct prompts: row s is its prompt alone with seed + s
    prompts = np.stack([PROMPT, PROMPT[::-1]])
    both = model.generate(prompts, 15, temperature=1.0, seed=9)
    np.testing.assert_array_equal(both[1], model.generate(PROMPT[::-1], 15, temperature=1.0, seed=10))


@pytest.mark.parametrize("layers, hidden, cutoffs", [(1, H, None), (2, H, None), (2, 130, None), (2, 130, [10, 20])])
def test_a_samples_distribution_does_not_depend_on_the_others(layers, hidden, cutoffs, restore_threads):
    """Row s of a generation from several prompts has, at every step, the next-token
    distribution of its prompt alone to the bit (the products are row-invariant: a tile
    of one or two rows must not run two k-chains), so no draw depends on the samples
    beside it, not even at a near tie; on 1 or 2 threads."""
    kw = dict(cutoffs=cutoffs, div_value=2.0) if cutoffs else {}
    model = fastlm.LSTMLM(V, E, hidden, layers, seed=4, **kw)
    prompts = np.random.default_rng(2).integers(0, V, (5, 7)).astype(np.int32)
    for threads in (1, 2):
        fastlm.set_num_threads(threads)
        session = model.ops.GenerationSession(model.params, layers, prompts, 1.0, 0, 1.0, 3)
        alone = [
            model.ops.GenerationSession(model.params, layers, prompts[s : s + 1], 1.0, 0, 1.0, 3 + s) for s in range(5)
        ]
        for step in range(4):
            together = session.probabilities()
            for s in range(5):
                assert np.array_equal(together[s], alone[s].probabilities()[0]), (
                    f"{threads} threads, step {step}, sample {s}"
                )
            drawn = session.next(3)
            for s in range(5):
                np.testing.assert_array_equal(alone[s].next(3)[0], drawn[s])


def test_greedy_is_argmax_continuation(models):
    """Greedy generation by hand: append the arg-max of the last position's logits, re-run the prompt."""
    for layers in (1, 2):
        cpp, ref = models[layers]
        out = cpp.generate(PROMPT, 12, temperature=0, seed=0)
        sequence = list(PROMPT)
        for _ in range(12):
            x = np.array([sequence], dtype=np.int32)
            _, predictions, _ = cpp.forward(x, np.zeros_like(x))  # arg-max at every position
            sequence.append(int(predictions[0, -1]))
        np.testing.assert_array_equal(out, sequence[len(PROMPT) :])
        # greedy ignores the seed and equals top_k=1 at any temperature
        np.testing.assert_array_equal(out, cpp.generate(PROMPT, 12, temperature=0, seed=99))
        np.testing.assert_array_equal(out, cpp.generate(PROMPT, 12, temperature=1.7, top_k=1, seed=5))


def test_top_p_tiny_is_greedy(model):
    greedy = model.generate(PROMPT, 20, temperature=0)
    np.testing.assert_array_equal(greedy, model.generate(PROMPT, 20, temperature=1.0, top_p=1e-9, seed=3))


def test_prompt_warms_the_state(model):
    a = model.generate(np.array([5]), 20, temperature=1.0, seed=0)
    b = model.generate(np.array([7, 7, 7, 5]), 20, temperature=1.0, seed=0)
    assert not np.array_equal(a, b)


def test_shapes_and_range(model):
    for num_samples in (1, 3):
        out = model.generate(PROMPT, 50, temperature=3.0, seed=2, num_samples=num_samples)
        assert out.dtype == np.int32
        assert out.shape == ((50,) if num_samples == 1 else (num_samples, 50))
        assert out.min() >= 0 and out.max() < V
    assert model.generate(PROMPT.tolist(), 5, seed=0).shape == (5,)  # a list works too
    assert model.generate(PROMPT[None], 5, seed=0).shape == (1, 5)  # 2-D in, 2-D out
    assert model.generate(np.array([[1, 2], [3, 4]]), 5, seed=0).shape == (2, 5)
    assert model.generate(np.array([0]), 5, seed=0).shape == (5,)  # a one-token prompt (even <unk>)


def test_max_new_tokens_zero(model):
    out = model.generate(PROMPT, max_new_tokens=0, seed=0)
    assert out.shape == (0,) and out.dtype == np.int32
    assert model.generate(PROMPT, max_new_tokens=0, seed=0, num_samples=2).shape == (2, 0)


def test_generate_does_not_change_the_model(model):
    before = model.state_dict()
    model.generate(PROMPT, 10, temperature=1.0, seed=0, num_samples=2)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "kw, error, message",
    [
        (dict(temperature=-0.1), ValueError, "temperature must be a finite number >= 0"),
        (dict(temperature=math.nan), ValueError, "temperature must be a finite number >= 0"),
        (dict(temperature=math.inf), ValueError, "temperature must be a finite number >= 0"),
        (dict(temperature="hot"), TypeError, "temperature must be a number, got 'hot'"),
        (dict(top_p=0.0), ValueError, r"top_p must lie in \(0, 1\]"),
        (dict(top_p=1.5), ValueError, r"top_p must lie in \(0, 1\]"),
        (dict(top_p=-0.5), ValueError, r"top_p must lie in \(0, 1\]"),
        (dict(top_p=math.nan), ValueError, r"top_p must lie in \(0, 1\]"),
        (dict(top_k=0), ValueError, "top_k must be a positive integer, got 0"),
        (dict(top_k=-3), ValueError, "top_k must be a positive integer"),
        (dict(top_k=2.5), TypeError, "top_k must be an int"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be an integer >= 0, got -1"),
        (dict(max_new_tokens=2.0), TypeError, "max_new_tokens must be an integer, got 2.0"),
        (dict(num_samples=0), ValueError, "num_samples must be a positive integer"),
    ],
)
def test_bad_options(model, kw, error, message):
    with pytest.raises(error, match=message):
        model.generate(PROMPT, **{"max_new_tokens": 5, "seed": 0, **kw})


@pytest.mark.parametrize(
    "prompt, error, message",
    [
        (np.array([], dtype=np.int32), ValueError, "the prompt is empty"),
        ([], ValueError, "the prompt is empty"),
        (np.zeros((2, 0), dtype=np.int32), ValueError, "the prompt is empty"),
        (np.array([1, V]), ValueError, f"prompt_ids holds id {V}, outside the vocabulary"),
        (np.array([-1, 2]), ValueError, "prompt_ids holds id -1"),
        (np.array([1.0, 2.0]), TypeError, "prompt_ids must hold integer token ids"),
        ("hello", TypeError, "must hold integer token ids"),
        (np.zeros((1, 2, 3), dtype=np.int32), ValueError, "must be 2-D"),
    ],
)
def test_bad_prompt(model, prompt, error, message):
    with pytest.raises(error, match=message):
        model.generate(prompt, 5, seed=0)


def test_several_prompts_with_num_samples(model):
    with pytest.raises(ValueError, match="num_samples > 1 needs a single prompt"):
        model.generate(np.array([[1, 2], [3, 4]]), 5, num_samples=2)


# ================================================================= text in, text out


@pytest.fixture(scope="module")
def word_model():
    text = "the cat sat on the mat . the dog sat on the log . a cat and a dog .\n" * 20
    tok = fastlm.Tokenizer.fit(text, level="word")
    model = fastlm.LSTMLM(len(tok), 8, 16, seed=0)
    model.fit(tok.encode(text), seq_len=8, batch_size=8, epochs=3, lr=2e-2, progress=False)
    model.tokenizer = tok
    return model


def test_generate_text_returns_str(word_model):
    out = word_model.generate_text("the cat", max_new_tokens=6, temperature=0, seed=0)
    assert isinstance(out, str)
    ids = word_model.tokenizer.encode("the cat")
    assert out == word_model.tokenizer.decode(word_model.generate(ids, 6, temperature=0))
    assert len(out.split()) == 6
    assert set(out.split()) <= set(word_model.tokenizer.vocab)


def test_generate_text_several_samples(word_model):
    outs = word_model.generate_text("the dog", max_new_tokens=5, temperature=1.0, seed=3, num_samples=3)
    assert isinstance(outs, list) and len(outs) == 3 and all(isinstance(t, str) for t in outs)
    assert outs[0] == word_model.generate_text("the dog", max_new_tokens=5, temperature=1.0, seed=3)


def test_generate_text_empty_prompt_and_zero_tokens(word_model):
    assert isinstance(word_model.generate_text("", max_new_tokens=4, seed=0), str)
    assert word_model.generate_text("the cat", max_new_tokens=0, seed=0) == ""


def test_generate_text_unknown_words_warn(word_model):
    with pytest.warns(UserWarning, match=r"2 prompt token\(s\) are not in the vocabulary.*'<unk>'.*'zebra'.*'quux'"):
        out = word_model.generate_text("the zebra sat quux", max_new_tokens=3, temperature=0, seed=0)
    assert isinstance(out, str)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt of known words: no warning
        word_model.generate_text("the cat sat", max_new_tokens=3, seed=0)


def test_generate_text_char_level_round_trip():
    text = "abcabcabd abcabc\n" * 30
    tok = fastlm.Tokenizer.fit(text, level="char")
    model = fastlm.LSTMLM(len(tok), 8, 16, seed=0)
    model.fit(tok.encode(text), seq_len=8, batch_size=8, epochs=2, lr=2e-2, progress=False)
    model.tokenizer = tok
    out = model.generate_text("ab", max_new_tokens=10, temperature=0)
    assert isinstance(out, str) and len(out) == 10
    with pytest.warns(UserWarning, match="'z'"):
        model.generate_text("abz", max_new_tokens=2)


def test_generate_text_without_tokenizer(model):
    with pytest.raises(ValueError, match="no tokenizer attached"):
        model.generate_text("hello")


def test_generate_text_tokenizer_mismatch():
    tok = fastlm.Tokenizer.fit("a b c d", level="word")
    model = fastlm.LSTMLM(len(tok) + 3, 4, 4)
    model.tokenizer = tok
    with pytest.raises(
        ValueError, match=f"tokenizer has {len(tok)} tokens but the model's vocabulary has {len(tok) + 3}"
    ):
        model.generate_text("a b")


def test_generate_text_bad_prompt_type(word_model):
    with pytest.raises(TypeError, match="prompt must be a str"):
        word_model.generate_text(["the", "cat"])
    with pytest.raises(ValueError, match="temperature"):
        word_model.generate_text("the", temperature=-1)


def test_generate_text_through_save_and_load(word_model, tmp_path):
    word_model.save(tmp_path / "m")
    loaded = fastlm.load(tmp_path / "m")
    assert loaded.generate_text("the cat", 5, temperature=0.7, seed=4) == word_model.generate_text(
        "the cat", 5, temperature=0.7, seed=4
    )


def test_numpy_scalars_accepted(model):
    """Settings often come out of NumPy code: np.float32 / np.int64 act like their Python values."""
    expected = model.generate(PROMPT, 10, temperature=0.5, top_k=4, top_p=0.75, seed=8)
    got = model.generate(
        PROMPT, np.int64(10), temperature=np.float32(0.5), top_k=np.int32(4), top_p=np.float64(0.75), seed=np.uint64(8)
    )
    np.testing.assert_array_equal(expected, got)
    with pytest.raises(TypeError, match="top_p must be a number or None, got True"):
        model.generate(PROMPT, 5, top_p=True)


@pytest.mark.parametrize("temperature", [1e-45, 1e-40, 2.9e-39, 1e-300, 5e-324, 1e-20])
def test_tiny_temperature_is_greedy(models, temperature):
    """Below ~3e-39, 1/T overflows float32: the weights were computed as 0 * inf = NaN and
    every step returned the last id (and a NaN reached the exp's integer conversion)."""
    cpp, ref = models[1]
    greedy = cpp.generate(PROMPT, 20, temperature=0)
    for model in (cpp, ref):
        np.testing.assert_array_equal(model.generate(PROMPT, 20, temperature=temperature, seed=7), greedy)


def test_overflowing_logits_are_an_error(models):
    """Finite weights whose logits overflow float32: an error, not V-1 forever."""
    cpp, ref = models[1]
    state = cpp.state_dict()
    state["decoder.weight"][:] = 3e38
    state["decoder.bias"][:] = 3e38
    for model in (fastlm.LSTMLM(V, E, H, seed=3), fastlm.LSTMLM(V, E, H, seed=3, backend="numpy")):
        model.load_state_dict(state)
        for temperature in (0.0, 1.0):
            with (
                np.errstate(over="ignore", invalid="ignore"),
                pytest.raises(FloatingPointError, match=r"logits at new token \d+ of sample 0 hold NaN or inf"),
            ):
                model.generate(PROMPT, 5, temperature=temperature, seed=1)
        with (
            np.errstate(over="ignore", invalid="ignore"),
            pytest.raises(FloatingPointError, match="the loss is nan.*overflow float32"),
        ):
            model.evaluate(np.arange(V), seq_len=8)


@pytest.mark.parametrize("seed", [float("inf"), float("nan"), 1.5, -float("inf"), 4.0, "4", True])
def test_non_integer_seed_is_a_type_error(model, seed):
    """One rule for every integer argument (fastlm.checks): a float, even an integral one, is the wrong type."""
    with pytest.raises(TypeError, match=r"seed must be an integer or None, got"):
        model.generate(PROMPT, 3, seed=seed)


def test_negative_seed_is_a_value_error(model):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 18446744073709551615\], got -1"):
        model.generate(PROMPT, 3, seed=-1)
    np.testing.assert_array_equal(model.generate(PROMPT, 5, seed=np.uint64(4)), model.generate(PROMPT, 5, seed=4))


@pytest.mark.parametrize("seed", [2**64, 2**64 + 5, 10**30])
def test_seed_beyond_64_bits_is_refused_everywhere_it_samples(seed):
    """The kernels take a 64-bit seed: 2**64 used to wrap onto seed 0's samples without a word."""
    model = fastlm.LSTMLM(V, E, H, seed=3)
    model.tokenizer = fastlm.Tokenizer(["<unk>"] + [chr(ord("A") + i) for i in range(V - 1)], "char")
    calls = {
        "generate": lambda: model.generate(PROMPT, 3, seed=seed),
        "generate with stop": lambda: model.generate(PROMPT, 3, seed=seed, stop=1),
        "generate_text": lambda: model.generate_text("AB", 3, seed=seed),
        "generate_text with stop": lambda: model.generate_text("AB", 3, seed=seed, stop="C"),
        "stream": lambda: list(model.stream(PROMPT, 3, seed=seed)),
        "session": lambda: model.session(PROMPT, seed=seed),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, {2**64 - 1}\], got "):
            call()
    assert len(model.generate(PROMPT, 5, seed=2**64 - 1)) == 5  # the largest is accepted


CTRL_C_CHILD = r"""
import os, signal, sys, time
import fastlm
signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (nohup &)
model = fastlm.LSTMLM(2000, 64, 256, num_layers=2, seed=0)
print("ready", flush=True)
started = time.perf_counter()
try:
    model.generate([1], 10**8)  # hours
    print("finished")
except KeyboardInterrupt:
    print(f"KeyboardInterrupt {time.perf_counter() - started:.3f}")
"""


def test_ctrl_c_stops_a_long_generate():
    """The sampling loop polls Python's signal handlers every few milliseconds."""
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", CTRL_C_CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # into the loop
        sent = time.perf_counter()
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=60)
        seen_after = time.perf_counter() - sent
    finally:
        child.kill()
    assert out.startswith("KeyboardInterrupt"), out
    assert seen_after < 10  # generous for a loaded machine; without the poll: hours
