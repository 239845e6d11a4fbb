"""Time to perplexity: fastlm and PyTorch training the same recipe on a real corpus.

    python bench/time_to_perplexity.py --preset zaremba-small            # all 13 epochs
    python bench/time_to_perplexity.py --preset zaremba-medium --epochs 3

The corpus (default ../shared/data/warandpeace.txt) is split by lines, 90 / 5 / 5 %, into
training, validation and test text; blank lines are dropped, the text lower-cased and
every line ended with ``<eos>`` (Penn Treebank style); the vocabulary is the training
text's 10,000 most frequent words, ``<unk>`` included. Both sides then train the
preset's recipe from the same initial weights (drawn once, uniform in [-init, init]) on
the same batches (batch_size contiguous streams, seq_len steps at a time, the state
carried across batches), with SGD, the preset's clipping and epoch schedule, and
evaluate the validation text after every epoch the same way: exactly, every token after
the first scored with its full left context, the text read as one stream (batch 1) in
chunks with the state carried across. That is what fastlm's fit validates with
(``evaluate`` on a 1-D text); PyTorch does the same in chunks of batch_size x seq_len
tokens. (Evaluating PyTorch with batch_size contiguous streams instead, as its
word_language_model example does, gives every stream's first tokens less context: a
slightly higher perplexity, reached later, and a faster evaluation, so the two sides would
not be compared like for like.) Each side runs in a process of its own with the same thread count,
one after the other (``--order``), taking turns an epoch at a time (``--alternate``: both
processes start, and each waits while the other runs an epoch; its clock leaves the waits
out. The machine's speed drifts over minutes when other jobs share it, and one side run
after the other meets different minutes; taking turns, each epoch of one side has an
epoch of the other beside it in time), or both at once (``--parallel``: on a machine other
jobs are loading, both then train under the same load, and each gets about the same
share of the cores while both run, so the ratio of their times is one of work per core;
once the first finishes, the second has the cores to itself, which favours the slower
side), and reports after every epoch the wall-clock seconds since its training began
(evaluation passes included) and the validation perplexity.

Reported: both final validation perplexities, and for each side the time at which its
validation perplexity first reached the worse of the two (at an epoch end), and their
ratio. The test perplexity of each final model is computed after the clock stops.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import json_records, machine_description  # bench/harness.py

HERE = Path(__file__).resolve()
DEFAULT_CORPUS = HERE.parents[2] / "shared" / "data" / "warandpeace.txt"


# ---------------------------------------------------------------- data (in a worker of its own)


def prepare(corpus, directory, preset_name, vocab, seed):
    """Split, tokenize and encode the corpus; draw the shared initial weights. Writes .npy files."""
    import numpy as np

    import fastlm

    lines = [line for line in Path(corpus).read_text(encoding="utf-8").split("\n") if line.strip()]
    a, b = int(0.9 * len(lines)), int(0.95 * len(lines))
    parts = {"train": lines[:a], "val": lines[a:b], "test": lines[b:]}
    texts = {name: "\n".join(part) + "\n" for name, part in parts.items()}
    preset = fastlm.presets.get(preset_name)
    tokenizer = fastlm.Tokenizer.fit(texts["train"], **preset.tokenizer, lowercase=True, max_vocab=vocab)
    for name, text in texts.items():
        np.save(Path(directory) / f"{name}.npy", tokenizer.encode(text))
    model = fastlm.LSTMLM(len(tokenizer), **preset.model, seed=seed)
    np.savez(Path(directory) / "init.npz", **model.state_dict())
    return {
        "vocab_size": len(tokenizer),
        **{f"{name}_tokens": int(len(tokenizer.encode(t))) for name, t in texts.items()},
    }


# ---------------------------------------------------------------- the two sides


def contiguous_batches(ids, seq_len, batch_size):
    """fastlm's ContiguousBatches: batch_size streams, read seq_len columns at a time."""
    length = (len(ids) - 1) // batch_size
    xs = ids[: length * batch_size].reshape(batch_size, length)
    ys = ids[1 : length * batch_size + 1].reshape(batch_size, length)
    for start in range(0, length, seq_len):
        yield xs[:, start : start + seq_len], ys[:, start : start + seq_len]


