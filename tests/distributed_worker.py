"""Run by tests/test_distributed.py under mpiexec: one rank of a data-parallel fit.

Usage: python distributed_worker.py OUT.npz MODE [CHECKPOINT_DIR]. Rank 0 saves the final
weights and the history's losses to OUT.npz. MODE: "train", "resume", "raise" (rank 1 fails
at its 5th step), "die" (rank 1 is killed at its 5th step), "differ" (rank 1 is given another lr),
"hang" (rank 1 sleeps at its 5th step, without dying), "hang-at-start" (rank 1 sleeps before fit);
in the two hang modes every rank trains with comm_timeout=HANG_TIMEOUT.
"""

import os
import signal
import sys
import time

import numpy as np

import fastlm

SETTINGS = dict(seq_len=10, batch_size=4, epochs=2, lr=0.01, clip_norm=1.0, progress=False, max_batches=50)
MODEL = dict(vocab_size=40, embed_dim=8, hidden_size=12, num_layers=2, dropout=0.25, seed=3)
HANG_TIMEOUT = 5  # seconds: far above one step of this tiny model, even on a loaded machine
HANG_SECONDS = 3600  # a hanging rank's sleep, beyond the test's TIMEOUT: only the others' MPI_Abort ends it in time


def corpus():
    return np.random.default_rng(0).integers(0, MODEL["vocab_size"], 3000).astype(np.int32)


def main(out, mode, checkpoint_dir=None):
    # Imported here, not at the top: test_distributed imports this module for MODEL, SETTINGS
    # and corpus() also where mpi4py is not installed (its MPI tests then skip).
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    model = fastlm.LSTMLM(**MODEL, backend="cpp")
    if comm.rank > 0:  # rank 0's weights must win the broadcast
        model.load_state_dict({k: v + 1 for k, v in model.state_dict().items()})
    settings = dict(SETTINGS)
    if mode == "differ" and comm.rank == 1:
        settings["lr"] = 0.02
    if mode in ("raise", "die", "hang") and comm.rank == 1:
        steps, step = [0], model.forward_backward

        def failing(*args, **kwargs):
            steps[0] += 1
            if steps[0] == 5 and mode == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            if steps[0] == 5 and mode == "hang":
                time.sleep(HANG_SECONDS)
            if steps[0] == 5 and mode == "raise":
                raise RuntimeError("rank 1 fails at its 5th step")
            return step(*args, **kwargs)

        model.forward_backward = failing
    if mode in ("hang", "hang-at-start"):
        settings["comm_timeout"] = HANG_TIMEOUT
        comm.Barrier()  # the ranks start fit together: only the injected sleep can exceed the timeout
        if mode == "hang-at-start" and comm.rank == 1:
            time.sleep(HANG_SECONDS)
    if mode in ("resume", "first-half"):
        settings.update(
            checkpoint_dir=checkpoint_dir, resume=mode == "resume", max_batches=20 if mode == "first-half" else 30
        )
    history = model.fit(corpus(), comm=comm, **settings)
    if comm.rank == 0:
        np.savez(out, loss=np.array(history["loss"]), **model.state_dict())


if __name__ == "__main__":
    main(*sys.argv[1:])
