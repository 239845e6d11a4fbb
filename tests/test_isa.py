"""The instruction set of the kernels: chosen at import, forced lower with FASTLM_ISA.

The op tests compare each set's kernels against the NumPy reference (CI runs
tests/test_ops.py once per set this machine has, and under qemu without AVX); these
tests check the choice itself, each in a fresh interpreter, and that families written to
give the same bits on every set do.
"""

import os
import subprocess
import sys

import pytest

import fastlm

SETS = ["baseline", "avx2", "avx512"]
INFO = fastlm.build_info()


def import_with(isa):
    env = dict(os.environ)
    env.pop("FASTLM_ISA", None)
    if isa is not None:
        env["FASTLM_ISA"] = isa
    code = "import fastlm; info = fastlm.build_info(); print(info['isa'], *info['isa_available'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_build_info_names_the_set_in_use_and_the_available_ones():
    available = INFO["isa_available"]
    assert available and available == [s for s in SETS if s in available], available
    if os.environ.get("FASTLM_ISA"):
        assert INFO["isa"] == os.environ["FASTLM_ISA"]
    else:
        assert INFO["isa"] == available[-1]  # the best the CPU runs
    if INFO["isa_build"] == "portable":
        assert available[0] == "baseline"


@pytest.mark.parametrize("isa", SETS)
def test_fastlm_isa_chooses_any_available_set(isa):
    if isa not in INFO["isa_available"]:
        pytest.skip(f"this build or CPU has no {isa} kernels (available: {INFO['isa_available']})")
    result = import_with(isa)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == isa


def test_unset_or_empty_fastlm_isa_takes_the_best():
    for value in (None, ""):
        result = import_with(value)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [INFO["isa_available"][-1], *INFO["isa_available"]]


@pytest.mark.parametrize("value", ["sse2", "AVX2", "avx-512", "native"])
def test_unknown_fastlm_isa_fails_the_import_naming_the_choices(value):
    result = import_with(value)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert f"FASTLM_ISA='{value}' names no instruction set" in result.stderr
    assert "baseline, avx2 or avx512" in result.stderr


def test_a_set_this_cpu_or_build_lacks_fails_the_import():
    missing = [s for s in SETS if s not in INFO["isa_available"]]
    if not missing:
        pytest.skip("this CPU runs every set the build holds")
    result = import_with(missing[-1])
    assert result.returncode != 0
    assert f"FASTLM_ISA={missing[-1]}:" in result.stderr
    assert "ImportError" in result.stderr


ROW_PASS = """
import sys
import numpy as np
import fastlm
rng = np.random.default_rng(5)
N, V = 37, 10000 + 45  # the row pass's whole 64-float groups, a 32-float one and the lanes' tail
h = rng.standard_normal((N, 1)).astype(np.float32)
w = rng.standard_normal((V, 1)).astype(np.float32) * 4
b = rng.standard_normal(V).astype(np.float32)
t = rng.integers(0, V, N).astype(np.int32)
loss, _, _, dbias = fastlm._core.output_loss_forward_backward(h, w, b, t)
sys.stdout.write(np.float64(loss).hex() + " " + dbias.tobytes().hex())
"""


def test_training_row_pass_gives_the_same_bits_on_avx2_and_avx512():
    # With H = 1 every logit is one product, so the loss and the bias gradient are the row
    # pass's alone: the AVX-512 softmax reductions keep the AVX2 ones' lanes and order.
    if "avx512" not in INFO["isa_available"]:
        pytest.skip(f"this build or CPU has no avx512 kernels (available: {INFO['isa_available']})")
    outputs = []
    for isa in ("avx2", "avx512"):
        env = {**os.environ, "FASTLM_ISA": isa}
        result = subprocess.run([sys.executable, "-c", ROW_PASS], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
