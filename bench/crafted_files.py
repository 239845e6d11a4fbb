"""Time and peak memory of loading each crafted model directory of tests/test_crafted_files.py,
each in a child process of its own (so every figure is that case's own peak), with any
Python that has fastlm installed: run it once with an older fastlm's interpreter and once
with this one to see what a fix changed.

    python bench/crafted_files.py [--python PATH] [--timeout S] [--memory-limit-gib G]

A child that outlives --timeout is killed (recorded as such); --memory-limit-gib caps its
address space (RLIMIT_AS), so that a memory bomb ends in MemoryError instead of taking the
machine. Prints a Markdown table: case, seconds, peak RSS above the import, outcome.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests" / "test_crafted_files.py"


def crafted_module():
    spec = importlib.util.spec_from_file_location("crafted_files", TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter whose fastlm loads the files")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a child is killed")
    parser.add_argument("--memory-limit-gib", type=float, default=12.0, help="address-space cap of a child")
    args = parser.parse_args()
    crafted = crafted_module()
    limit = int(args.memory_limit_gib * 2**30)

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    print(
        f"fastlm of {args.python}; timeout {args.timeout:g} s, address space capped at {args.memory_limit_gib:g} GiB\n"
    )
    print("| case | seconds | peak RSS above import (MB) | outcome |\n|---|---:|---:|---|")
    with tempfile.TemporaryDirectory() as root:
        for k, (name, make) in enumerate(crafted.CASES.items()):
            directory = Path(root) / f"case{k:02d}"
            make(directory)
            try:
                done = subprocess.run(
                    [args.python, "-c", crafted.CHILD, str(directory)],
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                    preexec_fn=cap_memory,
                )
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                if lines:
                    import json

                    result = json.loads(lines[0])
                    row = (f"{result['seconds']:.3f}", f"{result['peak_mb_above_import']:.0f}", result["outcome"][:140])
                else:
                    tail = done.stderr.strip().splitlines()[-1:] or [""]
                    row = ("-", "-", f"child died (exit {done.returncode}): {tail[0][:120]}")
            except subprocess.TimeoutExpired:
                row = (f">{args.timeout:g}", "-", "killed at the timeout")
            print(f"| {name} | {row[0]} | {row[1]} | {row[2].replace('|', '/')} |", flush=True)
            for path in sorted(directory.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()


if __name__ == "__main__":
    main()
