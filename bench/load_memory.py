"""Peak resident memory of fastlm.load on a large model, against the model's own size.

    python bench/load_memory.py [--vocab 250000] [--dim 512] [--layers 1] [--dir DIR] [--before]

Saves LSTMLM(V, E=H=dim, L) once (in a process of its own), then loads it in a fresh
process and reports that process's peak resident set (VmHWM) just before and after
fastlm.load, with the parameters' size: a load that builds a randomly initialised model
and then copies the weights read into it peaks at about three models; one that reads the
weights straight into the model's arrays at about one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import run_json  # bench/harness.py

SAVE = """
import sys, fastlm
V, D, L, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fastlm.LSTMLM(V, D, D, L, seed=0).save(path)
"""

LOAD = """
import json, sys, time
from pathlib import Path
import fastlm

def status_mib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

def load_as_before(directory):
    # fastlm.load as it was before it read the weights into the model's arrays: a randomly
    # initialised model, safetensors' arrays, and load_state_dict's copies of them.
    from fastlm import model_dir
    config = model_dir.read_config(directory)
    model = fastlm.LSTMLM(**config["model"])
    files = model_dir.save_path(directory, config)
    tensors = model_dir._read_tensors(files / model_dir.MODEL_FILE, model.parameter_shapes(), config["save_id"])
    model.load_state_dict(tensors)
    return model

before = status_mib("VmHWM")
started = time.perf_counter()
model = load_as_before(sys.argv[1]) if sys.argv[2] == "before" else fastlm.load(sys.argv[1])
seconds = time.perf_counter() - started
params = sum(p.nbytes for p in model.trainable().values()) / 2**20
print(json.dumps({"before": before, "peak": status_mib("VmHWM"), "rss": status_mib("VmRSS"),
                  "params": params, "seconds": seconds}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=250_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--dir", help="where to save the model (default: a temporary directory)")
    parser.add_argument("--before", action="store_true", help="also load it the way fastlm.load did before")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.dir or tmp) / "model"
        if not (path / "config.json").exists():
            subprocess.run(
                [sys.executable, "-c", SAVE, str(args.vocab), str(args.dim), str(args.layers), str(path)], check=True
            )
        results = {}
        for way in ("before", "load") if args.before else ("load",):
            results[way] = run_json([sys.executable, "-c", LOAD, path, way])
    print(f"V={args.vocab} E=H={args.dim} L={args.layers}")
    for way, r in results.items():
        label = "fastlm.load" if way == "load" else "load as before"
        print(
            f"  {label}: parameters {r['params']:,.0f} MiB; peak RSS {r['before']:,.0f} MiB before (interpreter "
            f"and fastlm), {r['peak']:,.0f} MiB after: +{r['peak'] - r['before']:,.0f} MiB at the peak "
            f"({(r['peak'] - r['before']) / r['params']:.2f} x the parameters); RSS after {r['rss']:,.0f} MiB; "
            f"{r['seconds']:.2f} s"
        )


if __name__ == "__main__":
    main()
