"""What bench/'s scripts share around their measurements: running each in a process of its
own (the child prints its result as JSON on its last line), and the description of the
machine that every figure carries.

Imports nothing of fastlm: importing fastlm sets GOMP_SPINCOUNT for the process and every
process it starts, so a driver that keeps fastlm out of its own process (to hand its
children the user's environment) can use this module and still do so.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def run_json(command, env=None, timeout=None, what=None):
    """Run command (a list; its items are turned into str) and return the JSON value on the
    last line of its output. RuntimeError with the end of its stderr when it fails."""
    command = [str(item) for item in command]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        what = what or " ".join(command[:4])
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def timed(fn, repeats):
    """The seconds of each of repeats calls of fn, after one warm-up call (pages fault in,
    ONNX Runtime prepacks its weights). fastlm.benchmark.median_seconds runs the same loop
    for `fastlm bench`; this one is for workers that import no fastlm (onnx_speed's ONNX
    Runtime side) and for those that keep every time."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def json_records(proc, log, what, prefix=""):
    """The JSON values a running child (a Popen with stdout=PIPE, text=True) prints, one a
    line, as they come (each echoed to the file log after prefix), once it has ended.
    SystemExit naming what when it fails."""
    records = []
    with proc:
        for line in proc.stdout:
            records.append(json.loads(line))
            print(prefix + json.dumps(records[-1]), file=log, flush=True)
    if proc.returncode:
        raise SystemExit(f"the {what} failed (exit {proc.returncode})")
    return records


def call_in_child(script, name, *args, env=None):
    """name(*args) of the bench script at path script (a module of bench/), run in a fresh
    process; args must be Python literals and the result JSON."""
    path = Path(script).resolve()
    code = (
        f"import json, sys; sys.path.insert(0, {str(path.parent)!r}); import {path.stem} as m; "
        f"print(json.dumps(m.{name}(*{args!r})))"
    )
    return run_json([sys.executable, "-c", code], env=env, what=f"{path.stem}.{name}{args!r}")


def machine_description():
    """The CPU (model, family, cores, the SIMD flags fastlm's kernels use), from lscpu."""
    fields = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    model = fields.get("Model name", platform.processor() or platform.machine())
    family = f" (family {fields['CPU family']}, model {fields['Model']})" if "CPU family" in fields else ""
    cores = fields.get("Core(s) per socket"), fields.get("Socket(s)"), fields.get("Thread(s) per core")
    cpus = fields.get("CPU(s)", str(os.cpu_count()))
    text = f"{model}{family}, {cpus} CPUs"
    if all(cores):
        text += f" ({cores[1]} socket x {cores[0]} cores x {cores[2]} threads)"
    flags = fields.get("Flags", "").split()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16") if f in flags]
    if simd:
        text += ", " + " ".join(simd)
    if fields.get("Hypervisor vendor"):
        text += f", virtualised ({fields['Hypervisor vendor']})"
    return text
