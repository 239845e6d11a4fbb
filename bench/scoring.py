"""Issue 15's measurements: scoring many short sentences, streaming against generate, and
generate from several threads at once. Each measurement runs in a process of its own.

    python bench/scoring.py [--sentences 10000] [--rounds 3]

Scoring: PTB-like sentences (lengths 1-80, mean ~21 tokens) on config B (V=10000, E=200,
H=200, L=2): fastlm log_probs (one call for all), PyTorch with packed sequences in
length-sorted batches, and fastlm called one sentence at a time. Streaming: time to the
first token and tokens/s of model.stream against model.generate (config B, 500 tokens, 7
alternating pairs per process, medians).
Threads: total tokens/s of 1, 2 and 4 threads calling generate on config A.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from harness import call_in_child  # bench/harness.py

V = 10000


def sentences(count, seed=0):
    """Lengths 1-80 with mean ~21 (a clipped geometric-like draw), random ids."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.gamma(2.2, 9.5, count)), 1, 80).astype(int)
    return [rng.integers(1, V, n).astype(np.int32) for n in lengths]


def fastlm_model(config):
    import fastlm

    E, H, L = {"A": (128, 128, 1), "B": (200, 200, 2)}[config]
    return fastlm.LSTMLM(V, E, H, L, seed=0)


def run_fastlm_batched(count):
    model, seqs = fastlm_model("B"), sentences(count)
    model.log_probs(seqs[:200], bos=0)  # warm-up
    start = time.perf_counter()
    model.log_probs(seqs, bos=0)
    return count / (time.perf_counter() - start)


def run_fastlm_one_at_a_time(count):
    model, seqs = fastlm_model("B"), sentences(count)
    model.log_probs(seqs[:20], bos=0)
    start = time.perf_counter()
    for s in seqs:
        model.log_probs([s], bos=0)
    return count / (time.perf_counter() - start)


def run_torch_packed(count, batch=256):
    import torch
    from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

    torch.manual_seed(0)
    embedding, lstm, decoder = (
        torch.nn.Embedding(V, 200),
        torch.nn.LSTM(200, 200, 2, batch_first=True),
        torch.nn.Linear(200, V),
    )
    seqs = sentences(count)
    order = sorted(range(count), key=lambda i: -len(seqs[i]))

    def score(indices):
        inputs = [torch.from_numpy(np.concatenate([[0], seqs[i][:-1]]).astype(np.int64)) for i in indices]
        targets = [torch.from_numpy(seqs[i].astype(np.int64)) for i in indices]
        packed = pack_sequence([embedding(x) for x in inputs], enforce_sorted=True)
        out, _ = lstm(packed)
        log_probs = torch.log_softmax(decoder(out.data), dim=-1)
        target = pack_sequence(targets, enforce_sorted=True).data
        picked = log_probs.gather(1, target[:, None])[:, 0]
        return pad_packed_sequence(torch.nn.utils.rnn.PackedSequence(picked, out.batch_sizes), batch_first=True)

    with torch.inference_mode():
        score(order[:batch])
        start = time.perf_counter()
        for b in range(0, count, batch):
            score(order[b : b + batch])
        return count / (time.perf_counter() - start)


def run_stream(tokens=500, repeats=7):
    """generate and stream of the same tokens, alternating which goes first: one 500-token run
    of each takes about a tenth of a second, so a single pair is at the mercy of the scheduler."""
    model = fastlm_model("B")
    prompt = np.arange(1, 11, dtype=np.int32)
    model.generate(prompt, 50, seed=0)

    def generate():
        start = time.perf_counter()
        model.generate(prompt, tokens, seed=1)
        return tokens / (time.perf_counter() - start), None

    def stream():
        start = time.perf_counter()
        first = None
        for n, _ in enumerate(model.stream(prompt, tokens, seed=1, suppress_unk=False)):
            if n == 0:
                first = time.perf_counter() - start
        return tokens / (time.perf_counter() - start), first

    rates = {"generate": [], "stream": []}
    firsts = []
    for k in range(repeats):
        for name, call in (
            (("generate", generate), ("stream", stream)) if k % 2 == 0 else (("stream", stream), ("generate", generate))
        ):
            rate, first = call()
            rates[name].append(rate)
            if first is not None:
                firsts.append(first)
    return {
        "generate_tokens_per_s": float(np.median(rates["generate"])),
        "stream_tokens_per_s": float(np.median(rates["stream"])),
        "stream_first_token_ms": 1000 * float(np.median(firsts)),
    }


def run_threads(threads, tokens=300):
    import threading

    import fastlm

    fastlm.set_num_threads(1)
    model = fastlm_model("A")
    prompt = np.arange(1, 11, dtype=np.int32)
    model.generate(prompt, 20, seed=0)
    workers = [
        threading.Thread(target=model.generate, args=(prompt, tokens), kwargs={"seed": k}) for k in range(threads)
    ]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * tokens / (time.perf_counter() - start)


def child(name, *args):
    """Run one measurement in a fresh process; returns its JSON result."""
    return call_in_child(__file__, name, *args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = {"fastlm log_probs": [], "PyTorch packed": [], "fastlm one at a time": []}
    streams, threads = [], {1: [], 2: [], 4: []}
    for _ in range(args.rounds):  # alternating, each in its own process
        rows["fastlm log_probs"].append(child("run_fastlm_batched", args.sentences))
        try:
            rows["PyTorch packed"].append(child("run_torch_packed", args.sentences))
        except RuntimeError as error:
            print("PyTorch failed:", str(error).strip().splitlines()[-1:], file=sys.stderr)
        rows["fastlm one at a time"].append(child("run_fastlm_one_at_a_time", max(1, args.sentences // 10)))
        streams.append(child("run_stream"))
        for n in threads:
            threads[n].append(child("run_threads", n))
    print(f"scoring {args.sentences} sentences, config B, medians of {args.rounds} rounds (sentences/s)")
    for name, values in rows.items():
        if values:
            print(f"  {name:22} {np.median(values):10,.0f}   {[round(v) for v in values]}")
    if rows["PyTorch packed"]:
        ratio = np.median([a / b for a, b in zip(rows["fastlm log_probs"], rows["PyTorch packed"])])
        print(f"  fastlm / PyTorch (median of per-round ratios): {ratio:.2f}x")
    for key in streams[0]:
        print(f"  {key:28} {np.median([s[key] for s in streams]):10,.1f}   {[round(s[key], 1) for s in streams]}")
    slow = np.median([1 - s["stream_tokens_per_s"] / s["generate_tokens_per_s"] for s in streams])
    print(f"  stream slower than generate by {100 * slow:.1f}% (median of per-round ratios)")
    for n, values in threads.items():
        print(f"  generate, config A, {n} thread(s), 1 OpenMP thread each: {np.median(values):8,.0f} tokens/s total")


if __name__ == "__main__":
    main()