def epoch_lr(lr, decay, decay_from, epoch):
    """The epoch schedule: lr * decay ** max(epoch - (decay_from - 1), 0), epochs counted from 1."""
    return lr * decay ** max(epoch - (decay_from - 1), 0)


class Clock:
    """A side's seconds of training. With turns (--alternate) the worker says it is ready,
    then waits for its turn (a line on stdin) before training and after every epoch but
    the last; the waits are left out of its seconds."""

    def __init__(self, turns, report):
        self.turns, self.report = turns, report
        self.started = self.waited = 0.0

    def _wait_turn(self):
        began = time.perf_counter()
        if self.turns and not sys.stdin.readline():
            raise SystemExit("the driver ended before this worker's turn")
        return time.perf_counter() - began

    def start(self):
        if self.turns:
            self.report(ready=True)
        self._wait_turn()
        self.started, self.waited = time.perf_counter(), 0.0

    def seconds(self):
        return time.perf_counter() - self.started - self.waited

    def epoch_done(self, epoch, epochs):
        """After epoch's report: the other side's turn, unless this was the last."""
        if epoch < epochs:
            self.waited += self._wait_turn()


def run_fastlm(directory, preset_name, epochs, threads, report, turns=False):
    import numpy as np

    import fastlm

    fastlm.set_num_threads(threads)
    data = {name: np.load(Path(directory) / f"{name}.npy") for name in ("train", "val", "test")}
    init = dict(np.load(Path(directory) / "init.npz"))
    preset = fastlm.presets.get(preset_name)
    model = fastlm.LSTMLM(init["decoder.bias"].shape[0], **preset.model)
    model.load_state_dict(init)
    fit = dict(preset.fit, epochs=epochs)
    clock = Clock(turns, report)
    clock.start()

    def callback(history):
        report(
            epoch=history["epoch"][-1],
            seconds=clock.seconds(),
            lr=history["lr"][-1],
            loss=history["loss"][-1],
            val_perplexity=history["val_perplexity"][-1],
        )
        clock.epoch_done(history["epoch"][-1], epochs)

    model.fit(data["train"], val_ids=data["val"], progress=False, callback=callback, **fit)
    test = model.evaluate(data["test"], seq_len=fit["seq_len"], batch_size=fit["batch_size"])
    report(test_perplexity=test["perplexity"])


def run_torch(directory, preset_name, epochs, threads, report, turns=False):
    import numpy as np
    import torch

    import fastlm  # the preset's values only; no fastlm code runs in the timed loop

    torch.set_num_threads(threads)
    data = {name: np.load(Path(directory) / f"{name}.npy").astype(np.int64) for name in ("train", "val", "test")}
    init = dict(np.load(Path(directory) / "init.npz"))
    preset = fastlm.presets.get(preset_name)
    m, fit = preset.model, dict(preset.fit, epochs=epochs)
    V = init["decoder.bias"].shape[0]

    class Net(torch.nn.Module):
        """PyTorch's word_language_model example: dropout on the embedding, between layers, before the decoder."""

        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, m["embed_dim"])
            self.lstm = torch.nn.LSTM(
                m["embed_dim"], m["hidden_size"], num_layers=m["num_layers"], dropout=m["dropout"], batch_first=True
            )
            self.decoder = torch.nn.Linear(m["hidden_size"], V)
            self.drop = torch.nn.Dropout(m["dropout"])

        def forward(self, x, state):
            out, state = self.lstm(self.drop(self.embedding(x)), state)
            return self.decoder(self.drop(out)), state

    net = Net()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in init.items()})
    opt = torch.optim.SGD(net.parameters(), lr=fit["lr"])
    T, B = fit["seq_len"], fit["batch_size"]

    def evaluate(ids):
        """fastlm's evaluate: one stream (batch 1), every token after the first scored with its
        full left context, read in chunks of T * B tokens with the state carried across."""
        net.eval()
        total, state, chunk = 0.0, None, T * B
        with torch.no_grad():
            for start in range(0, len(ids) - 1, chunk):
                end = min(start + chunk, len(ids) - 1)
                x = torch.from_numpy(np.ascontiguousarray(ids[start:end]))[None]
                y = torch.from_numpy(np.ascontiguousarray(ids[start + 1 : end + 1]))
                logits, state = net(x, state)
                total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, V), y, reduction="sum"))
        return math.exp(total / (len(ids) - 1))

    clock = Clock(turns, report)
    clock.start()
    for epoch in range(1, epochs + 1):
        lr = epoch_lr(fit["lr"], fit["lr_decay"], fit["lr_decay_epoch"], epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        net.train()
        state, loss_sum, tokens = None, 0.0, 0
        for x, y in contiguous_batches(data["train"], T, B):
            if state is not None:
                state = tuple(s.detach() for s in state)
            logits, state = net(torch.from_numpy(np.ascontiguousarray(x)), state)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, V), torch.from_numpy(np.ascontiguousarray(y)).reshape(-1)
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), fit["clip_norm"])
            opt.step()
            loss_sum += loss.item() * y.size
            tokens += y.size
        val_perplexity = evaluate(data["val"])
        report(epoch=epoch, seconds=clock.seconds(), lr=lr, loss=loss_sum / tokens, val_perplexity=val_perplexity)
        clock.epoch_done(epoch, epochs)
    report(test_perplexity=evaluate(data["test"]))


