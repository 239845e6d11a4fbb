"""Peak memory of one LSTMLM.gradients() call with a large vocabulary.

    python bench/peak_memory.py [--backend cpp|numpy]

V=50000, E=256, H=256, B=32, T=100: the full (B*T x V) float32 logits would be 640 MB.
Prints the resident memory before the call and the peak during it (Linux: the peak is
reset through /proc/self/clear_refs just before the call, so set-up does not count).
"""

import argparse
from pathlib import Path

import numpy as np

import fastlm

V, E, H, B, T = 50000, 256, 256, 32, 100


def status_mb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak():
    Path("/proc/self/clear_refs").write_text("5")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpp", choices=["cpp", "numpy"])
    args = parser.parse_args()
    model = fastlm.LSTMLM(V, E, H, 1, backend=args.backend)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    before = status_mb("VmRSS")
    reset_peak()
    loss, grads = model.gradients(x, y)
    peak = status_mb("VmHWM")
    params_mb = sum(p.nbytes for p in model.state_dict().values()) / 2**20
    grads_mb = sum(g.nbytes for g in grads.values()) / 2**20
    logits_mb = B * T * V * 4 / 2**20
    print(f"backend={args.backend} V={V} E={E} H={H} B={B} T={T} loss={loss:.4f}")
    print(
        f"parameters {params_mb:.0f} MiB, gradients returned {grads_mb:.0f} MiB, "
        f"full logits would be {logits_mb:.0f} MiB"
    )
    print(
        f"RSS before the call {before:.0f} MiB, peak during it {peak:.0f} MiB: "
        f"the call needed {peak - before:.0f} MiB beyond the model, gradients included"
    )


if __name__ == "__main__":
    main()
