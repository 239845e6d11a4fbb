"""Issue 16's measurements: large vocabularies (configs W, X of fastlm.benchmark) with the
adaptive softmax, fastlm vs PyTorch's AdaptiveLogSoftmaxWithLoss, and the full softmax of both.

    python bench/adaptive_speed.py [--configs W X] [--rounds 3] [--threads 2] [--repeats 3]

Every measurement runs in its own process (this script with --worker), the implementations
taking turns round-robin, so that a slow spell of a shared machine does not land on one of
them; the table shows each cell's median over rounds and ratios of medians from the same run.
train: one step (forward, loss, backward, optimizer) on a Zipf(1.1) batch; "-sparse" puts the
embedding under SparseAdam (fastlm: fit(..., sparse_embedding=True)'s step; torch:
Embedding(sparse=True) + torch.optim.SparseAdam), the rest under Adam; "fastlm-dense" hands
Adam the embedding's dense V x E gradient instead of fit's row form (the same bits, slower). infer: teacher-forced
forward and loss. generate: 100 tokens, batch 1 (torch: log_prob of every cluster, then
multinomial). Peak RSS: ru_maxrss of the worker (imports, model and optimizer included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

from harness import run_json  # bench/harness.py

CELLS = [  # (impl, kind, configs)
    ("fastlm", "train", "WX"),
    ("fastlm-dense", "train", "W"),  # the embedding's dense V x E gradient (the row form's saving)
    ("fastlm-sparse", "train", "WX"),
    ("torch", "train", "WX"),
    ("torch-sparse", "train", "WX"),
    ("fastlm-full", "train", "W"),
    ("torch-full", "train", "W"),
    ("fastlm", "infer", "WX"),
    ("torch", "infer", "WX"),
    ("fastlm", "generate", "WX"),
    ("torch", "generate", "WX"),
]


def worker(impl, kind, name, threads, repeats):
    if impl.startswith("torch"):
        import torch  # noqa: F401  (before fastlm: its OpenMP keeps its own settings)
    import fastlm
    import workloads  # bench/workloads.py: inference and generation
    from fastlm import benchmark as bm

    fastlm.set_num_threads(threads)
    c = bm.CONFIGS[name]
    if impl.endswith("-full"):
        c = c._replace(cutoffs=None)
    sparse = impl.endswith("-sparse")
    if impl.startswith("torch"):
        make = {
            "train": lambda: bm.torch_train_step(c, threads, sparse_embedding=sparse),
            "infer": lambda: workloads.torch_inference_step(c, threads),
            "generate": lambda: workloads.torch_generation(c, threads, 100),
        }[kind]
    else:
        make = {
            "train": lambda: bm.fastlm_train_step(c, "cpp", sparse, embedding_rows=impl != "fastlm-dense"),
            "infer": lambda: workloads.fastlm_inference_step(c, "cpp"),
            "generate": lambda: workloads.fastlm_generation(c, "cpp", 100),
        }[kind]
    fn = make()
    seconds = bm.median_seconds(fn, repeats)
    tokens = 100 if kind == "generate" else c.batch * c.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(rate=tokens / seconds, peak_rss_mib=peak)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=3)
    parser.add_argument("--configs", nargs="+", default=["W", "X"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, args.threads, args.repeats)
    from fastlm._environment import child_environment

    results = {}
    for r in range(args.rounds):
        cells = [(impl, kind, name) for impl, kind, names in CELLS for name in args.configs if name in names]
        cells = cells[r % len(cells) :] + cells[: r % len(cells)]
        for impl, kind, name in cells:
            command = [sys.executable, os.path.abspath(__file__), "--worker", impl, kind, name]
            command += ["--threads", args.threads, "--repeats", args.repeats]
            try:
                result = run_json(command, env=child_environment(args.threads), what=f"{impl} {kind} {name}")
            except RuntimeError as error:
                print(error, file=sys.stderr)  # the other cells go on
                continue
            results.setdefault((impl, kind, name), []).append(result)
            print(time.strftime("%H:%M:%S"), impl, kind, name, results[(impl, kind, name)][-1], flush=True)
    print(f"\n{'config':6} {'kind':8} {'impl':14} {'tokens/s':>10} {'peak RSS MiB':>12}")
    for (impl, kind, name), runs in sorted(results.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        print(
            f"{name:6} {kind:8} {impl:14} {statistics.median(r['rate'] for r in runs):10,.0f} "
            f"{statistics.median(r['peak_rss_mib'] for r in runs):12,.0f}"
        )


if __name__ == "__main__":
    main()
