"""Copies of a model (issue 15): pickle, copy.deepcopy and multiprocessing (spawn and fork)
carry the weights, the config and the tokenizer; the copy gives the original's outputs, shares
no array, lock or fit bookkeeping with it, and training it leaves the original as it was."""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import queue as queues
import threading

import numpy as np
import pytest

import fastlm

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TEXT = fastlm.datasets.tinyshakespeare()[:3000]
CASES = {
    "full": dict(embed_dim=8, hidden_size=12, num_layers=2, dropout=0.1),
    "tied": dict(embed_dim=12, hidden_size=12, num_layers=1, tie_weights=True),
    "adaptive": dict(embed_dim=8, hidden_size=16, num_layers=1, cutoffs=[10, 30], div_value=2.0),
}


@pytest.fixture(scope="module")
def tok():
    return fastlm.Tokenizer.fit(TEXT, level="word", eos="<eos>")


def make(tok, case, backend="cpp"):
    model = fastlm.LSTMLM(len(tok), **CASES[case], seed=5, backend=backend)
    model.tokenizer = tok
    return model


def outputs(model):
    """What a copy must reproduce: samples, scores and evaluation, from the tokenizer on."""
    ids = model.tokenizer.encode(TEXT[:600])
    return (
        model.generate_text("First", max_new_tokens=15, seed=3),
        model.score(["Before we proceed", "Speak, speak."]),
        model.evaluate(ids, seq_len=20)["loss"],
    )


def train_a_little(model):
    model.fit(model.tokenizer.encode(TEXT), seq_len=10, batch_size=4, epochs=1, max_batches=3, progress=False)


def assert_same_model(copy_, original):
    assert type(copy_) is type(original)
    assert copy_.config() == original.config() and copy_.backend == original.backend
    assert copy_.tokenizer.vocab == original.tokenizer.vocab and copy_.tokenizer.eos == original.tokenizer.eos
    assert copy_.params.keys() == original.params.keys()
    for name, value in original.params.items():
        assert np.array_equal(copy_.params[name], value), name
        assert not np.shares_memory(copy_.params[name], value), name
    if original.tie_weights:  # still one matrix under both names
        assert copy_.params["decoder.weight"] is copy_.params["embedding.weight"]
    assert copy_._params_lock is not original._params_lock


COPIERS = {
    "pickle": lambda model: pickle.loads(pickle.dumps(model)),
    "deepcopy": copy.deepcopy,
}


@pytest.mark.parametrize("copier", list(COPIERS))
@pytest.mark.parametrize("case", list(CASES))
def test_a_copy_gives_the_same_outputs_and_trains_on_its_own(tok, case, copier):
    original = make(tok, case)
    clone = COPIERS[copier](original)
    assert_same_model(clone, original)
    assert outputs(clone) == outputs(original)
    before = original.state_dict()
    train_a_little(clone)
    after = original.state_dict()
    assert all(np.array_equal(after[name], before[name]) for name in before)
    assert any(not np.array_equal(clone.params[name], before[name]) for name in before)


def test_copies_of_a_numpy_backend_model_run_on_numpy(tok):
    original = make(tok, "full", backend="numpy")
    clone = pickle.loads(pickle.dumps(original))
    assert clone.ops is fastlm.reference
    assert outputs(clone) == outputs(original)


def test_the_copy_continues_the_random_stream(tok):
    """Dropout masks come from the model's generator, which travels: the copy trains as the
    original would have (bit-identical), a copy taken before either trained."""
    a = make(tok, "full")
    b = copy.deepcopy(a)
    train_a_little(a)
    train_a_little(b)
    for name, value in a.params.items():
        assert np.array_equal(b.params[name], value), name


def test_a_copy_taken_while_fit_runs_holds_the_weights_fit_started_from(tok):
    """Copied by another thread in the middle of a fit: the weights as fit found them, and no
    trace of the fit, so the copy can be trained at once."""
    model = make(tok, "tied")
    started_from = model.state_dict()
    clones = []
    with model.training_snapshot():  # what fit does around its loop
        model.params["embedding.weight"] += 1.0  # fit's private copy moves on
        reader = threading.Thread(target=lambda: clones.extend(copier(model) for copier in COPIERS.values()))
        reader.start()
        reader.join()
    assert len(clones) == len(COPIERS)
    for clone in clones:
        for name, value in started_from.items():
            assert np.array_equal(clone.params[name], value), name
        assert clone._snapshot is None and clone._training_thread is None
        with clone.training_snapshot():  # no "fit is already running"
            pass


# ----------------------------------------------------------------- other processes


def _in_child(model, queue, threads):
    """Run in a child process: the copy's outputs, then train it and report its weights.
    threads: set in a spawned child; a forked one runs the kernels on 1 thread (OpenMP
    cannot start threads again after a fork, and fastlm says so if asked for more)."""
    try:
        if threads is not None:
            fastlm.set_num_threads(threads)
        result = outputs(model)
        train_a_little(model)
        queue.put((result, model.state_dict()))
    except BaseException as error:  # the parent reports it rather than waiting for ever
        queue.put(error)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_model_goes_to_another_process(tok, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"the {method} start method does not exist on this platform")
    model = make(tok, "full")
    fastlm.set_num_threads(2)  # the parent's thread pool is running when it forks
    try:
        expected = outputs(model)
    finally:
        fastlm.set_num_threads(1)
    before = model.state_dict()
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_in_child, args=(model, queue, 2 if method == "spawn" else None))
    child.start()
    try:
        answer = queue.get(timeout=120)
    except queues.Empty:
        pytest.fail(f"the {method} child did not answer within 120 s")
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    if isinstance(answer, BaseException):
        raise answer
    result, trained = answer
    assert child.exitcode == 0
    assert result == expected
    assert any(not np.array_equal(trained[name], before[name]) for name in before)
    after = model.state_dict()
    assert all(np.array_equal(after[name], before[name]) for name in before)


def test_a_subword_tokenizer_travels_with_the_model():
    pytest.importorskip("tokenizers", reason="Hugging Face tokenizers not installed (pip install 'fastlm[bpe]')")
    tok = fastlm.Tokenizer.fit(TEXT, level="bpe", vocab_size=300)
    model = fastlm.LSTMLM(len(tok), 8, 12, seed=5)
    model.tokenizer = tok
    for clone in (COPIERS["pickle"](model), COPIERS["deepcopy"](model)):
        assert clone.tokenizer.encode(TEXT[:300]).tolist() == tok.encode(TEXT[:300]).tolist()
        assert clone.generate_text("First", max_new_tokens=12, seed=2) == model.generate_text(
            "First", max_new_tokens=12, seed=2
        )


def test_in_place_updates_take_an_unpickled_float32_array():
    """An unpickled array's dtype is an equal float32 that is not NumPy's own object: the C++ core
    compares dtypes by value, so it updates such an array in place, while another byte order stays refused."""
    param = pickle.loads(pickle.dumps(np.zeros(4, np.float32)))
    assert param.dtype is not np.dtype(np.float32)
    fastlm._core.sgd_update(param, np.ones(4, np.float32), None, 1, 0.5)
    np.testing.assert_array_equal(param, np.full(4, -0.5, np.float32))
    with pytest.raises(TypeError, match="param is updated in place .* of dtype >f4"):
        fastlm._core.sgd_update(np.zeros(4, ">f4"), np.ones(4, np.float32), None, 1, 0.5)