# ---------------------------------------------------------------- driver


def worker(args):
    def report(**values):
        print(json.dumps(values), flush=True)

    if args.worker == "prepare":
        report(**prepare(args.corpus, args.data, args.preset, args.vocab, args.seed))
    else:
        run = run_fastlm if args.worker == "fastlm" else run_torch
        run(args.data, args.preset, args.epochs, args.threads, report, turns=args.turns)


def both_sides_environment(threads):
    """The same environment for both sides. Both get the bounded OpenMP barrier spin fastlm sets
    for itself on import: on a machine shared with other jobs, GOMP's default spin slows a
    2-thread PyTorch down several times, which would flatter fastlm."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    if "OMP_WAIT_POLICY" not in env:
        env.setdefault("GOMP_SPINCOUNT", "10000")
    return env


def start_worker(side, args, data, turns=False):
    command = [
        sys.executable,
        str(HERE),
        "--worker",
        side,
        "--data",
        data,
        "--preset",
        args.preset,
        "--epochs",
        str(args.epochs),
        "--threads",
        str(args.threads),
        "--corpus",
        str(args.corpus),
        "--vocab",
        str(args.vocab),
        "--seed",
        str(args.seed),
    ] + (["--turns"] if turns else [])
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if turns else None,
        text=True,
        env=both_sides_environment(args.threads),
    )


def collect(side, proc, log):
    """The worker's records as they come (echoed to log after its side), once it has ended."""
    return json_records(proc, log, f"{side} worker", prefix=f"{side:7s} ")


def run_worker(side, args, data, log):
    return collect(side, start_worker(side, args, data), log)


def run_parallel(sides, args, data, log):
    from concurrent.futures import ThreadPoolExecutor

    procs = {side: start_worker(side, args, data) for side in sides}
    with ThreadPoolExecutor(len(sides)) as pool:
        futures = {side: pool.submit(collect, side, proc, log) for side, proc in procs.items()}
        return {side: future.result() for side, future in futures.items()}


def run_alternating(sides, args, data, log):
    """Both workers started, then an epoch of each in turn (the first side first): a side
    is handed its turn and read up to its next epoch's record; after its last epoch, to
    its end (the test perplexity, computed before the other side goes on)."""
    procs = {side: start_worker(side, args, data, turns=True) for side in sides}
    records = {side: [] for side in sides}

    def read_until(side, stop):
        for line in procs[side].stdout:
            records[side].append(json.loads(line))
            print(f"{side:7s} " + json.dumps(records[side][-1]), file=log, flush=True)
            if stop(records[side][-1]):
                return True
        return False

    for side in sides:  # imports and data loaded on both sides before any clock starts
        if not read_until(side, lambda record: record.get("ready")):
            raise SystemExit(f"the {side} worker ended before it was ready (exit {procs[side].wait()})")
    running = list(sides)
    while running:
        for side in list(running):
            procs[side].stdin.write("go\n")
            procs[side].stdin.flush()
            if not read_until(side, lambda record: record.get("epoch", args.epochs) < args.epochs):
                if procs[side].wait():
                    raise SystemExit(f"the {side} worker failed (exit {procs[side].returncode})")
                running.remove(side)
    return {side: [r for r in records[side] if "ready" not in r] for side in sides}


