"""Data-parallel training on MPI: `mpiexec -n 2` ranks with batch b train what one process
trains with batch 2b on the same windows (dropout included), resume, and fail cleanly."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastlm
from fastlm import distributed, model_dir
from fastlm.batches import RowStreams

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import distributed_worker as worker  # noqa: E402
from helpers import ids_training_options  # noqa: E402

# The mpiexec beside this Python (the mpich wheel's, in the venv of fastlm[mpi]) matches the
# MPI library mpi4py loads there; else the one on PATH (a cluster's).
MPIEXEC = next(
    (str(p) for p in [Path(sys.executable).with_name("mpiexec")] if p.is_file() and os.access(p, os.X_OK)),
    shutil.which("mpiexec"),
)
try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIEXEC), reason="needs mpi4py and mpiexec (pip install 'fastlm[mpi]')"
)
# A hang fails the test instead of stalling the suite. Generous: on a machine loaded many
# times over, starting two ranks and training took minutes; a hang is still caught.
TIMEOUT = 600


def mpiexec(*args, ranks=2):
    # Each rank gets one thread: two ranks share this machine's cores.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [MPIEXEC, "-n", str(ranks), sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT, env=env
    )


def run_worker(tmp_path, mode, *extra):
    out = tmp_path / f"{mode}.npz"
    result = mpiexec(str(HERE / "distributed_worker.py"), str(out), mode, *map(str, extra))
    return result, out


def single_process(batch_size, **changes):
    model = fastlm.LSTMLM(**worker.MODEL)
    settings = dict(worker.SETTINGS, batch_size=batch_size, **changes)
    history = model.fit(worker.corpus(), **settings)
    return model, history


def assert_same_model(saved, model, history):
    np.testing.assert_allclose(saved["loss"], history["loss"], rtol=1e-5)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(saved[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


@needs_mpi
def test_two_ranks_train_what_one_process_trains_with_twice_the_batch(tmp_path):
    result, out = run_worker(tmp_path, "train")
    assert result.returncode == 0, result.stderr
    model, history = single_process(2 * worker.SETTINGS["batch_size"])
    saved = np.load(out)
    assert_same_model(saved, model, history)
    # ... and not what one process trains with the per-rank batch
    other, _ = single_process(worker.SETTINGS["batch_size"])
    assert not np.allclose(saved["decoder.weight"], other.state_dict()["decoder.weight"], atol=1e-3)


@needs_mpi
def test_two_ranks_resume_where_they_stopped(tmp_path):
    checkpoint = tmp_path / "run"
    first, _ = run_worker(tmp_path, "first-half", checkpoint)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in model_dir.save_path(checkpoint).iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "trainer.json",
    ]
    second, out = run_worker(tmp_path, "resume", checkpoint)
    assert second.returncode == 0, second.stderr
    model, history = single_process(2 * worker.SETTINGS["batch_size"])
    assert_same_model(np.load(out), model, history)


@needs_mpi
def test_a_rank_that_raises_ends_every_rank(tmp_path):
    result, out = run_worker(tmp_path, "raise")  # would hang until TIMEOUT without the abort
    assert result.returncode != 0
    assert "rank 1 of 2 stopped with RuntimeError: rank 1 fails at its 5th step; aborting all ranks" in result.stderr
    assert not out.exists()


@needs_mpi
def test_a_rank_that_dies_ends_every_rank(tmp_path):
    result, out = run_worker(tmp_path, "die")  # mpiexec ends the others when one is killed
    assert result.returncode != 0 and "BAD TERMINATION" in result.stdout + result.stderr
    assert not out.exists()


@needs_mpi
@pytest.mark.parametrize(
    "mode, where",
    [
        ("hang", "the gradient Allreduce of epoch 1, batch 5"),  # rank 1 sleeps at its 5th step
        ("hang-at-start", "the start-up check that every rank has the same settings"),  # ... before fit
    ],
)
def test_a_rank_that_hangs_ends_every_rank_after_the_timeout(tmp_path, mode, where):
    result, out = run_worker(tmp_path, mode)
    assert result.returncode != 0
    assert re.search(
        r"rank 0 of 2 stopped with TimeoutError: rank 0 of 2 waited \d+\.\d s for the other ranks in "
        + re.escape(f"{where} (comm_timeout={worker.HANG_TIMEOUT} s)")
        + ".*aborting all ranks",
        result.stderr,
    ), result.stderr
    assert not out.exists()


@needs_mpi
def test_ranks_with_different_settings_fail_at_start_on_every_rank(tmp_path):
    result, _ = run_worker(tmp_path, "differ")
    assert result.returncode != 0
    message = "the ranks were started with different settings: rank 1 has lr=0.02, rank 0 0.01"
    assert result.stderr.count(message) == 2, result.stderr  # raised on both ranks


# ---------------------------------------------------------------- the pieces, in one process


def test_row_streams_do_not_depend_on_how_the_batch_is_split():
    whole = RowStreams(7, 1, 2, 0, 6)
    first, second = RowStreams(7, 1, 2, 0, 4), RowStreams(7, 1, 2, 4, 2)
    for shape in [(5, 3), (2, 4)]:  # successive draws continue each row's stream
        expected = whole.random((6, *shape), dtype=np.float32)
        got = np.concatenate(
            [first.random((4, *shape), dtype=np.float32), second.random((2, *shape), dtype=np.float32)]
        )
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match=r"rows=6"):
        whole.random((5, 3))


def test_local_group_and_bad_comm():
    group = distributed.group(None)
    assert (group.rank, group.size, group.rows(10)) == (0, 1, (0, 10))
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        fastlm.LSTMLM(10).fit(np.arange(10) % 10, seq_len=3, comm="COMM_WORLD", progress=False)


class Request:
    """A stand-in for an MPI request that completes at its n-th test (never: None)."""

    def __init__(self, n):
        self.n, self.tests = n, 0

    def Test(self):
        self.tests += 1
        return self.n is not None and self.tests >= self.n


def test_waits_are_bounded_and_name_the_step():
    group = distributed.MPIGroup.__new__(distributed.MPIGroup)  # the waiting logic alone, no MPI
    group.rank, group.size, group.timeout = 1, 3, 60
    finishing = Request(1000)
    group._wait(finishing, "the gradient Allreduce of epoch 2, batch 7")
    assert finishing.tests == 1000
    group.timeout = 0.2
    with pytest.raises(TimeoutError) as error:
        group._wait(Request(None), "the gradient Allreduce of epoch 2, batch 7")
    assert re.fullmatch(
        r"rank 1 of 3 waited \d+\.\d s for the other ranks in the gradient Allreduce of epoch 2, batch 7 "
        r"\(comm_timeout=0\.2 s\): a rank is hanging or far slower than this one",
        str(error.value),
    ), error.value
    assert isinstance(error.value, distributed.USER_ERRORS)  # reported in one line, no traceback


def test_fingerprint_tells_data_apart():
    a = np.arange(10000)
    b = a.copy()
    b[-1] = 0
    assert distributed.fingerprint(a) == distributed.fingerprint(a.astype(np.uint16))
    assert distributed.fingerprint(a) != distributed.fingerprint(b)
    assert distributed.fingerprint(a) != distributed.fingerprint(a[:-1])


# ---------------------------------------------------------------- the command line


@pytest.fixture
def encoded(tmp_path):
    tok = fastlm.Tokenizer.fit(" ".join(f"w{k}" for k in range(30)))
    tok.save(tmp_path / "tok.json")
    fastlm.save_ids(tmp_path / "ids.bin", worker.corpus() % len(tok), len(tok))
    return ids_training_options(tmp_path)


def fastlm_command(*argv, mpi_ranks=None, env=None):
    command = [sys.executable, "-m", "fastlm", *map(str, argv)]
    if mpi_ranks:
        command = [MPIEXEC, "-n", str(mpi_ranks), *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
    )


@needs_mpi
def test_cli_trains_and_resumes_on_two_ranks(encoded, tmp_path):
    first = fastlm_command("train", *encoded, "--epochs", "1", "--distributed", mpi_ranks=2)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("corpus: ") == 1 and first.stdout.count("--- sample ---") == 1  # rank 0 alone
    assert (tmp_path / "model" / "config.json").is_file()
    second = fastlm_command("train", *encoded, "--epochs", "2", "--distributed", "--resume", mpi_ranks=2)
    assert second.returncode == 0, second.stderr
    assert "epoch 2/2" in second.stdout and "epoch 1/2" not in second.stdout


@needs_mpi
def test_cli_usage_error_on_two_ranks_exits_2_each_rank_saying_it_once(encoded, tmp_path):
    result = fastlm_command("train", *encoded, "--momentum", "0.9", "--distributed", mpi_ranks=2)
    assert result.returncode == 2, result.stderr  # the usage error's code, through MPI_Abort
    message = "fastlm train: error: --momentum 0.9 applies to --optimizer sgd"
    # Each rank finds it and prints it once before the job ends (a rank that starts more than
    # ABORT_GRACE later than the other may be ended before it does: at least one line).
    assert 1 <= result.stderr.count(message) <= 2 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "model").exists()


@pytest.mark.skipif(not HAVE_MPI4PY, reason="needs mpi4py (pip install 'fastlm[mpi]')")
def test_cli_distributed_without_mpiexec_trains_as_one_rank(encoded):
    result = fastlm_command("train", *encoded, "--epochs", "1", "--max-steps", "2", "--distributed")
    assert result.returncode == 0, result.stderr
    assert "not started by mpiexec (or with -n 1): training as one rank" in result.stderr


def test_cli_distributed_without_mpi4py_says_what_to_install(encoded, tmp_path):
    hide = tmp_path / "hide" / "mpi4py"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    result = fastlm_command("train", *encoded, "--epochs", "1", "--distributed", env={"PYTHONPATH": str(hide.parent)})
    assert result.returncode == 1
    assert "--distributed needs mpi4py" in result.stderr and "pip install 'fastlm[mpi]'" in result.stderr
    assert "Traceback" not in result.stderr
