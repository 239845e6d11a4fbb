"""The process-wide settings fastlm makes when it is imported, and the environment without them.

Two settings, both for training's batch-after-batch pattern on cores that may be shared:

- OpenMP barrier spin (bound_openmp_spin). GNU OpenMP threads waiting at a barrier spin
  for 300,000 iterations before they sleep; when another process holds a core, every
  per-time-step barrier of the recurrence then costs a scheduler time slice. fastlm sets
  GOMP_SPINCOUNT=10000, which keeps the solo speed (OMP_WAIT_POLICY=passive would not),
  unless the user chose a spin policy. The runtime reads the variable once, when it starts,
  so this runs before the core is imported. It reaches every library in the process that
  uses GNU OpenMP, PyTorch included, and the programs the process starts: user_environment()
  is os.environ without it, for child processes that time another library.
- glibc's malloc (tune_malloc). glibc returns large freed blocks to the OS, so every batch's
  activations and gradients would be page-faulted and zeroed afresh; the core's tune_malloc
  keeps them in the heap. FASTLM_MALLOC_TUNING=0, or the user's own GLIBC_TUNABLES for
  malloc, leave glibc's defaults. A child process does not inherit it: nothing to undo.

The README ("Benchmarks") gives the measured effect of both.
"""

from __future__ import annotations

import os

# What fastlm itself put into os.environ (name -> value): what user_environment() takes out.
DEFAULTS = {}


def bound_openmp_spin():
    """Set GOMP_SPINCOUNT=10000 unless GOMP_SPINCOUNT or OMP_WAIT_POLICY is set already."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = DEFAULTS["GOMP_SPINCOUNT"] = "10000"


def tune_malloc(core):
    """Apply the core's malloc tuning unless the user opted out; returns whether it is in force."""
    if os.environ.get("FASTLM_MALLOC_TUNING") == "0" or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return core.tune_malloc()


def user_environment():
    """os.environ without the settings fastlm made for itself when imported.

    A variable fastlm set is dropped only while it still holds fastlm's value: a value the
    user set, before or after the import, stays.
    """
    env = dict(os.environ)
    for name, value in DEFAULTS.items():
        if env.get(name) == value:
            del env[name]
    return env


def child_environment(threads):
    """user_environment() with OMP/OPENBLAS/MKL_NUM_THREADS=threads: what a child process
    timing a library (`fastlm bench --torch`, bench/compare.py's workers) starts from."""
    env = user_environment()
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[variable] = str(threads)
    return env
