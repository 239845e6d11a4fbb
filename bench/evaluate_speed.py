"""Evaluating a long 1-D corpus: fastlm's exact evaluate (every token with its full left
context: one stream), fastlm with N contiguous streams, and PyTorch's word-language-model
evaluation (N contiguous streams, bptt chunks, the state carried). Each cell runs in a
process of its own, the cells alternate round by round.

    python bench/evaluate_speed.py [--tokens 200000] [--rounds 3] [--threads 2] [--streams 10]

Config B (V=10000, E=H=200, L=2), random ids, the model's random initialisation (the
speed does not depend on the weights). Cells:

- ``exact``: ``model.evaluate(ids)``, the default (one stream, exact).
- ``exact_before`` (--before): the same exact reading as evaluate did it before
  score_streams, a Python loop over chunks of 100 tokens, written out here.
- ``streams``: ``model.evaluate(ids, streams=N)`` where this fastlm has it; otherwise the
  loop evaluate ran before it was made exact (ContiguousBatches of N rows, seq_len 35,
  model.forward per chunk, the state carried), written out here.
- ``torch``: PyTorch, the word_language_model example's evaluate (batchify into N
  columns, bptt 35, the hidden state carried, log_softmax + NLL) under inference_mode.

Prints tokens/s per cell (median of rounds) and the same-round ratios.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from harness import call_in_child, machine_description  # bench/harness.py

V, E, H, L = 10000, 200, 200, 2
BPTT = 35


def corpus(tokens, seed=0):
    return np.random.default_rng(seed).integers(0, V, tokens).astype(np.int32)


def fastlm_model(threads):
    import fastlm

    fastlm.set_num_threads(threads)
    return fastlm.LSTMLM(V, E, H, L, seed=0)


def timed_evaluation(evaluate, ids):
    """evaluate(ids) (a dict with loss and tokens) timed after a warm-up on its first 2,000 ids."""
    evaluate(ids[:2000])
    start = time.perf_counter()
    result = evaluate(ids)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": result["tokens"] / seconds, "loss": result["loss"], "tokens": result["tokens"]}


def run_exact(tokens, threads):
    model, ids = fastlm_model(threads), corpus(tokens)
    return timed_evaluation(model.evaluate, ids)


def _old_exact_evaluate(model, ids, seq_len=100):
    """The exact evaluate as it was before score_streams: one stream, a Python loop over
    chunks of seq_len (embedding, lstm_forward per layer, output_scores), the state carried."""
    from fastlm import scoring
    from fastlm.batches import ContiguousBatches

    p = model.params
    metrics = scoring.NextTokenMetrics(model.ops, model.vocab_size, 5)
    state = None
    for xb, yb in ContiguousBatches(ids, seq_len, 1).epoch(0):
        rows, _, tape = model._lstm_forward(xb, state, None, params=p)
        targets = yb.reshape(-1)
        metrics.add(targets, *model.ops.output_scores(rows, p["decoder.weight"], p["decoder.bias"], targets))
        state = model._final_state(tape)
    return metrics.result()


def run_exact_before(tokens, threads):
    model, ids = fastlm_model(threads), corpus(tokens)
    return timed_evaluation(lambda data: _old_exact_evaluate(model, data), ids)


def _old_stream_evaluate(model, ids, streams):
    """evaluate as it was before it became exact: N contiguous streams, the remainder dropped."""
    from fastlm.batches import ContiguousBatches

    loss_sum, tokens, state = 0.0, 0, None
    for xb, yb in ContiguousBatches(ids, BPTT, streams).epoch(0):
        loss, _, state = model.forward(xb, yb, state)
        loss_sum += loss * yb.size
        tokens += yb.size
    return {"loss": loss_sum / tokens, "tokens": tokens}


def run_streams(tokens, threads, streams):
    import inspect

    model, ids = fastlm_model(threads), corpus(tokens)
    if "streams" in inspect.signature(model.evaluate).parameters:

        def evaluate(data):
            return model.evaluate(data, streams=streams)
    else:

        def evaluate(data):
            return _old_stream_evaluate(model, data, streams)

    return timed_evaluation(evaluate, ids)


def run_torch(tokens, threads, streams):
    import torch

    from fastlm._torch_twin import TorchLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = TorchLM(V, E, H, L).eval()
    ids = torch.from_numpy(corpus(tokens).astype(np.int64))

    def evaluate(data):  # the word_language_model example's batchify + evaluate
        columns = data.size(0) // streams
        source = data[: columns * streams].view(streams, -1).t().contiguous()  # (length, N)
        total, count, hidden = 0.0, 0, None
        with torch.inference_mode():
            for i in range(0, source.size(0) - 1, BPTT):
                seq_len = min(BPTT, source.size(0) - 1 - i)
                x, y = source[i : i + seq_len].t(), source[i + 1 : i + 1 + seq_len].t()
                logits, hidden = net(x, hidden)
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction="sum")
                total += float(loss)
                count += y.numel()
        return {"loss": total / count, "tokens": count}

    return timed_evaluation(evaluate, ids)


def child(name, *args):
    """One measurement in a fresh process (PyTorch's started before fastlm is imported)."""
    from fastlm._environment import child_environment

    return call_in_child(__file__, name, *args, env=child_environment(args[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--before", action="store_true", help="also time the exact loop evaluate ran before")
    args = parser.parse_args()
    import fastlm

    cells = {"exact": [], "exact_before": [], "streams": [], "torch": []}
    for _ in range(args.rounds):
        cells["exact"].append(child("run_exact", args.tokens, args.threads))
        if args.before:
            cells["exact_before"].append(child("run_exact_before", args.tokens, args.threads))
        cells["streams"].append(child("run_streams", args.tokens, args.threads, args.streams))
        if not args.no_torch:
            cells["torch"].append(child("run_torch", args.tokens, args.threads, args.streams))
    print(f"CPU: {machine_description()}; fastlm ISA {fastlm.build_info()['isa']}; {args.threads} threads")
    print(f"config B (V={V}, E={E}, H={H}, L={L}), {args.tokens:,} tokens, medians of {args.rounds} rounds")
    labels = {
        "exact": "fastlm evaluate, exact (1 stream)",
        "exact_before": "fastlm exact, before (Python loop)",
        "streams": f"fastlm, {args.streams} streams",
        "torch": f"PyTorch, {args.streams} streams, bptt {BPTT}",
    }
    for name, runs in cells.items():
        if runs:
            rates = [r["tokens_per_s"] for r in runs]
            print(
                f"  {labels[name]:36} {np.median(rates):10,.0f} tokens/s  {[round(r) for r in rates]}  "
                f"loss {runs[0]['loss']:.5f} over {runs[0]['tokens']:,} tokens"
            )
    for a, b in (
        ("exact", "exact_before"),
        ("exact", "streams"),
        ("exact", "torch"),
        ("streams", "torch"),
        ("exact_before", "torch"),
    ):
        if cells[a] and cells[b]:
            ratio = np.median([x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(cells[a], cells[b])])
            print(f"  {a} / {b}: {ratio:.2f}x (median of same-round ratios)")


if __name__ == "__main__":
    main()
