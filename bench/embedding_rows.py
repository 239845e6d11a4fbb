"""The optimizer on the embedding's gradient in row form (fit's step) against the dense V x E
gradient, paired in one process: the two steps alternate, each pair in turn order ABAB / BABA,
so that a slow spell of a shared machine lands on both. Both give the same bits; only the time
differs. A configuration of fastlm.benchmark (W: fastlm_train_step with embedding_rows True
and False, Adam) or zaremba-small (fit's step of the preset: B 20, T 20, V 10000, 2 x 200
LSTM, SGD with the preset's clipping, the state carried).

    python bench/embedding_rows.py [--configs W zaremba-small] [--threads 1 2] [--pairs 12]

Reports per configuration and thread count the median wall and process CPU time per step of
each and the ratio dense / rows (of the medians, and the median of the pairs' ratios). On a
loaded machine read the CPU time with --threads 1 (with more threads it includes the OpenMP
threads' spin waits) and the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastlm
from fastlm import benchmark as bm
from fastlm.training import SGD


def zaremba_small_step(rows):
    """fit's step of the zaremba-small preset on random ids (V 10000), the embedding's gradient
    in row form or dense."""
    preset = fastlm.presets.get("zaremba-small")
    model = fastlm.LSTMLM(10000, **preset.model, seed=1)
    opt = SGD(model.trainable(), lr=preset.fit["lr"])
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, 10000, (preset.fit["batch_size"], preset.fit["seq_len"]), dtype=np.int32) for _ in "xy")
    carry = None

    def step():
        nonlocal carry
        _, grads, carry = model.forward_backward(x, y, initial_state=carry, sparse_embedding=rows)
        opt.clipped_step(model.ops, model.trainable(), grads, preset.fit["clip_norm"])

    return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=["W"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--pairs", type=int, default=12)
    args = parser.parse_args()
    for name in args.configs:
        for threads in args.threads:
            fastlm.set_num_threads(threads)
            if name == "zaremba-small":
                steps = {rows: zaremba_small_step(rows) for rows in (False, True)}
            else:
                steps = {
                    rows: bm.fastlm_train_step(bm.CONFIGS[name], "cpp", embedding_rows=rows) for rows in (False, True)
                }
            for step in steps.values():
                step()
            times = {rows: ([], []) for rows in steps}
            for i in range(args.pairs):
                for rows in (False, True) if i % 2 == 0 else (True, False):
                    wall, cpu = time.perf_counter(), time.process_time()
                    steps[rows]()
                    times[rows][0].append(time.perf_counter() - wall)
                    times[rows][1].append(time.process_time() - cpu)
            for k, what in enumerate(("wall", "CPU")):
                dense, rows = times[False][k], times[True][k]
                pairs = [d / r for d, r in zip(dense, rows)]
                print(
                    f"{name} {threads} thread(s) {what}: dense {1e3 * statistics.median(dense):.1f} ms, "
                    f"rows {1e3 * statistics.median(rows):.1f} ms, dense/rows "
                    f"{statistics.median(dense) / statistics.median(rows):.3f} (median pair "
                    f"{statistics.median(pairs):.3f}, rows faster in {sum(p > 1 for p in pairs)}/{len(pairs)})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
