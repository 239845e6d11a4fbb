"""fastlm.datasets: the corpora shipped in the package are whole, text, and usable as they come."""

from __future__ import annotations

import hashlib

import pytest

import fastlm

# The public char-rnn file, byte for byte: a damaged or truncated copy in the package fails here.
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_tinyshakespeare_is_the_public_text():
    text = fastlm.datasets.tinyshakespeare()
    assert isinstance(text, str)
    assert len(text) == 1_115_394
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == TINYSHAKESPEARE_SHA256
    assert len(set(text)) == 65


def test_tinyshakespeare_speakers_are_words_of_the_word_tokenizer():
    """The README's prompt: the word tokenizer keeps "ROMEO:" whole (split on white space)."""
    text = fastlm.datasets.tinyshakespeare()
    tok = fastlm.Tokenizer.fit(text, level="word", min_count=2)
    ids, unknown = tok.encode("ROMEO:", return_unknown=True)
    assert unknown == 0 and tok.decode(ids) == "ROMEO:"
    assert tok.encode("ROMEO :", return_unknown=True)[1] == 1  # ":" alone is not a word of this text


def test_the_quick_tour_figures_that_follow_from_the_data():
    """README's Quick tour states the corpus's sizes and what word frequencies alone score on the
    held-out words (the yardstick of its perplexities); they must follow from the tour's code.
    (The trained model's figures come from `python bench/readme_tour.py`, minutes long.)"""
    import pathlib
    import re

    import numpy as np

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    tour = readme.split("\n## Quick tour\n", 1)[1].split("\n## ", 1)[0]
    assert 'Tokenizer.fit(text, level="word", min_count=2)' in tour and "split = int(0.95 * len(ids))" in tour
    text = fastlm.datasets.tinyshakespeare()
    tok = fastlm.Tokenizer.fit(text, level="word", min_count=2)
    ids = tok.encode(text)
    split = int(0.95 * len(ids))
    train, held_out = ids[:split], ids[split:]
    counts = np.bincount(train, minlength=len(tok)) + 1.0  # add-one smoothed
    unigram = float(np.exp(-np.log(counts[held_out] / counts.sum()).mean()))
    prose = " ".join(tour.split())
    for figure in (
        f"{len(train):,} words",
        f"vocabulary of {len(tok):,}",
        f"{len(held_out) - 1:,} words it predicts in the held-out 5%",
    ):
        assert figure in prose, figure
    assert re.search(rf"frequencies alone score {round(unigram):,} on the same words \(add-one smoothed\)", prose)


def test_python_docs_is_the_reference_manual():
    from pydoc_data.topics import topics

    text = fastlm.datasets.python_docs()
    assert isinstance(text, str) and len(text) > 100_000
    assert all(topics[key] in text for key in topics)
    assert text == fastlm.datasets.python_docs()  # the same text every call (sorted topics)


@pytest.mark.parametrize("name", fastlm.datasets.NAMES)
def test_load_by_name(name):
    assert fastlm.datasets.load(name) == getattr(fastlm.datasets, name)()


def test_load_names_the_bad_argument():
    with pytest.raises(ValueError, match=r"name must be one of tinyshakespeare, python_docs; got 'shakespeare'"):
        fastlm.datasets.load("shakespeare")
    with pytest.raises(TypeError, match=r"name must be a str, got int"):
        fastlm.datasets.load(3)
