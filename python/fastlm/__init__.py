"""fastlm: fast CPU training, scoring and generation for LSTM language models."""
from fastlm import files, reference
from fastlm._core import build_info, get_num_threads, set_num_threads, windows
from fastlm.files import load
from fastlm.model import LSTMLM
from fastlm.tokenizer import Tokenizer

__version__ = build_info()["version"]

__all__ = ["LSTMLM", "Tokenizer", "build_info", "load", "get_num_threads", "reference", "set_num_threads", "windows", "__version__"]
