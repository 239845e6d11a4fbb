"""Training from a token file through a memory map vs the same ids in memory (issue 17).

Writes (once) a token file of random ids -- 2 GB of uint16 by default, the vocabulary of
config B -- then trains config B (V 10000, E 200, H 200, L 2, T 35, B 20) on it in child
processes, alternating: "memmap" opens the file with fastlm.open_ids, "ram" reads the same
ids into memory first (np.fromfile). Each child reports tokens/s of the training loop and
its peak resident set (ru_maxrss, which counts the mapped file's resident pages too).

tokens/s is differential: the time of fit(max_batches=K) minus that of fit(max_batches=1),
over K - 1 steps, so the per-call setup (the chunked id check over the whole file, the
window order of ~30M windows) is left out of both sides alike; the setup is reported too.

    python bench/memmap_training.py [--file /tmp/fastlm-bench-ids.bin] [--gigabytes 2]
                                    [--steps 300] [--rounds 3] [--threads 2]

--gather times only what differs between the two sides, the batches themselves (window
order, gather, page release), in one process alternating, per batch of config B: on a busy
machine the training steps' noise hides a difference this small.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np

from harness import machine_description, run_json  # bench/harness.py

CONFIG_B = dict(vocab_size=10000, embed_dim=200, hidden_size=200, num_layers=2)
SEQ_LEN, BATCH = 35, 20


def write_file(path, gigabytes):
    import fastlm

    tokens = int(gigabytes * 2**30) // 2
    chunk = 1 << 24
    rng = np.random.default_rng(0)
    chunks = (
        rng.integers(0, CONFIG_B["vocab_size"], min(chunk, tokens - start), dtype=np.uint16)
        for start in range(0, tokens, chunk)
    )
    started = time.perf_counter()
    fastlm.save_ids(path, chunks, CONFIG_B["vocab_size"])
    print(f"wrote {path}: {tokens:,} ids in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def child(mode, path, steps, threads):
    import fastlm

    fastlm.set_num_threads(threads)
    started = time.perf_counter()
    ids = fastlm.open_ids(path)
    if mode == "ram":
        ids = np.fromfile(path, dtype=ids.dtype, offset=64)
    load_seconds = time.perf_counter() - started
    model = fastlm.LSTMLM(**CONFIG_B, seed=1)
    times = {}
    for k in (1, steps):
        started = time.perf_counter()
        model.fit(ids, seq_len=SEQ_LEN, batch_size=BATCH, epochs=1, progress=False, max_batches=k)
        times[k] = time.perf_counter() - started
    tokens_per_s = (steps - 1) * SEQ_LEN * BATCH / (times[steps] - times[1])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            dict(
                mode=mode,
                tokens_per_s=tokens_per_s,
                peak_rss_mib=peak_mib,
                load_s=load_seconds,
                setup_and_one_step_s=times[1],
                tokens=len(ids),
            )
        )
    )


def gather_only(path, batches=2000, rounds=5):
    import fastlm
    from fastlm.batches import WindowBatches

    mapped = fastlm.open_ids(path)
    in_memory = np.fromfile(path, dtype=mapped.dtype, offset=64)
    times = {"memmap": [], "ram": []}
    for round_ in range(rounds):
        for mode, ids in (("memmap", mapped), ("ram", in_memory))[:: 1 if round_ % 2 == 0 else -1]:
            source = WindowBatches(fastlm._core, ids, SEQ_LEN, BATCH, SEQ_LEN, True, 1)
            epoch = source.epoch(round_)
            next(epoch)  # the window order is made once per epoch: not per batch
            started = time.perf_counter()
            for _ in range(batches):
                next(epoch)
            times[mode].append((time.perf_counter() - started) / batches)
    us = {mode: statistics.median(t) * 1e6 for mode, t in times.items()}
    print(
        f"per batch of config B (20 windows of 35): memory map {us['memmap']:.1f} us, in memory {us['ram']:.1f} us "
        f"(medians of {rounds} alternating rounds of {batches} batches); the difference is "
        f"{us['memmap'] - us['ram']:.1f} us per batch, {100 * (us['memmap'] - us['ram']) / 81700:.3f}% of a "
        "config B training step at README's 8,572 tokens/s (81.7 ms)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", default="/tmp/fastlm-bench-ids.bin")
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["memmap", "ram"])
    parser.add_argument("--gather", action="store_true", help="time the batches alone (see above)")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.file, args.steps, args.threads)
    if args.gather:
        return gather_only(args.file)
    if not os.path.exists(args.file) or os.path.getsize(args.file) != 64 + int(args.gigabytes * 2**30) // 2 * 2:
        write_file(args.file, args.gigabytes)
    results = {"memmap": [], "ram": []}
    for round_ in range(args.rounds):
        for mode in ("memmap", "ram") if round_ % 2 == 0 else ("ram", "memmap"):
            command = [sys.executable, __file__, "--child", mode, "--file", args.file, "--steps", args.steps]
            result = run_json(command + ["--threads", args.threads])
            results[mode].append(result)
            print(json.dumps(result), file=sys.stderr)
    print(
        f"CPU: {machine_description()}; {args.threads} threads; file {args.file}, "
        f"{results['memmap'][0]['tokens']:,} uint16 ids "
        f"({os.path.getsize(args.file) / 2**30:.2f} GiB); config B, {args.steps - 1} timed steps per run, "
        f"{args.rounds} alternating rounds, each run in its own process"
    )
    print("| | memory map | in memory (np.fromfile) | memmap / memory |")
    print("|---|---:|---:|---:|")
    med = {m: {k: statistics.median(r[k] for r in results[m]) for k in results[m][0] if k != "mode"} for m in results}
    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(results["memmap"], results["ram"])]
    print(
        f"| training tokens/s (median) | {med['memmap']['tokens_per_s']:,.0f} | {med['ram']['tokens_per_s']:,.0f} | "
        f"{med['memmap']['tokens_per_s'] / med['ram']['tokens_per_s']:.3f} (per round: "
        f"{', '.join(f'{r:.3f}' for r in ratios)}) |"
    )
    print(
        f"| peak RSS, MiB (max) | {max(r['peak_rss_mib'] for r in results['memmap']):,.0f} | "
        f"{max(r['peak_rss_mib'] for r in results['ram']):,.0f} | |"
    )
    print(f"| open/load, s | {med['memmap']['load_s']:.2f} | {med['ram']['load_s']:.2f} | |")
    print(
        f"| fit setup + 1 step, s | {med['memmap']['setup_and_one_step_s']:.2f} | "
        f"{med['ram']['setup_and_one_step_s']:.2f} | |"
    )


if __name__ == "__main__":
    main()
