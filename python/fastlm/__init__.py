"""fastlm: fast CPU training, scoring and generation for LSTM language models."""

from fastlm import _environment

# Before the core loads the OpenMP runtime, which reads its settings once, when it starts.
_environment.bound_openmp_spin()

from fastlm import _core, datasets, presets, reference
from fastlm._core import build_info, get_num_threads, windows
from fastlm.lstmlm import LSTMLM, load
from fastlm.threads import set_num_threads
from fastlm.token_file import open_ids, save_ids
from fastlm.token_file import read_header as read_ids_header
from fastlm.tokenizer import Tokenizer

_environment.tune_malloc(_core)

__version__ = build_info()["version"]

__all__ = [
    "LSTMLM",
    "Tokenizer",
    "build_info",
    "datasets",
    "load",
    "get_num_threads",
    "open_ids",
    "presets",
    "read_ids_header",
    "save_ids",
    "reference",
    "set_num_threads",
    "windows",
    "__version__",
]
