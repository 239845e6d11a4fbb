"""fastlm/_environment.py: the process-wide settings made on import, a user's choice winning,
and the environment child processes get without them. Each case runs `import fastlm` in a
fresh interpreter, since the settings are made once, on import."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from fastlm import _environment

OURS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "FASTLM_MALLOC_TUNING", "GLIBC_TUNABLES")
REPORT = (
    "import json, os, fastlm\n"
    "from fastlm import _environment\n"
    "print(json.dumps([os.environ.get('GOMP_SPINCOUNT'), _environment.DEFAULTS,"
    " fastlm.build_info()['malloc_tuned']]))"
)
GLIBC = platform.libc_ver()[0] == "glibc"


def import_fastlm(tmp_path, **variables):
    """[GOMP_SPINCOUNT, what fastlm recorded as set, malloc_tuned] after `import fastlm` with these variables."""
    env = {k: v for k, v in os.environ.items() if k not in OURS}
    result = subprocess.run(
        [sys.executable, "-c", REPORT],
        env={**env, **variables},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    return json.loads(result.stdout)


def test_import_bounds_the_openmp_spin_unless_the_user_chose(tmp_path):
    assert import_fastlm(tmp_path)[:2] == ["10000", {"GOMP_SPINCOUNT": "10000"}]
    assert import_fastlm(tmp_path, GOMP_SPINCOUNT="300000")[:2] == ["300000", {}]
    assert import_fastlm(tmp_path, OMP_WAIT_POLICY="passive")[:2] == [None, {}]


@pytest.mark.skipif(not GLIBC, reason="the malloc tuning exists for glibc only")
def test_import_tunes_malloc_unless_the_user_opted_out(tmp_path):
    assert import_fastlm(tmp_path)[2] is True
    assert import_fastlm(tmp_path, FASTLM_MALLOC_TUNING="0")[2] is False
    assert import_fastlm(tmp_path, GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000")[2] is False
    assert import_fastlm(tmp_path, GLIBC_TUNABLES="glibc.pthread.rseq=0")[2] is True  # not malloc's


def test_child_processes_get_the_users_environment(monkeypatch):
    """What bench/compare.py's workers and `fastlm bench --torch` start from: without the
    spin bound fastlm set (so PyTorch keeps its own), with any value the user set."""
    monkeypatch.setattr(_environment, "DEFAULTS", {"GOMP_SPINCOUNT": "10000"})
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    monkeypatch.setenv("FASTLM_TEST_MARKER", "kept")
    code = "import json, os; print(json.dumps([os.environ.get(k) for k in ('GOMP_SPINCOUNT', 'FASTLM_TEST_MARKER')]))"
    seen = subprocess.run(
        [sys.executable, "-c", code], env=_environment.user_environment(), capture_output=True, text=True, check=True
    )
    assert json.loads(seen.stdout) == [None, "kept"]
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")  # changed after import: the user's
    assert _environment.user_environment()["GOMP_SPINCOUNT"] == "300000"
    monkeypatch.setattr(_environment, "DEFAULTS", {})  # set by the user before import
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    assert _environment.user_environment()["GOMP_SPINCOUNT"] == "10000"


def test_child_environment_sets_every_thread_count(monkeypatch):
    monkeypatch.setattr(_environment, "DEFAULTS", {"GOMP_SPINCOUNT": "10000"})
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    env = _environment.child_environment(3)
    assert [env[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")] == ["3", "3", "3"]
    assert "GOMP_SPINCOUNT" not in env