def time_to_reach(epochs, target):
    """Seconds at the first epoch end whose validation perplexity is at most target."""
    return next((e["seconds"] for e in epochs if e["val_perplexity"] <= target * (1 + 1e-12)), None)


def summarise(args, prepared, results):
    sides = list(results)
    epochs = {side: [r for r in results[side] if "epoch" in r] for side in sides}
    final = {side: epochs[side][-1]["val_perplexity"] for side in sides}
    test = {side: next(r["test_perplexity"] for r in results[side] if "test_perplexity" in r) for side in sides}
    target = max(final.values())
    reach = {side: time_to_reach(epochs[side], target) for side in sides}
    lines = [
        f"### {args.preset}, {args.epochs} epochs, {args.threads} threads",
        "",
        f"Corpus {Path(args.corpus).name}: {prepared['train_tokens']:,} training, {prepared['val_tokens']:,} "
        f"validation, {prepared['test_tokens']:,} test tokens; vocabulary {prepared['vocab_size']:,}. "
        f"CPU: {machine_description()}. "
        + (
            "Both sides at once."
            if args.parallel
            else f"Taking turns an epoch at a time, {sides[0]} first."
            if args.alternate
            else f"Order: {', '.join(sides)}."
        ),
        "",
        "| epoch | " + " | ".join(f"{s} s | {s} val ppl" for s in sides) + " |",
        "|---:|" + "---:|---:|" * len(sides),
    ]
    for k in range(args.epochs):
        cells = [f"{epochs[s][k]['seconds']:.0f} | {epochs[s][k]['val_perplexity']:.2f}" for s in sides]
        lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Final validation perplexity: "
        + ", ".join(f"{s} {final[s]:.2f}" for s in sides)
        + f" (difference {abs(final['fastlm'] - final['torch']) / min(final.values()):.2%}); test: "
        + ", ".join(f"{s} {test[s]:.2f}" for s in sides)
        + "."
    )
    if all(reach.values()):
        lines.append(
            f"Time to validation perplexity {target:.2f} (the worse final): "
            + ", ".join(f"{s} {reach[s]:.0f} s" for s in sides)
            + f"; fastlm {reach['torch'] / reach['fastlm']:.2f}x sooner."
        )
    per_epoch = {s: epochs[s][-1]["seconds"] / len(epochs[s]) for s in sides}
    lines.append(
        "Mean time per epoch (evaluation included): "
        + ", ".join(f"{s} {per_epoch[s]:.0f} s" for s in sides)
        + f"; ratio {per_epoch['torch'] / per_epoch['fastlm']:.2f}x."
    )
    return "\n".join(lines) + "\n", dict(final=final, test=test, target=target, reach=reach, epochs=epochs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="zaremba-small")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", default="fastlm,torch", help="which side runs first (default: fastlm,torch)")
    parser.add_argument("--parallel", action="store_true", help="run both sides at the same time")
    parser.add_argument(
        "--alternate", action="store_true", help="both sides take turns an epoch at a time (--order: who goes first)"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write every record here")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="append the summary to this file")
    parser.add_argument("--worker", choices=["prepare", "fastlm", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--turns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = int(
            subprocess.check_output(
                [sys.executable, "-c", f"import fastlm; print(fastlm.presets.get({args.preset!r}).fit['epochs'])"],
                text=True,
            )
        )
    if args.worker:
        return worker(args)
    if args.parallel and args.alternate:
        parser.error("--parallel and --alternate exclude each other")
    with tempfile.TemporaryDirectory(prefix="fastlm-ttp-") as data:
        prepared = run_worker("prepare", args, data, sys.stdout)[0]
        sides = args.order.split(",")
        if args.parallel:
            results = run_parallel(sides, args, data, sys.stdout)
        elif args.alternate:
            results = run_alternating(sides, args, data, sys.stdout)
        else:
            results = {side: run_worker(side, args, data, sys.stdout) for side in sides}
    summary, figures = summarise(args, prepared, results)
    print(summary)
    if args.json:
        Path(args.json).write_text(
            json.dumps(dict(args=vars(args), prepared=prepared, results=results, summary=figures), indent=1) + "\n"
        )
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write("\n" + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
