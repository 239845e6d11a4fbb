"""fastlm against ONNX Runtime on the same model: accuracy of the exported graph and inference speed.

    python bench/onnx_speed.py [--configs A B C D] [--rounds 3] [--threads 2] [--repeats 5]
                               [--markdown FILE]

For each configuration (V, E, H, L, T, B) of fastlm.benchmark, the driver builds the
model fastlm's benchmarks use (seed 0), exports it with model.to_onnx and draws one (B, T)
batch of ids; every worker (this script with --worker) reads the same files.

  difference  largest |ONNX Runtime - fastlm| of the natural-log probabilities: of every
              scored token (fastlm: model.log_probs, each row from a zero state), of the whole
              distribution after each row (fastlm: next_token_probs), and of the final state
              hn, cn (fastlm: forward's final state). One worker per configuration, untimed.
  inference   tokens/s of a teacher-forced forward of the batch from a zero state: fastlm's
              model.forward (the loss and arg-max predictions, as bench/compare.py's
              inference), ONNX Runtime's session.run of the exported graph (log_probs (B, T, V),
              hn, cn) with its default CPU provider, intra_op_num_threads = --threads and
              inter_op_num_threads 1. fastlm runs with fastlm.set_num_threads(--threads).

Every timed measurement runs in its own process and the two take turns, the order swapping
every round, so that a slow spell of a shared machine does not land on one of them. Figures
are medians over rounds of each worker's median time; "paired" is the median over rounds of
fastlm / ONNX Runtime within a round (measured seconds apart). The ONNX Runtime workers
import neither fastlm nor torch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import machine_description, run_json, timed  # bench/harness.py

IMPLS = ("fastlm", "onnxruntime")


# ------------------------------------------------------------ workers: one measurement, one process


def fastlm_worker(name, files, threads, repeats):
    import numpy as np

    import fastlm
    from fastlm import benchmark as bm

    fastlm.set_num_threads(threads)
    model = bm.fastlm_model(bm.CONFIGS[name], "cpp")
    batch = np.load(files / f"{name}.npz")
    x, y = model.check_batch(batch["x"], batch["y"])
    return dict(times=timed(lambda: model.forward(x, y), repeats), threads=fastlm.get_num_threads())


def session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime_worker(name, files, threads, repeats):
    import numpy as np
    import onnxruntime as ort

    run = session(files / f"{name}.onnx", threads)
    x = np.load(files / f"{name}.npz")["x"].astype(np.int64)
    L, H = (int(v) for v in np.load(files / f"{name}.npz")["state_shape"])
    zeros = np.zeros((L, x.shape[0], H), np.float32)
    feeds = {"ids": x, "h0": zeros, "c0": zeros}
    return dict(times=timed(lambda: run.run(None, feeds), repeats), onnxruntime=ort.__version__)


def difference_worker(name, files, threads):
    """Largest differences between ONNX Runtime's outputs and fastlm's on the batch."""
    import numpy as np

    import fastlm
    from fastlm import benchmark as bm

    fastlm.set_num_threads(threads)
    model = bm.fastlm_model(bm.CONFIGS[name], "cpp")
    batch = np.load(files / f"{name}.npz")
    x, y = model.check_batch(batch["x"], batch["y"])
    zeros = np.zeros((model.num_layers, x.shape[0], model.hidden_size), np.float32)
    log_probs, hn, cn = session(files / f"{name}.onnx", threads).run(
        None, {"ids": x.astype(np.int64), "h0": zeros, "c0": zeros}
    )
    scored = model.log_probs(list(x))  # token t + 1 of each row given tokens 0..t
    onnx_scored = np.take_along_axis(log_probs[:, :-1], x[:, 1:, None], axis=2)[..., 0]
    tokens = float(np.max(np.abs(np.stack(scored) - onnx_scored)))
    rows = range(0, len(x), max(1, len(x) // 4))  # a few rows' whole distributions
    distributions = max(float(np.max(np.abs(np.log(model.next_token_probs(x[b])) - log_probs[b, -1]))) for b in rows)
    _, _, state = model.forward(x, y)
    h, c = np.stack([s[0] for s in state]), np.stack([s[1] for s in state])
    states = float(max(np.max(np.abs(hn - h)), np.max(np.abs(cn - c))))
    return dict(tokens=tokens, distributions=distributions, states=states, scored=int(onnx_scored.size))


# ------------------------------------------------------------ driver


def run_worker(impl, name, files, args):
    from fastlm._environment import child_environment

    command = [sys.executable, os.path.abspath(__file__), "--worker", impl, name, str(files)]
    command += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    # The user's environment without fastlm's GOMP_SPINCOUNT (fastlm's workers set it again on import).
    env = child_environment(args.threads)
    return run_json(command, env=env, timeout=args.timeout, what=f"worker {impl} {name}")


def prepare(names, files):
    """Export each configuration's model and write its batch (x, y) for the workers."""
    import numpy as np

    from fastlm import benchmark as bm

    for name in names:
        c = bm.CONFIGS[name]
        model = bm.fastlm_model(c, "cpp")
        model.to_onnx(files / f"{name}.onnx")
        x, y = bm.random_batch(c)
        np.savez(files / f"{name}.npz", x=x, y=y, state_shape=np.array([c.layers, c.hidden]))


