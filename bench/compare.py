"""Training, inference and generation speed and training peak RSS: fastlm C++ vs NumPy reference vs PyTorch.

    python bench/compare.py [--configs A B C D] [--rounds 3] [--threads 2] [--repeats 5]
                            [--no-torch] [--skip-numpy] [--markdown bench/RESULTS.md]

For each configuration (V, E, H, L, T, B) and each implementation -- fastlm's C++ core
(fastlm-cpp), fastlm's NumPy reference (numpy-reference) and PyTorch (torch, when
importable) -- every measurement runs in its own subprocess (this script with --worker,
answering one JSON line), and the implementations take turns round-robin, the order
rotating every round, so that a slow spell of the machine does not land on one of them.
The figures are medians over the rounds of each worker's median time. "fastlm / torch"
divides those medians; "paired" is the median over rounds of the same division within
one round, where the two ran seconds apart: a shared machine's speed drifts over minutes
(its FMA peak included), and a paired ratio cancels a slow spell that lands on
one implementation's round.

  training    tokens/s of one step: forward, loss, backward, Adam on a random (B, T) batch
  inference   tokens/s of a teacher-forced forward and loss (no backward; torch under no_grad)
  generation  tokens/s sampling batch 1 after a one-token prompt (500 tokens; the NumPy
              reference loops in Python per token, so it samples fewer, --numpy-tokens)
  peak RSS    ru_maxrss of the training worker after its steps (interpreter, imports and
              model included; "base" is ru_maxrss after the imports, before the model)

GFLOP/s use the issue's count: training 3 x (sum over layers 2*4H(E_in + H) + 2HV) per
token, inference and generation a third of that. "% peak" divides by the float32 FMA peak
measured in the same run, every round (the best round counts): fastlm's FMA loop in
registers with the SIMD width of the build (fastlm._core.fma_peak_gflops). A large NumPy
SGEMM (in a subprocess with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from its
environment) and torch.matmul are printed as references. Batch-1 generation is bound by
memory traffic, not FMAs, so it also shows the float32 weights read per second.

The numpy-reference workers keep the environment as it is, including OPENBLAS_CORETYPE
when set: that is how a user's NumPy runs on this machine. Threads: fastlm.set_num_threads(n),
torch.set_num_threads(n), and OMP/OPENBLAS/MKL_NUM_THREADS=n in every worker's environment.
PyTorch's generation loop uses its default oneDNN LSTM; --torch-generation-onednn off
disables it (faster one step at a time with larger H). PyTorch's workers import torch
before fastlm, so that its OpenMP runtime keeps its own defaults rather than the bounded
barrier spin fastlm sets for itself (GOMP_SPINCOUNT, see the README).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

from harness import machine_description, run_json, timed  # bench/harness.py

IMPLS = ("fastlm-cpp", "numpy-reference", "torch")
KINDS = ("train", "infer", "generate")
KIND_TITLES = {
    "train": "training (forward + loss + backward + Adam)",
    "infer": "inference (teacher-forced forward + loss)",
    "generate": "generation (batch 1, sampling)",
}
MIB = 2**20


def max_rss_mib():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


# ------------------------------------------------------------ worker: one measurement, one process


def worker(impl, kind, name, threads, repeats, tokens, torch_onednn=True):
    if impl == "torch":
        # PyTorch's OpenMP runtime starts before fastlm is imported, so it keeps its own
        # barrier spin, as in a user's process without fastlm (worker_env leaves fastlm's
        # GOMP_SPINCOUNT out). Imported first, fastlm would give it fastlm's
        # GOMP_SPINCOUNT=10000 (the two share one libgomp), which slows PyTorch's training
        # down when the machine is busy (figures in commit 1d101ca).
        import torch  # noqa: F401
    import fastlm
    import workloads
    from fastlm import benchmark as bm

    fastlm.set_num_threads(threads)
    c = bm.CONFIGS[name]
    if impl == "torch":
        make = {
            "train": lambda: bm.torch_train_step(c, threads),
            "infer": lambda: workloads.torch_inference_step(c, threads),
            "generate": lambda: workloads.torch_generation(c, threads, tokens, mkldnn=torch_onednn),
        }[kind]
        import torch

        library = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    else:
        backend = {"fastlm-cpp": "cpp", "numpy-reference": "numpy"}[impl]
        make = {
            "train": lambda: bm.fastlm_train_step(c, backend),
            "infer": lambda: workloads.fastlm_inference_step(c, backend),
            "generate": lambda: workloads.fastlm_generation(c, backend, tokens),
        }[kind]
        library = {"fastlm_threads": fastlm.get_num_threads()}
    base = max_rss_mib()
    times = timed(make(), repeats)
    per_call = tokens if kind == "generate" else c.batch * c.steps
    print(
        json.dumps(
            dict(
                impl=impl,
                kind=kind,
                config=name,
                times=times,
                seconds=statistics.median(times),
                tokens=per_call,
                base_rss_mib=base,
                peak_rss_mib=max_rss_mib(),
                **library,
            )
        )
    )


# ------------------------------------------------------------ driver


def worker_env(threads):
    # Not os.environ: this driver has imported fastlm, whose GOMP_SPINCOUNT every worker
    # would inherit, PyTorch's included (the variable is read when OpenMP starts, so
    # importing torch first does not help). fastlm's workers set it again themselves.
    from fastlm._environment import child_environment

    return child_environment(threads)


def run_worker(impl, kind, name, threads, repeats, tokens, timeout, torch_onednn="on"):
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        impl,
        kind,
        name,
        "--threads",
        str(threads),
        "--repeats",
        str(repeats),
        "--tokens",
        str(tokens),
        "--torch-generation-onednn",
        torch_onednn,
    ]
    return run_json(command, env=worker_env(threads), timeout=timeout, what=f"worker {impl} {kind} {name}")


def rates(results, name, impl, kind):
    """Per-round tokens/s of one cell, or []."""
    return [r["tokens"] / r["seconds"] for r in results.get((name, impl, kind), [])]


def summarise(args, impls, results, peaks, references):
    """Rows for every table: dicts with the cells already computed."""
    from fastlm.benchmark import CONFIGS, training_flops_per_token
    from workloads import generation_flops_per_token, generation_weight_bytes_per_token, inference_flops_per_token

    flops = {
        "train": training_flops_per_token,
        "infer": inference_flops_per_token,
        "generate": generation_flops_per_token,
    }
    peak = max(p["gflops"] for p in peaks)  # a peak: the best round, least disturbed by other processes
    tables = {}
    for kind in KINDS:
        rows = []
        for name in args.configs:
            c = CONFIGS[name]
            medians = {
                impl: statistics.median(rates(results, name, impl, kind))
                for impl in impls
                if rates(results, name, impl, kind)
            }
            for impl in impls:
                if impl not in medians:
                    continue
                per_round = rates(results, name, impl, kind)
                rate = medians[impl]
                gflops = rate * flops[kind](c) / 1e9
                row = dict(
                    config=name,
                    shape=tuple(c)[:6],
                    impl=impl,
                    rate=rate,
                    gflops=gflops,
                    peak_pct=100.0 * gflops / peak,
                    rounds=len(per_round),
                    spread=100.0 * (max(per_round) - min(per_round)) / rate,
                    tokens=results[(name, impl, kind)][0]["tokens"] if kind == "generate" else None,
                    vs_torch=None,
                    vs_torch_paired=None,
                    vs_numpy=None,
                    weights_gbps=rate * generation_weight_bytes_per_token(c) / 1e9 if kind == "generate" else None,
                )
                if impl == "fastlm-cpp":
                    if "torch" in medians:
                        row["vs_torch"] = rate / medians["torch"]
                        row["vs_torch_paired"] = statistics.median(
                            mine / theirs for mine, theirs in zip(per_round, rates(results, name, "torch", kind))
                        )
                    if "numpy-reference" in medians:
                        row["vs_numpy"] = rate / medians["numpy-reference"]
                rows.append(row)
        tables[kind] = rows
    memory = []
    for name in args.configs:
        for impl in impls:
            cell = results.get((name, impl, "train"), [])
            if cell:
                memory.append(
                    dict(
                        config=name,
                        impl=impl,
                        peak=statistics.median(r["peak_rss_mib"] for r in cell),
                        base=statistics.median(r["base_rss_mib"] for r in cell),
                    )
                )
    best_references = {source: max(p["gflops"] for p in runs) for source, runs in references.items()}
    return dict(peak=peak, references=best_references, tables=tables, memory=memory)


def fmt_ratio(value):
    return "" if value is None else f"{value:.2f}x"


def text_report(summary, peaks, header):
    lines = list(header)
    for kind in KINDS:
        lines.append("")
        lines.append(KIND_TITLES[kind])
        lines.append(
            f"  {'cfg':3} {'impl':22} {'tokens/s':>11} {'GFLOP/s':>8} {'% peak':>7} {'spread':>7} "
            f"{'cpp/torch':>9} {'paired':>7} {'cpp/numpy':>9}"
            + (f" {'weights GB/s':>12}" if kind == "generate" else "")
        )
        for row in summary["tables"][kind]:
            impl = row["impl"] + (f" ({row['tokens']} tok)" if row["tokens"] not in (None, 500) else "")
            lines.append(
                f"  {row['config']:3} {impl:22} {row['rate']:11,.0f} {row['gflops']:8.2f} "
                f"{row['peak_pct']:6.1f}% {row['spread']:6.0f}% {fmt_ratio(row['vs_torch']):>9} "
                f"{fmt_ratio(row['vs_torch_paired']):>7} {fmt_ratio(row['vs_numpy']):>9}"
                + (f" {row['weights_gbps']:12.1f}" if kind == "generate" else "")
            )
    lines.append("")
    lines.append("peak RSS of a training worker (MiB; base = after imports, before the model)")
    lines.append(f"  {'cfg':3} {'impl':22} {'peak':>7} {'base':>7} {'peak-base':>9}")
    for row in summary["memory"]:
        lines.append(
            f"  {row['config']:3} {row['impl']:22} {row['peak']:7.0f} {row['base']:7.0f} "
            f"{row['peak'] - row['base']:9.0f}"
        )
    return "\n".join(lines)


def markdown_report(summary, header_items):
    from fastlm.benchmark import CONFIGS

    lines = ["# fastlm benchmark results", ""]
    lines += [f"- {item}" for item in header_items]
    lines += [
        "",
        "Configurations (V, E, H, L, T, B): "
        + ", ".join(f"{n} = {tuple(CONFIGS[n])}" for n in summary["configs"])
        + ".",
        "",
    ]
    for kind in KINDS:
        gen = kind == "generate"
        lines += [
            f"## {KIND_TITLES[kind]}",
            "",
            "| config | implementation | tokens/s | GFLOP/s | % of peak | spread | fastlm / torch | "
            "paired | fastlm / numpy |" + (" weights read (GB/s) |" if gen else ""),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gen else ""),
        ]
        for row in summary["tables"][kind]:
            impl = row["impl"] + (f" ({row['tokens']} tokens)" if row["tokens"] not in (None, 500) else "")
            lines.append(
                f"| {row['config']} | {impl} | {row['rate']:,.0f} | {row['gflops']:.2f} | "
                f"{row['peak_pct']:.1f}% | {row['spread']:.0f}% | {fmt_ratio(row['vs_torch'])} | "
                f"{fmt_ratio(row['vs_torch_paired'])} | {fmt_ratio(row['vs_numpy'])} |"
                + (f" {row['weights_gbps']:.1f} |" if gen else "")
            )
        lines.append("")
    lines += [
        "## peak RSS of a training process",
        "",
        "| config | implementation | peak RSS (MiB) | after imports (MiB) | peak − imports (MiB) |",
        "|---|---|---:|---:|---:|",
    ]
    for row in summary["memory"]:
        lines.append(
            f"| {row['config']} | {row['impl']} | {row['peak']:.0f} | {row['base']:.0f} | "
            f"{row['peak'] - row['base']:.0f} |"
        )
    lines += [
        "",
        "tokens/s: median over rounds of each worker's median time; spread: (max − min) / median of "
        "the per-round figures. fastlm / torch: the ratio of the medians; paired: the median over rounds "
        "of the ratio within a round (measured seconds apart). GFLOP/s by the issue's count (training "
        "3 × (Σ 2·4H(E_in+H) + 2HV) per token; inference and generation 1/3 of it); % of peak against the FMA "
        "peak above. Batch-1 generation is a chain of matrix-vector products, bound by memory traffic "
        "rather than FMAs: weights read = tokens/s × float32 LSTM and decoder weights.",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[5:]),
    )
    parser.add_argument("--configs", nargs="+", default=["A", "B", "C", "D"], choices=["A", "B", "C", "D"])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per measurement (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every implementation (default 2)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed calls per worker after one warm-up (default 5; the NumPy reference uses 1 on config C)",
    )
    parser.add_argument("--tokens", type=int, default=500, help="generated tokens (default 500)")
    parser.add_argument(
        "--numpy-tokens",
        type=int,
        default=50,
        help="generated tokens for the NumPy reference, which loops in Python (default 50)",
    )
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="measurements (default all)")
    parser.add_argument(
        "--torch-generation-onednn",
        choices=["on", "off"],
        default="on",
        help="PyTorch's oneDNN LSTM in the generation loop (default on, torch's default; off "
        "is faster for one step at a time with larger H)",
    )
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when installed")
    parser.add_argument("--skip-numpy", action="store_true", help="leave the NumPy reference out")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per worker (default 1800)")
    parser.add_argument(
        "--markdown",
        metavar="FILE",
        help="also write the tables as markdown, with the command, date, machine and versions",
    )
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "KIND", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    for option in ("rounds", "threads", "repeats", "tokens", "numpy_tokens"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.worker:
        impl, kind, name = args.worker
        worker(impl, kind, name, args.threads, args.repeats, args.tokens, args.torch_generation_onednn == "on")
        return 0

    import numpy

    import fastlm
    from peaks import numpy_sgemm_gflops, peak_fma_gflops, torch_matmul_gflops

    impls = ["fastlm-cpp"]
    if not args.skip_numpy:
        impls.append("numpy-reference")
    torch_version = None
    if not args.no_torch:
        if importlib.util.find_spec("torch") is not None:
            impls.append("torch")
            torch_version = subprocess.run(
                [sys.executable, "-c", "import torch; print(torch.__version__)"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        else:
            print("PyTorch not installed: leaving it out (pip install torch==2.13.0)")
    command = "python bench/compare.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    header = [
        f"command: `{command}`",
        f"date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"machine: {machine_description()}; load average at start {os.getloadavg()[0]:.2f}",
        f"fastlm {fastlm.__version__}, build_info {fastlm.build_info()}",
        f"torch {torch_version or 'not used'}; numpy {numpy.__version__}; Python {platform.python_version()}",
        f"threads: {args.threads} for every implementation; {args.rounds} rounds, implementations alternating "
        f"in rotating order, each measurement in its own process; {args.repeats} timed calls per worker "
        f"after a warm-up (NumPy reference on C: 1)",
        f"generation: {args.tokens} tokens after a one-token prompt, temperature 1; the NumPy reference "
        f"samples {args.numpy_tokens} (it loops over tokens in Python)"
        + (
            ""
            if "torch" not in impls
            else f"; PyTorch's oneDNN LSTM {args.torch_generation_onednn} in its "
            "generation loop (--torch-generation-onednn)"
        ),
        "GNU OpenMP barrier spin: fastlm's workers GOMP_SPINCOUNT="
        + os.environ.get("GOMP_SPINCOUNT", "unset")
        + " (set by fastlm on import unless the user set a "
        "spin policy); PyTorch's workers GOMP_SPINCOUNT="
        + worker_env(args.threads).get("GOMP_SPINCOUNT", "unset (GOMP's default)")
        + ", torch imported before fastlm",
        "OPENBLAS_CORETYPE="
        + (
            f"{coretype} is set and kept for the NumPy reference (as a user's NumPy runs); "
            "the NumPy SGEMM reference runs without it and without OPENBLAS_L2_SIZE"
            if coretype
            else "not set"
        ),
    ]
    print("\n".join(header), flush=True)

    results, peaks, references = {}, [], {}
    started = time.perf_counter()
    for round_index in range(args.rounds):
        peak = peak_fma_gflops(args.threads)
        peaks.append(peak)
        note = f"peak: {peak['source']}: {peak['gflops']:.1f} GFLOP/s"
        for reference in (
            numpy_sgemm_gflops(args.threads),
            torch_matmul_gflops(args.threads) if "torch" in impls else None,
        ):
            if reference is not None:
                references.setdefault(reference["source"], []).append(reference)
                note += f"; {reference['source']}: {reference['gflops']:.1f} GFLOP/s"
        print(f"round {round_index + 1}/{args.rounds} {note}", flush=True)
        for name in args.configs:
            for kind in args.kinds:
                shift = round_index % len(impls)
                for impl in impls[shift:] + impls[:shift]:
                    numpy_ref = impl == "numpy-reference"
                    repeats = 1 if numpy_ref and name == "C" else args.repeats
                    tokens = args.numpy_tokens if numpy_ref else args.tokens
                    r = run_worker(
                        impl, kind, name, args.threads, repeats, tokens, args.timeout, args.torch_generation_onednn
                    )
                    results.setdefault((name, impl, kind), []).append(r)
                    print(
                        f"  {name} {kind:8} {impl:16} {r['tokens'] / r['seconds']:11,.0f} tokens/s"
                        f"   ({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )

    summary = summarise(args, impls, results, peaks, references)
    summary["configs"] = args.configs
    peak_items = [
        f"float32 FMA peak (best of {len(peaks)} rounds): {summary['peak']:.1f} GFLOP/s, "
        f"{peaks[0]['source']} (rounds: " + ", ".join(f"{p['gflops']:.0f}" for p in peaks) + ")"
    ]
    for source, runs in references.items():
        unset = runs[0].get("unset")
        peak_items.append(
            f"reference: {source}"
            + (f" with {', '.join(unset)} unset" if unset else "")
            + f": {summary['references'][source]:.1f} GFLOP/s (best of {len(runs)}), "
            f"{100.0 * summary['references'][source] / summary['peak']:.0f}% of the FMA peak"
        )
    print()
    print(text_report(summary, peaks, peak_items))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_report(summary, header + peak_items))
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
