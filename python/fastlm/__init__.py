"""fastlm: fast CPU training, scoring and generation for LSTM language models."""
import os

# OpenMP threads waiting at a barrier spin for 300,000 iterations (GOMP's default) before
# they sleep. When another process holds a core, every per-time-step barrier of the
# recurrence then costs a scheduler time slice: two trainings on 2 cores ran 24x slower
# each. A spin of 10,000 kept the solo speed and made that 3x (OMP_WAIT_POLICY=passive:
# 1.3x under contention, but 15-20% slower alone). Must be set before the OpenMP runtime
# starts, i.e. before the core is imported; a setting of the user's own always wins.
# _ENVIRONMENT_DEFAULTS keeps what fastlm set, so that programs it starts to time another
# library get the user's environment instead (benchmark.user_environment).
_ENVIRONMENT_DEFAULTS = {}
if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = _ENVIRONMENT_DEFAULTS["GOMP_SPINCOUNT"] = "10000"

from fastlm import datasets, reference
from fastlm._core import build_info, get_num_threads, set_num_threads, windows
from fastlm.lstmlm import LSTMLM, load
from fastlm.token_file import open_ids, save_ids
from fastlm.token_file import read_header as read_ids_header
from fastlm.tokenizer import Tokenizer

__version__ = build_info()["version"]

__all__ = ["LSTMLM", "Tokenizer", "build_info", "datasets", "load", "get_num_threads", "open_ids", "read_ids_header",
           "save_ids", "reference", "set_num_threads", "windows", "__version__"]
