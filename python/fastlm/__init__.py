"""fastlm: fast CPU training, scoring and generation for LSTM language models."""
from fastlm import reference
from fastlm._core import build_info, get_num_threads, set_num_threads, windows
from fastlm.model import LSTMLM

__version__ = build_info()["version"]

__all__ = ["LSTMLM", "build_info", "get_num_threads", "reference", "set_num_threads", "windows", "__version__"]
