"""What fit(ids, stride=1) costs against the default stride=None: one epoch each, on the
first CHARS characters of tinyshakespeare at char level, each side in a process of its own,
alternating. Prints windows, target tokens and seconds per epoch, and the ratios.

    python bench/stride_cost.py [--chars 20000] [--seq-len 50] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from harness import run_json  # bench/harness.py

CHILD = r"""
import json, sys, time
import fastlm
chars, seq_len, stride, threads = json.loads(sys.argv[1])
fastlm.set_num_threads(threads)
text = fastlm.datasets.tinyshakespeare()[:chars]
tok = fastlm.Tokenizer.fit(text, level="char")
ids = tok.encode(text)
model = fastlm.LSTMLM(len(tok), embed_dim=32, hidden_size=128, num_layers=1, seed=0)
started = time.perf_counter()
history = model.fit(ids, seq_len=seq_len, batch_size=32, epochs=1, stride=stride, progress=False)
seconds = time.perf_counter() - started
step = seq_len if stride is None else stride
windows = (len(ids) - seq_len - 1) // step + 1
print(json.dumps({"seconds": seconds, "windows": windows, "targets": windows * seq_len,
                  "loss": history["loss"][0]}))
"""


def run(chars, seq_len, stride, threads):
    return run_json([sys.executable, "-c", CHILD, json.dumps([chars, seq_len, stride, threads])])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=20000)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    results = {None: [], 1: []}
    for _ in range(args.rounds):
        for stride in (None, 1):
            results[stride].append(run(args.chars, args.seq_len, stride, args.threads))
    for stride, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        r = runs[0]
        print(
            f"stride={stride!s:5} windows {r['windows']:7,} target tokens {r['targets']:9,} "
            f"epoch {seconds:7.2f} s (median of {len(runs)}), loss after the epoch {r['loss']:.3f}"
        )
    base, every = (statistics.median(r["seconds"] for r in results[s]) for s in (None, 1))
    print(
        f"stride=1 / stride=None: {results[1][0]['windows'] / results[None][0]['windows']:.1f}x the windows, "
        f"{every / base:.1f}x the epoch time"
    )


if __name__ == "__main__":
    main()
