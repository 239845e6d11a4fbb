"""Data-parallel training on MPI: ranks x threads on one machine, the Allreduce of a step's
gradients, and a projection of the scaling efficiency to more machines (issue 17).

Runs, alternating, each under its own `mpiexec`:
  1 rank  x 2 threads, batch 20           (one process, as fastlm trains by default)
  2 ranks x 1 thread,  batch 10 per rank  (the same global batch: the same model trained)
  2 ranks x 1 thread,  batch 20 per rank  (twice the global batch: weak scaling)
on configs B (V 10000, E 200, H 200, L 2, T 35) and C (E = H = 650), random ids in memory.
tokens/s is differential (fit over K steps minus fit over 1 step, per K - 1 steps). The
2-rank workers also time one Allreduce of the model's flat gradient buffer (median of 20).

    python bench/mpi_scaling.py [--configs B C] [--steps 40] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

import numpy as np

from harness import run_json  # bench/harness.py

CONFIGS = {
    "B": dict(vocab_size=10000, embed_dim=200, hidden_size=200, num_layers=2),
    "C": dict(vocab_size=10000, embed_dim=650, hidden_size=650, num_layers=2),
}
SEQ_LEN = 35
# Per-machine step times for the projection: README's quiet-machine single-process figures
# (B 8,572 and C 1,951 training tokens/s for 700-token batches). A busy machine's slower steps
# would hide the communication and flatter the projection.
QUIET_STEP_S = {"B": 700 / 8572, "C": 700 / 1951}
RUNS = [
    ("1 rank x 2 threads, batch 20", 1, 2, 20),
    ("2 ranks x 1 thread, batch 10 each", 2, 1, 10),
    ("2 ranks x 1 thread, batch 20 each", 2, 1, 20),
]


def worker(config, threads, batch, steps):
    from mpi4py import MPI

    import fastlm

    comm = MPI.COMM_WORLD
    fastlm.set_num_threads(threads)
    ids = np.random.default_rng(0).integers(0, 10000, 2_000_000).astype(np.uint16)
    model = fastlm.LSTMLM(**CONFIGS[config], seed=1)
    times = {}
    for k in (1, steps):
        comm.Barrier()
        started = time.perf_counter()
        model.fit(
            ids,
            seq_len=SEQ_LEN,
            batch_size=batch,
            epochs=1,
            progress=False,
            max_batches=k,
            comm=comm if comm.size > 1 else None,
        )
        times[k] = time.perf_counter() - started
    tokens_per_s = (steps - 1) * SEQ_LEN * batch * comm.size / (times[steps] - times[1])
    allreduce = None
    if comm.size > 1:
        flat = np.ones(sum(p.size for p in model.params.values()) + 2, dtype=np.float32)
        samples = []
        for _ in range(20):
            comm.Barrier()
            started = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            samples.append(time.perf_counter() - started)
        allreduce = statistics.median(samples)
    if comm.rank == 0:
        print(
            json.dumps(
                dict(
                    tokens_per_s=tokens_per_s,
                    allreduce_s=allreduce,
                    floats=int(sum(p.size for p in model.params.values())),
                    step_s=SEQ_LEN * batch * comm.size / tokens_per_s,
                )
            )
        )


def projection(step_s, floats, machines, gbit_s, latency_s=20e-6):
    """Efficiency of data-parallel steps with one ring Allreduce after backward (no overlap):
    compute / (compute + 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency)."""
    n = machines
    comm_s = 2 * (n - 1) / n * floats * 4 / (gbit_s * 1e9 / 8) + 2 * (n - 1) * latency_s
    return step_s / (step_s + comm_s), comm_s


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["B", "C"], choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", nargs=4, metavar=("CONFIG", "THREADS", "BATCH", "STEPS"))
    args = parser.parse_args()
    if args.worker:
        config, threads, batch, steps = args.worker
        return worker(config, int(threads), int(batch), int(steps))
    mpiexec = shutil.which("mpiexec")
    results = {}
    for round_ in range(args.rounds):
        for config in args.configs:
            for label, ranks, threads, batch in RUNS if round_ % 2 == 0 else RUNS[::-1]:
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                command = [mpiexec, "-n", ranks, sys.executable, __file__, "--worker", config, threads, batch]
                result = run_json(command + [args.steps], env=env)
                results.setdefault((config, label), []).append(result)
                print(config, label, json.dumps(result), file=sys.stderr, flush=True)
    print(f"{args.rounds} alternating rounds, {args.steps - 1} timed steps per run, each run its own mpiexec; medians")
    print("| config | run | tokens/s | vs 1 rank x 2 threads | step, ms | Allreduce of the gradients, ms |")
    print("|---|---|---:|---:|---:|---:|")
    for config in args.configs:
        base = statistics.median(r["tokens_per_s"] for r in results[(config, RUNS[0][0])])
        for label, *_ in RUNS:
            rs = results[(config, label)]
            tps = statistics.median(r["tokens_per_s"] for r in rs)
            ar = [r["allreduce_s"] for r in rs if r["allreduce_s"] is not None]
            print(
                f"| {config} ({rs[0]['floats'] * 4 / 2**20:.0f} MiB of gradients) | {label} | {tps:,.0f} | "
                f"{tps / base:.2f} | {statistics.median(r['step_s'] for r in rs) * 1e3:.0f} | "
                f"{statistics.median(ar) * 1e3:.1f} |"
                if ar
                else f"| {config} ({rs[0]['floats'] * 4 / 2**20:.0f} MiB of gradients) | {label} | {tps:,.0f} | "
                f"{tps / base:.2f} | {statistics.median(r['step_s'] for r in rs) * 1e3:.0f} | |"
            )
    print()
    print(
        "Projection (ring Allreduce after backward, no overlap, 20 us per message; per-machine step = "
        "README's quiet-machine single-process step, batch 20 per machine):"
    )
    print("| config | machines | 10 Gbit/s: efficiency (Allreduce ms) | 100 Gbit/s: efficiency (Allreduce ms) |")
    print("|---|---:|---:|---:|")
    for config in args.configs:
        rs = results[(config, RUNS[0][0])]
        step_s = QUIET_STEP_S[config]
        for machines in (4, 16, 64):
            cells = []
            for gbit in (10, 100):
                eff, comm_s = projection(step_s, rs[0]["floats"], machines, gbit)
                cells.append(f"{eff:.0%} ({comm_s * 1e3:.1f})")
            print(f"| {config} | {machines} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
