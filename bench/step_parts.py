"""The zaremba-small training step, part by part: fastlm's and PyTorch's time, GFLOP/s and share of the FMA peak.

    python bench/step_parts.py                      # 2 threads, 3 rounds of each side
    python bench/step_parts.py --threads 1 --rounds 5
    python bench/step_parts.py --old-python /path/to/old-venv/bin/python   # paired: old fastlm build vs this one

The step is fit's (B = 20 streams, T = 20, a 2 x 200 LSTM, V = 10000, SGD, clipping, the
state carried): random ids, since no part's cost depends on them. Each side runs in a
process of its own, the sides alternating round by round (on a machine other jobs load,
each round's pair then saw about the same load; the ratios are the figures to read, the
absolute times only on a quiet machine). Each process measures the FMA peak
(fastlm._core.fma_peak_gflops) before its steps, and reports each part as the median over
the steps of its time per step. The whole step's process CPU time (time.process_time) is
reported too: on a loaded machine, with --threads 1, it is disturbed less than wall time
(with more threads it includes the OpenMP threads' spin waits).

fastlm's parts are its ops as fit calls them (the output layer is one fused op:
bench/gemm_shapes.cpp times its three products and the decoder's packing on their own).
PyTorch's are its autograd step taken apart at the same shapes: the logits addmm, the
cross-entropy's forward and backward on the logits (the row pass), the two products of the
Linear's backward and its bias sum, the LSTM's backward (with the embedding's), the clip
and the optimizer; plus its products at fastlm's chunk shapes (200 rows per chunk).

FLOPs counted: a product of (M x K) and (K x N) is 2 M N K; the output layer's three
products 3 x 2 N H V (N = B T rows); the LSTM's forward 2 x 2 N (E + H) 4H over both
layers, its backward twice that (dx, dh and the two weight gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from harness import machine_description, run_json  # bench/harness.py

B, T, H, V, LAYERS = 20, 20, 200, 10000, 2
N = B * T
CHUNK = 200  # fastlm's output-layer chunk rows at this shape (output_loss.cpp's chunk_rows)

FLOPS = {
    "output layer (fused)": 3 * 2 * N * H * V,
    "logits GEMM (N x H x V)": 2 * N * H * V,
    "row pass (softmax, CE, grad)": 0,
    "dh GEMM (N x V x H)": 2 * N * H * V,
    "dW GEMM (V x N x H)": 2 * N * H * V,
    "bias sum": 0,
    "lstm forward": LAYERS * 2 * N * (H + H) * 4 * H,
    "lstm backward": 2 * LAYERS * 2 * N * (H + H) * 4 * H,
    "embedding forward": 0,
    "embedding backward": 0,
    "clip": 0,
    "sgd": 0,
    "clip + sgd (fused)": 0,
    "clip + sgd (as fit runs them)": 0,
    "step (whole)": 3 * 2 * N * H * V + 3 * LAYERS * 2 * N * (H + H) * 4 * H,
    "step, process CPU time": 3 * 2 * N * H * V + 3 * LAYERS * 2 * N * (H + H) * 4 * H,
    "logits GEMM at chunk (200 x 200 x 10000)": 2 * CHUNK * H * V,
    "dh GEMM at chunk (200 x 10000 x 200)": 2 * CHUNK * H * V,
    "dW GEMM at chunk (10000 x 200 x 200, A^T)": 2 * CHUNK * H * V,
}


def median_ms(samples):
    return 1e3 * statistics.median(samples)


# ---------------------------------------------------------------- fastlm (a process of its own)


def run_fastlm(threads, steps, warmup, unfused=False):
    import numpy as np

    import fastlm
    from fastlm.training import SGD

    fastlm.set_num_threads(threads)
    peak = fastlm._core.fma_peak_gflops()
    preset = fastlm.presets.get("zaremba-small")
    model = fastlm.LSTMLM(V, **preset.model, seed=1)
    rng = np.random.default_rng(0)
    times = {}

    class Timed:
        """model.ops with every call timed (summed per op name within a step)."""

        def __init__(self, ops):
            self._ops = ops

        def __getattr__(self, name):
            op = getattr(self._ops, name)
            if not callable(op):
                return op

            def timed(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return op(*args, **kwargs)
                finally:
                    times[name] = times.get(name, 0.0) + time.perf_counter() - start

            return timed

    model.ops = Timed(model.ops)
    opt = SGD(model.trainable(), lr=preset.fit["lr"])
    names = {
        "output_loss_forward_backward": "output layer (fused)",
        "lstm_forward": "lstm forward",
        "lstm_backward": "lstm backward",
        "embedding_forward": "embedding forward",
        "embedding_backward": "embedding backward",
        "embedding_backward_sparse": "embedding backward",
        "clip_grad_norm": "clip",
        "sgd_update": "sgd",
        "clipped_sgd_update": "clip + sgd (fused)",
    }
    fused = hasattr(opt, "clipped_step") and not unfused  # this build fuses them (fit calls clipped_step)
    # fit's embedding gradient in row form, when this build's SGD takes it (sgd_update_rows)
    rows = fused and hasattr(model.ops, "sgd_update_rows")
    samples = {}
    carry = None
    for step in range(warmup + steps):
        x = rng.integers(0, V, size=(B, T), dtype=np.int32)
        y = rng.integers(0, V, size=(B, T), dtype=np.int32)
        times.clear()
        start, cpu_start = time.perf_counter(), time.process_time()
        loss, grads, carry = model.forward_backward(x, y, initial_state=carry, train=True, sparse_embedding=rows)
        update_start = time.perf_counter()
        if fused:
            opt.clipped_step(model.ops, model.trainable(), grads, preset.fit["clip_norm"])
        else:
            model.ops.clip_grad_norm(list(grads.values()), preset.fit["clip_norm"])
            opt.step(model.ops, model.trainable(), grads)
        end, cpu_end = time.perf_counter(), time.process_time()
        whole, update = end - start, end - update_start
        if step < warmup:
            continue
        samples.setdefault("step (whole)", []).append(whole)
        samples.setdefault("step, process CPU time", []).append(cpu_end - cpu_start)
        samples.setdefault("clip + sgd (as fit runs them)", []).append(update)
        for op, seconds in times.items():
            samples.setdefault(names.get(op, op), []).append(seconds)
    return {"peak": peak, "ms": {part: median_ms(s) for part, s in samples.items()}, "fastlm": fastlm.__file__}


# ---------------------------------------------------------------- PyTorch (a process of its own)


def run_torch(threads, steps, warmup):
    # No fastlm here: importing it sets GOMP_SPINCOUNT for every GNU OpenMP user in the
    # process, PyTorch included (python/fastlm/_environment.py). The peak is the fastlm rounds'.
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(V, H)
    lstm = torch.nn.LSTM(H, H, LAYERS, batch_first=True)
    decoder = torch.nn.Linear(H, V)
    params = [*embedding.parameters(), *lstm.parameters(), *decoder.parameters()]
    for p in params:
        torch.nn.init.uniform_(p, -0.1, 0.1)
    opt = torch.optim.SGD(params, lr=float(T))
    clip = 5.0 / T
    W, b = decoder.weight, decoder.bias
    samples = {}

    def timed(part, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        samples.setdefault(part, []).append(time.perf_counter() - start)
        return result

    def row_pass(leaf, y):
        F.cross_entropy(leaf, y).backward()
        return leaf.grad

    state = None
    for step in range(warmup + steps):
        x = torch.randint(0, V, (B, T))
        y = torch.randint(0, V, (B * T,))
        if step == warmup:
            samples.clear()
        opt.zero_grad(set_to_none=True)
        emb = timed("embedding forward", embedding, x)
        out, state = timed("lstm forward", lstm, emb, state)
        state = tuple(s.detach() for s in state)
        with torch.no_grad():
            h = out.detach().reshape(N, H)
            logits = timed("logits GEMM (N x H x V)", torch.addmm, b, h, W.t())
        dlogits = timed("row pass (softmax, CE, grad)", row_pass, logits.requires_grad_(), y)
        with torch.no_grad():
            dh = timed("dh GEMM (N x V x H)", torch.mm, dlogits, W)
            W.grad = timed("dW GEMM (V x N x H)", torch.mm, dlogits.t(), h)
            b.grad = timed("bias sum", torch.sum, dlogits, 0)
        timed("lstm backward", out.backward, dh.reshape(B, T, H))
        timed("clip", torch.nn.utils.clip_grad_norm_, params, clip)
        timed("sgd", opt.step)
        samples.setdefault("clip + sgd (as fit runs them)", []).append(samples["clip"][-1] + samples["sgd"][-1])
        with torch.no_grad():  # the products at fastlm's chunk shapes
            hc, dc = h[:CHUNK], dlogits[:CHUNK]
            timed("logits GEMM at chunk (200 x 200 x 10000)", torch.mm, hc, W.t())
            timed("dh GEMM at chunk (200 x 10000 x 200)", torch.mm, dc, W)
            timed("dW GEMM at chunk (10000 x 200 x 200, A^T)", torch.mm, dc.t(), hc)
    # The whole step as autograd runs it, for the sum of the parts to be checked against.
    for step in range(warmup + steps):
        x = torch.randint(0, V, (B, T))
        y = torch.randint(0, V, (B * T,))
        start, cpu_start = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        out, state = lstm(embedding(x), state)
        state = tuple(s.detach() for s in state)
        F.cross_entropy(decoder(out.reshape(N, H)), y).backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if step >= warmup:
            samples.setdefault("step (whole)", []).append(time.perf_counter() - start)
            samples.setdefault("step, process CPU time", []).append(time.process_time() - cpu_start)
    return {"peak": None, "ms": {part: median_ms(s) for part, s in samples.items()}, "torch": torch.__version__}


# ---------------------------------------------------------------- the parent


def child(python, side, args):
    side, _, unfused = side.partition(" ")
    command = [python, str(Path(__file__).resolve()), "--side", side, "--threads", str(args.threads)]
    command += ["--unfused"] if unfused else []
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    return run_json(command, env=os.environ.copy(), what=f"step_parts {side}")


def table(columns, rounds):
    """columns: name -> list of per-round results. Prints ms, GFLOP/s and % of peak per part."""
    parts = [p for p in FLOPS if any(p in r["ms"] for rs in rounds.values() for r in rs)]
    head = f"{'part':44s}" + "".join(f" | {c + ' ms':>14s} {'GF/s':>6s} {'%pk':>5s}" for c in columns)
    print(head)
    print("-" * len(head))
    for part in parts:
        line = f"{part:44s}"
        for c in columns:
            values = [r["ms"][part] for r in rounds[c] if part in r["ms"]]
            if not values:
                line += " | " + " " * 27
                continue
            ms = statistics.median(values)
            peak = statistics.median(r["peak"] for r in rounds[c if rounds[c][0]["peak"] else "fastlm"])
            gf = FLOPS[part] / ms / 1e6 if FLOPS[part] else 0.0
            line += f" | {ms:14.2f} {gf:6.1f} {100 * gf / peak:5.1f}" if gf else f" | {ms:14.2f} {'':6s} {'':5s}"
        print(line)
    for c in columns:
        peaks = [r["peak"] for r in rounds[c] if r["peak"]]
        if peaks:
            print(f"{c}: FMA peak per round {', '.join(f'{p:.0f}' for p in peaks)} GFLOP/s")
    print("(PyTorch's % of peak is of the fastlm processes' median peak.)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old-python", help="a Python with another fastlm build: compared with this one's, paired")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--unfused-too", action="store_true", help="also fastlm with clip_grad_norm and sgd_update as separate ops"
    )
    parser.add_argument("--unfused", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=["fastlm", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        if args.side == "fastlm":
            result = run_fastlm(args.threads, args.steps, args.warmup, args.unfused)
        else:
            result = run_torch(args.threads, args.steps, args.warmup)
        print(json.dumps(result))
        return
    sides = {"fastlm": (sys.executable, "fastlm")}
    if args.old_python:
        sides = {"fastlm old": (args.old_python, "fastlm"), **sides}
    if args.unfused_too:
        sides["fastlm unfused"] = (sys.executable, "fastlm unfused")
    if not args.no_torch:
        sides["torch"] = (sys.executable, "torch")
    rounds = {name: [] for name in sides}
    print(f"zaremba-small step: B {B}, T {T}, {LAYERS} x {H}, V {V}; {args.threads} threads, {args.rounds} rounds")
    print(f"machine: {machine_description()}; load average before: {os.getloadavg()[0]:.1f}")
    for _ in range(args.rounds):
        for name, (python, side) in sides.items():
            rounds[name].append(child(python, side, args))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    table(list(sides), rounds)
    if args.old_python:
        ratios = [
            old["ms"]["step (whole)"] / new["ms"]["step (whole)"]
            for old, new in zip(rounds["fastlm old"], rounds["fastlm"])
        ]
        print(f"paired step time old / new per round: {', '.join(f'{r:.3f}' for r in ratios)}")
        ratios = [
            old["ms"]["step, process CPU time"] / new["ms"]["step, process CPU time"]
            for old, new in zip(rounds["fastlm old"], rounds["fastlm"])
        ]
        print(f"paired step CPU time old / new per round: {', '.join(f'{r:.3f}' for r in ratios)}")
    if args.unfused_too:
        pairs = zip(rounds["fastlm unfused"], rounds["fastlm"])
        ratios = [u["ms"]["step (whole)"] / f["ms"]["step (whole)"] for u, f in pairs]
        print(f"paired step time unfused / fused per round: {', '.join(f'{r:.3f}' for r in ratios)}")
        pairs = zip(rounds["fastlm unfused"], rounds["fastlm"])
        ratios = [u["ms"]["step, process CPU time"] / f["ms"]["step, process CPU time"] for u, f in pairs]
        print(f"paired step CPU time unfused / fused per round: {', '.join(f'{r:.3f}' for r in ratios)}")
    if "torch" in rounds:
        ratios = [t["ms"]["step (whole)"] / f["ms"]["step (whole)"] for t, f in zip(rounds["torch"], rounds["fastlm"])]
        print(f"paired step time torch / fastlm per round: {', '.join(f'{r:.3f}' for r in ratios)}")


if __name__ == "__main__":
    main()
