"""Fit and encode a ~100 MB text file with Tokenizer.fit_file / encode_file: seconds and peak RSS.

    python bench/tokenize_large.py [CORPUS] [--mb 100] [--levels word char] [--lowercase]
                                   [--split-punctuation] [--chunk-size BYTES]

Builds the file in a temporary directory from CORPUS repeated (default: the shared
tinyshakespeare.txt beside the repository), then runs each level in its own subprocess so
that each peak RSS (getrusage ru_maxrss) is that level's alone. The int32 ids are part of
the peak and unavoidable -- 4 bytes per token, so ~400 MB for 100 MB of text at char
level -- so the overhead beyond the interpreter baseline and the output array is printed too.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from harness import run_json  # bench/harness.py

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt"
MIB = 2**20


def peak_rss_mib():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def build_file(corpus, path, megabytes):
    """Write corpus repeated until the file holds at least megabytes MiB; returns its size in bytes."""
    block = Path(corpus).read_bytes()
    if not block.endswith(b"\n"):
        block += b"\n"
    size = 0
    with open(path, "wb") as f:
        while size < megabytes * MIB:
            f.write(block)
            size += len(block)
    return size


def child(level, path, lowercase, split_punctuation, chunk_size):
    """One level in this process: fit, encode, report as one JSON line."""
    from fastlm.tokenizer import Tokenizer

    options = dict(level=level, lowercase=lowercase)
    if level == "word":
        options["split_punctuation"] = split_punctuation
    baseline = peak_rss_mib()
    start = time.perf_counter()
    tok = Tokenizer.fit_file(path, chunk_size=chunk_size, **options)
    fit_seconds = time.perf_counter() - start
    fit_peak = peak_rss_mib()
    start = time.perf_counter()
    ids = tok.encode_file(path, chunk_size=chunk_size)
    encode_seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    print(
        json.dumps(
            dict(
                level=level,
                vocab=len(tok),
                tokens=int(ids.size),
                output_mib=ids.nbytes / MIB,
                unknown=int((ids == tok.unk_id).sum()),
                fit_seconds=fit_seconds,
                encode_seconds=encode_seconds,
                baseline_mib=baseline,
                fit_peak_mib=fit_peak,
                peak_mib=peak,
            )
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default=str(DEFAULT_CORPUS))
    parser.add_argument("--mb", type=float, default=100, help="size of the test file in MiB (default 100)")
    parser.add_argument("--levels", nargs="+", default=["word", "char"], choices=["word", "char"])
    parser.add_argument("--lowercase", action="store_true")
    parser.add_argument("--split-punctuation", action="store_true", help="word level only")
    parser.add_argument("--chunk-size", type=int, default=1 << 20, help="bytes read per step (default 1 MiB)")
    parser.add_argument("--child", nargs=2, metavar=("LEVEL", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.lowercase, args.split_punctuation, args.chunk_size)
        return
    if not Path(args.corpus).is_file():
        parser.error(f"corpus not found: {args.corpus}")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "large.txt")
        size = build_file(args.corpus, path, args.mb)
        print(
            f"file: {size / MIB:.1f} MiB ({args.corpus} repeated), chunk size {args.chunk_size} bytes, "
            f"lowercase={args.lowercase}, split_punctuation={args.split_punctuation}"
        )
        print(
            f"{'level':5} {'vocab':>6} {'tokens':>11} {'fit s':>6} {'encode s':>8} {'MB/s':>6} "
            f"{'base':>5} {'fit peak':>8} {'peak':>6} {'ids':>6} {'overhead':>8}   (memory in MiB)"
        )
        for level in args.levels:
            command = [sys.executable, __file__, "--child", level, path, "--chunk-size", str(args.chunk_size)]
            command += ["--lowercase"] * args.lowercase + ["--split-punctuation"] * args.split_punctuation
            r = run_json(command)
            rate = size / 1e6 / (r["fit_seconds"] + r["encode_seconds"])
            overhead = r["peak_mib"] - r["baseline_mib"] - r["output_mib"]
            print(
                f"{level:5} {r['vocab']:6d} {r['tokens']:11d} {r['fit_seconds']:6.2f} {r['encode_seconds']:8.2f} "
                f"{rate:6.1f} {r['baseline_mib']:5.0f} {r['fit_peak_mib']:8.0f} {r['peak_mib']:6.0f} "
                f"{r['output_mib']:6.0f} {overhead:8.0f}"
            )
        print(
            "base: RSS after importing fastlm; fit peak: peak RSS after fit_file; peak: after encode_file; "
            "overhead = peak - base - ids"
        )


if __name__ == "__main__":
    main()