def report(args, results, differences):
    from fastlm.benchmark import CONFIGS, shape

    lines = [
        "| config (V, E, H, L, T, B) | max abs diff: tokens / distributions / hn, cn | "
        "fastlm tokens/s | ONNX Runtime tokens/s | fastlm / ORT | paired |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in args.configs:
        c = CONFIGS[name]
        per_call = c.batch * c.steps
        rates = {impl: [per_call / statistics.median(r["times"]) for r in results[(name, impl)]] for impl in IMPLS}
        medians = {impl: statistics.median(rates[impl]) for impl in IMPLS}
        paired = statistics.median(a / b for a, b in zip(rates["fastlm"], rates["onnxruntime"]))
        d = differences[name]
        lines.append(
            f"| {name} {shape(c)} | {d['tokens']:.1e} / {d['distributions']:.1e} / {d['states']:.1e} | "
            f"{medians['fastlm']:,.0f} | {medians['onnxruntime']:,.0f} | "
            f"**{medians['fastlm'] / medians['onnxruntime']:.2f}x** | {paired:.2f}x |"
        )
    lines += [
        "",
        "tokens/s: B x T per call, median over rounds of each worker's median of "
        f"{args.repeats} timed calls after a warm-up. Differences: natural-log probabilities of the "
        "B x (T - 1) scored tokens, of the whole distribution after a few rows, and the final states.",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[4:]),
    )
    parser.add_argument("--configs", nargs="+", default=["A", "B", "C", "D"], choices=["A", "B", "C", "D"])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per worker after a warm-up (default 5)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per worker (default 1800)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as markdown, with the header")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "CONFIG", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    for option in ("rounds", "threads", "repeats"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    if args.worker:
        impl, name, files = args.worker
        files = Path(files)
        if impl == "difference":
            result = difference_worker(name, files, args.threads)
        else:
            worker = {"fastlm": fastlm_worker, "onnxruntime": onnxruntime_worker}[impl]
            result = worker(name, files, args.threads, args.repeats)
        print(json.dumps(result))
        return 0

    import fastlm
    from fastlm.benchmark import CONFIGS

    ort_version = subprocess.run(
        [sys.executable, "-c", "import onnxruntime; print(onnxruntime.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    header = [
        "command: `python bench/onnx_speed.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`",
        f"date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"machine: {machine_description()}; load average at start {os.getloadavg()[0]:.2f}",
        f"fastlm {fastlm.__version__} ({fastlm.build_info()['isa']}), onnxruntime {ort_version} "
        f"(CPUExecutionProvider), Python {platform.python_version()}",
        f"threads: {args.threads} for both (ONNX Runtime intra-op; inter-op 1); {args.rounds} rounds, the "
        "two alternating in swapping order, each measurement in its own process",
    ]
    print("\n".join(header), flush=True)
    results, differences = {}, {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fastlm-onnx-speed-") as directory:
        files = Path(directory)
        prepare(args.configs, files)
        for name in args.configs:
            differences[name] = d = run_worker("difference", name, files, args)
            print(
                f"  {name} max |diff|: scored tokens {d['tokens']:.2e}, distributions {d['distributions']:.2e}, "
                f"states {d['states']:.2e}",
                flush=True,
            )
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds}", flush=True)
            for name in args.configs:
                order = IMPLS if round_index % 2 == 0 else IMPLS[::-1]
                for impl in order:
                    r = run_worker(impl, name, files, args)
                    results.setdefault((name, impl), []).append(r)
                    per_call = CONFIGS[name].batch * CONFIGS[name].steps
                    print(
                        f"  {name} {impl:12} {per_call / statistics.median(r['times']):11,.0f} tokens/s"
                        f"   ({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
    table = report(args, results, differences)
    print()
    print(table)
    if args.markdown:
        bullets = "".join(f"- {line}\n" for line in header)
        Path(args.markdown).write_text(f"# fastlm vs ONNX Runtime (bench/onnx_speed.py)\n\n{bullets}\n{table}\n")
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
