import pytest

import fastlm


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; the results do not depend on the count."""
    original = fastlm.get_num_threads()
    fastlm.set_num_threads(1)
    yield
    fastlm.set_num_threads(original)


@pytest.fixture
def restore_threads():
    """For a test that sets the thread count itself: the count it found is back afterwards."""
    original = fastlm.get_num_threads()
    try:
        yield
    finally:
        fastlm.set_num_threads(original)
