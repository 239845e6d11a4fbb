"""The benchmark configurations live in the package (fastlm.benchmark), shared with `fastlm bench`."""
from fastlm.benchmark import CONFIGS, random_batch, training_flops_per_token  # noqa: F401
