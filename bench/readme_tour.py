"""Run README.md's Quick tour as a reader does: its first Python block, as it stands, in a fresh
process and an empty temporary directory, with the progress bar off (the figures are the same with
it on). Prints the wall and processor time, the validation perplexity after every epoch and what
the block prints, so that the figures the README states can be checked (and, on a quiet machine,
its time taken).

    python bench/readme_tour.py [--threads N]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

# Prints the epochs' validation perplexities too (the README leaves the history unprinted).
EPILOGUE = """
print("val perplexity by epoch:", ", ".join(f"{p:,.1f}" for p in history["val_perplexity"]))
"""


def tour_block():
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quick tour\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="fastlm threads (default: all cores)")
    args = parser.parse_args()
    code = tour_block().replace("val_ids=ids[split:]", "val_ids=ids[split:], progress=False") + EPILOGUE
    prologue = "" if args.threads is None else f"import fastlm\nfastlm.set_num_threads({args.threads})\n"
    with tempfile.TemporaryDirectory() as directory:
        started, before = time.perf_counter(), os.times()
        result = subprocess.run([sys.executable, "-c", prologue + code], cwd=directory, text=True)
        after = os.times()
    wall = time.perf_counter() - started
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    load = os.getloadavg()[0]
    print(f"wall {wall:.1f} s, processor {cpu:.1f} s ({os.cpu_count()} CPUs, load average {load:.2f})")
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
