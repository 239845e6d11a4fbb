"""Crafted model directories: each must fail fast, with a ValueError naming the problem,
without allocating what the file only declares.

The corpus is generated here (small files; the "huge" tensors are sparse holes). Every case
is a flat directory in the format-1 layout (config.json, model.safetensors, tokenizer.json
side by side), which fastlm still loads, so the same corpus measures an older fastlm too
(bench/crafted_files.py). All cases run in one child process that records, after each
load, the time it took (wall-clock and processor time) and how far the process's peak RSS
rose above its level after importing fastlm; the peak only grows, so a bomb in any case
shows in every later one.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

V, E, H = 20, 8, 8
WORDS = " ".join(f"w{i}" for i in range(V - 1))  # V - 1 words + <unk>


def _shapes(vocab=V, embed=E, hidden=H, layers=1):
    shapes = {"embedding.weight": (vocab, embed)}
    for k in range(layers):
        shapes[f"lstm.weight_ih_l{k}"] = (4 * hidden, embed if k == 0 else hidden)
        shapes[f"lstm.weight_hh_l{k}"] = (4 * hidden, hidden)
        shapes[f"lstm.bias_ih_l{k}"] = (4 * hidden,)
        shapes[f"lstm.bias_hh_l{k}"] = (4 * hidden,)
    shapes["decoder.weight"] = (vocab, hidden)
    shapes["decoder.bias"] = (vocab,)
    return shapes


def _tensors(dtype=np.float32, value=None):
    rng = np.random.default_rng(0)
    return {
        name: (rng.standard_normal(shape) * 0.1 if value is None else np.full(shape, value)).astype(dtype)
        for name, shape in _shapes().items()
    }


def _config(save_id="crafted", **model):
    return {
        "format_version": 1,
        "fastlm_version": "0.1.0",
        "save_id": save_id,
        "model": {
            "vocab_size": V,
            "embed_dim": E,
            "hidden_size": H,
            "num_layers": 1,
            "dropout": 0.0,
            "seed": 0,
            **model,
        },
        "tokenizer": {"level": "word", "size": V},
        "has_training_state": False,
    }


def _tokenizer(vocab=None, counts=None):
    vocab = vocab or ["<unk>"] + WORDS.split()
    return {
        "type": "fastlm.Tokenizer",
        "format": 1,
        "level": "word",
        "lowercase": False,
        "split_punctuation": False,
        "min_count": 1,
        "max_vocab": None,
        "unk_token": "<unk>",
        "unk_id": 0,
        "vocab": vocab,
        "counts": counts if counts is not None else [1] * len(vocab),
    }


def _safetensors_bytes(tensors, save_id="crafted", extra_header=None, extra_bytes=0):
    """A safetensors file by hand: 8-byte header length, JSON header, then the data.

    extra_header entries are added to the header as given (their data, extra_bytes long,
    is a hole at the end of the file, written by the caller with truncate)."""
    header, offset, blobs = {"__metadata__": {"save_id": save_id}}, 0, []
    codes = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.float16): "F16"}
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": codes[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    for name, entry in (extra_header or {}).items():
        header[name] = entry(offset) if callable(entry) else entry
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _write(
    directory,
    config=None,
    tensors=None,
    tokenizer=None,
    model_bytes=None,
    hole=0,
    config_text=None,
    tokenizer_text=None,
):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(config_text if config_text is not None else json.dumps(config or _config()))
    with open(directory / "model.safetensors", "wb") as f:
        f.write(model_bytes if model_bytes is not None else _safetensors_bytes(tensors or _tensors()))
        if hole:
            f.truncate(f.tell() + hole)  # a sparse hole: costs no disk, reads as zeros
    (directory / "tokenizer.json").write_text(
        tokenizer_text if tokenizer_text is not None else json.dumps(_tokenizer()), encoding="utf-8"
    )


GIB = 2**30


def _extra_hole_tensor(directory):
    """A valid model plus an unexpected 3 GiB tensor whose data is a sparse hole."""
    n = 3 * GIB // 4
    data = _safetensors_bytes(
        _tensors(),
        extra_header={
            "zzz.extra": lambda offset: {"dtype": "F32", "shape": [n], "data_offsets": [offset, offset + 4 * n]}
        },
    )
    _write(directory, model_bytes=data, hole=4 * n)


def _deep(depth, opener="[", closer="]"):
    return opener * depth + closer * depth


CASES = {
    # sizes in config.json that the weights do not have
    "hidden_size 20000 in config": lambda d: _write(d, config=_config(hidden_size=20000)),
    "num_layers 10**9 in config": lambda d: _write(d, config=_config(num_layers=10**9)),
    "vocab_size 10**9 (embed 1)": lambda d: _write(d, config=_config(vocab_size=10**9, embed_dim=1, hidden_size=1)),
    "num_layers 2**31 in config": lambda d: _write(d, config=_config(num_layers=2**31)),
    # the safetensors header
    "extra 3 GiB sparse-hole tensor": _extra_hole_tensor,
    "header length 2**62": lambda d: _write(d, model_bytes=struct.pack("<Q", 2**62) + b"{}"),
    "header length beyond the file": lambda d: _write(d, model_bytes=struct.pack("<Q", 10**6) + b'{"a": 1}'),
    "declared shape 2**40 x 2**40": lambda d: _write(
        d,
        model_bytes=_safetensors_bytes(
            {k: v for k, v in _tensors().items() if k != "embedding.weight"},
            extra_header={"embedding.weight": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}},
        ),
    ),
    "shape mismatch (V+1, E)": lambda d: _write(
        d, tensors={**_tensors(), "embedding.weight": np.zeros((V + 1, E), np.float32)}
    ),
    "offsets beyond the data": lambda d: _write(
        d,
        model_bytes=_safetensors_bytes(
            {k: v for k, v in _tensors().items() if k != "decoder.bias"},
            extra_header={"decoder.bias": {"dtype": "F32", "shape": [V], "data_offsets": [10**9, 10**9 + 4 * V]}},
        ),
    ),
    "header nested 20,000 deep": lambda d: _write(d, model_bytes=struct.pack("<Q", 40000) + _deep(20000).encode()),
    # extreme floats
    "float64 weights of 1e39": lambda d: _write(d, tensors=_tensors(dtype=np.float64, value=1e39)),
    "NaN weights": lambda d: _write(d, tensors=_tensors(value=np.nan)),
    # JSON files
    "config nested 100,000 deep": lambda d: _write(d, config_text=_deep(100000)),
    "config 50 MB": lambda d: _write(d, config_text=json.dumps({**_config(), "pad": "x" * 50_000_000})),
    "tokenizer nested 100,000 deep": lambda d: _write(d, tokenizer_text=_deep(100000, '{"a":', "}")),
    "tokenizer with a 150 MB counts list": lambda d: _write(
        d, tokenizer_text=json.dumps(_tokenizer()).replace('"counts": [', '"counts": [' + "1234567," * 18_750_000)
    ),
    "tokenizer with 3 * 10**6 tokens": lambda d: _write(
        d,
        tokenizer_text=json.dumps(_tokenizer()).replace(
            '"vocab": ["<unk>", ', '"vocab": ["<unk>", ' + '"t1234567", ' * 3_000_000
        ),
    ),
}

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import fastlm
    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    baseline = peak_mb()
    for directory in sys.argv[1:]:
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            fastlm.load(directory)
            outcome = "loaded"
        except Exception as error:
            outcome = type(error).__name__ + ": " + " ".join(str(error).split())[:300]
        print(json.dumps({"dir": directory, "seconds": time.perf_counter() - started,
                          "cpu_seconds": time.process_time() - cpu_started,
                          "peak_mb_above_import": peak_mb() - baseline, "outcome": outcome}), flush=True)
""")


