"""Speed of fastlm builds against each other, alternating in one run: by default the
portable build (kernels per instruction set, the best chosen at import) against a
-march=native build, training and generation tokens/s on configurations A-D.

    python bench/isa_builds.py NAME=DIR[:ISA] NAME=DIR[:ISA] ... [--configs A B C D]
                               [--kinds train generate] [--rounds 5] [--threads 2]

Each DIR holds an importable fastlm (a directory with fastlm/ in it: an unpacked wheel,
or python/ plus the built _core module); ISA, when given, is set as FASTLM_ISA for that
build's workers. Every measurement is bench/compare.py's fastlm-cpp worker in its own
process with PYTHONPATH=DIR, and the builds take turns in an order rotating every round,
so that the machine's slow spells do not land on one of them. Printed per configuration
and kind: each build's median tokens/s over the rounds, its ratio to the first build's,
and the median of the ratios within each round ("paired": the two ran seconds apart).

Run it with an interpreter in which fastlm is not installed (an editable install would
take the import over); each build's import path is checked before the first round.
Building the two usual builds from a checkout:

    pip wheel --no-deps -w /tmp/portable .          # and unzip it into a directory
    pip wheel --no-deps -w /tmp/native . -C cmake.define.FASTLM_NATIVE=ON
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from harness import run_json  # bench/harness.py

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_build(spec):
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR[:ISA], got {spec!r}")
    directory, _, isa = rest.partition(":")
    if not os.path.isdir(os.path.join(directory, "fastlm")):
        raise argparse.ArgumentTypeError(f"{directory!r} holds no fastlm package directory")
    return name, os.path.abspath(directory), isa


def environment(directory, isa, threads):
    env = dict(os.environ, PYTHONPATH=directory, OMP_NUM_THREADS=str(threads))
    env.pop("FASTLM_ISA", None)
    if isa:
        env["FASTLM_ISA"] = isa
    return env


def describe(name, directory, isa, threads):
    code = "import fastlm, json; print(json.dumps([fastlm.__file__, fastlm.build_info()]))"
    path, info = run_json([sys.executable, "-c", code], env=environment(directory, isa, threads))
    if not os.path.abspath(path).startswith(directory + os.sep):
        sys.exit(f"build {name}: fastlm was imported from {path}, not from {directory} (is fastlm installed?)")
    return info


def measure(directory, isa, kind, config, args):
    command = [
        sys.executable,
        os.path.join(HERE, "compare.py"),
        "--worker",
        "fastlm-cpp",
        kind,
        config,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--tokens",
        str(args.tokens),
    ]
    env = environment(directory, isa, args.threads)
    answer = run_json(command, env=env, timeout=1800, what=f"worker {kind} {config}")
    return answer["tokens"] / answer["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", type=parse_build, metavar="NAME=DIR[:ISA]")
    parser.add_argument("--configs", nargs="+", default=["A", "B", "C", "D"], choices=["A", "B", "C", "D"])
    parser.add_argument("--kinds", nargs="+", default=["train", "generate"], choices=["train", "infer", "generate"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per worker (its median counts)")
    parser.add_argument("--tokens", type=int, default=500, help="generated tokens per call")
    args = parser.parse_args()
    if len(args.builds) < 2:
        parser.error("give at least two builds")
    for name, directory, isa in args.builds:
        info = describe(name, directory, isa, args.threads)
        print(f"{name}: {directory} isa={info.get('isa', info.get('simd'))} build={info.get('isa_build', 'native')}")
    names = [b[0] for b in args.builds]
    for config in args.configs:
        for kind in args.kinds:
            speeds = {name: [] for name in names}
            for r in range(args.rounds):
                order = args.builds[r % len(args.builds) :] + args.builds[: r % len(args.builds)]
                for name, directory, isa in order:
                    speeds[name].append(measure(directory, isa, kind, config, args))
            first = names[0]
            cells = []
            for name in names:
                median = statistics.median(speeds[name])
                ratio = median / statistics.median(speeds[first])
                paired = statistics.median(s / f for s, f in zip(speeds[name], speeds[first]))
                versus = "" if name == first else f" ({ratio:.3f}x, paired {paired:.3f}x)"
                cells.append(f"{name} {median:,.0f}{versus}")
            print(f"{config} {kind:8s} tokens/s: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