def run_cases(python, directories, timeout=600, env=None):
    """Load each directory in one child interpreter; a dict per directory, in order."""
    done = subprocess.run(
        [python, "-c", CHILD, *map(str, directories)], capture_output=True, text=True, timeout=timeout, env=env
    )
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if len(results) != len(directories):
        raise AssertionError(
            f"the child stopped after {len(results)} cases (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("crafted")
    directories = []
    for k, make in enumerate(CASES.values()):
        directory = root / f"case{k:02d}"
        make(directory)
        directories.append(directory)
    return dict(zip(CASES, run_cases(sys.executable, directories)))


@pytest.mark.parametrize("case", list(CASES))
def test_crafted_directory_fails_fast_and_small(results, case):
    result = results[case]
    assert result["outcome"].startswith("ValueError: "), result
    # The processor time the load used, which other processes cannot stretch as they can the
    # wall-clock time (CI's 2 cores may be busy); parsing what the file only declares would take minutes.
    assert result["cpu_seconds"] < 1.0, result
    assert result["peak_mb_above_import"] < 100, result


def test_the_valid_base_loads(tmp_path):
    """The corpus's starting point is a loadable model, so each case fails for its own defect."""
    _write(tmp_path / "m")
    (result,) = run_cases(sys.executable, [tmp_path / "m"])
    assert result["outcome"] == "loaded", result
