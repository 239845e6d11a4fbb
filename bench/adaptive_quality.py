"""Issue 16's quality measurement: the adaptive softmax against the full softmax on a real
corpus, the same model and the same epochs, each trained until its validation perplexity
stops improving.

    python bench/adaptive_quality.py [--cutoffs 2000,10000] [--epochs 6] [--threads 1]
        [--log FILE] [--sides adaptive,full] [--hidden 256] [--lr 2e-3] [--dropout 0.3]

The corpus (default ../shared/data/warandpeace.txt) is split by lines, 90 / 5 / 5 %, into
training, validation and test text (blank lines dropped); words are what str.split()
returns, case kept, every line ended with <eos>; the vocabulary is every word of the
training text (no min_count; <unk> for validation and test words never seen in training).
Both sides build LSTMLM(V, embed, hidden, layers, dropout) with the same seed, so the
embedding and the LSTM start from the same weights, and differ only in the decoder: the
full softmax Linear(H, V), or the adaptive softmax with --cutoffs (div_value 4). Each
trains with fastlm.fit on the whole training split (Adam, clipping, stateful batches:
batch_size contiguous streams, the state carried across batches), is evaluated on the
validation text after every epoch, has its lr quartered when the validation perplexity
did not improve, and stops after --patience epochs without improvement (or at --epochs).
Each side runs in a process of its own on --threads threads, one after the other or, with
--parallel, both at once (then the times are those of two jobs sharing the machine).

Reported per side and epoch: the wall-clock seconds of training and of the validation
pass, the training tokens/s and the validation perplexity; then each side's best
validation perplexity, the adaptive one's distance from the full one's (the issue's
target: within 5 %), the test perplexity of each final model and the total times.
Perplexity does not depend on the machine's load; the times do.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import json_records, machine_description  # bench/harness.py

HERE = Path(__file__).resolve()
DEFAULT_CORPUS = HERE.parents[2] / "shared" / "data" / "warandpeace.txt"


def prepare(corpus, directory):
    """Split, tokenize and encode the corpus into directory/{train,val,test}.npy."""
    import numpy as np

    import fastlm

    lines = [line for line in Path(corpus).read_text(encoding="utf-8").split("\n") if line.strip()]
    a, b = int(0.9 * len(lines)), int(0.95 * len(lines))
    parts = {"train": lines[:a], "val": lines[a:b], "test": lines[b:]}
    texts = {name: "\n".join(part) + "\n" for name, part in parts.items()}
    tokenizer = fastlm.Tokenizer.fit(texts["train"], level="word", eos="<eos>")
    sizes = {"vocab_size": len(tokenizer)}
    for name, text in texts.items():
        ids = tokenizer.encode(text)
        np.save(Path(directory) / f"{name}.npy", ids)
        sizes[f"{name}_tokens"] = int(len(ids))
        sizes[f"{name}_unk"] = int(np.count_nonzero(ids == tokenizer.unk_id))
    return sizes


def train(args, side, report):
    """One side: fit with validation after every epoch, reporting each epoch as it ends."""
    import numpy as np

    import fastlm

    fastlm.set_num_threads(args.threads)
    data = {name: np.load(Path(args.data) / f"{name}.npy") for name in ("train", "val", "test")}
    V = int(max(int(ids.max()) for ids in data.values())) + 1
    cutoffs = [int(c) for c in args.cutoffs.split(",")] if side == "adaptive" else None
    model = fastlm.LSTMLM(
        V, args.embed, args.hidden, args.layers, dropout=args.dropout, seed=args.seed, cutoffs=cutoffs
    )
    started = last = time.perf_counter()

    def callback(history):
        nonlocal last
        now = time.perf_counter()
        tokens_per_s = history["tokens_per_s"][-1]
        train_seconds = (len(data["train"]) - 1) / tokens_per_s
        report(
            side=side,
            epoch=history["epoch"][-1],
            seconds=now - started,
            train_seconds=train_seconds,
            eval_seconds=now - last - train_seconds,
            tokens_per_s=tokens_per_s,
            lr=history["lr"][-1],
            loss=history["loss"][-1],
            val_perplexity=history["val_perplexity"][-1],
        )
        last = now

    model.fit(
        data["train"],
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        stateful=True,
        clip_norm=args.clip_norm,
        val_ids=data["val"],
        lr_decay=0.25,
        lr_patience=0,
        early_stopping=args.patience,
        progress=False,
        callback=callback,
    )
    test = model.evaluate(data["test"], seq_len=args.seq_len)
    report(side=side, test_perplexity=test["perplexity"], total_seconds=time.perf_counter() - started)


def start_side(side, argv, data):
    """Start one worker: this script with --worker side."""
    command = [sys.executable, str(HERE), *argv, "--worker", side, "--data", data]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def collect(side, proc, log):
    """A worker's JSON records as they come (echoed to log), once it has ended."""
    return json_records(proc, log, f"{side} side")


def run_sides(sides, argv, data, log, parallel):
    """Each side's records: one after the other, or all at once (parallel)."""
    if not parallel:
        return {side: collect(side, start_side(side, argv, data), log) for side in sides}
    from concurrent.futures import ThreadPoolExecutor

    procs = {side: start_side(side, argv, data) for side in sides}
    with ThreadPoolExecutor(len(sides)) as pool:
        futures = {side: pool.submit(collect, side, proc, log) for side, proc in procs.items()}
        return {side: future.result() for side, future in futures.items()}


def summarise(args, sizes, results):
    lines = [
        f"### Adaptive ({args.cutoffs}) vs full softmax: {Path(args.corpus).name}, word level, V = "
        f"{sizes['vocab_size']:,}",
        "",
        f"{sizes['train_tokens']:,} training, {sizes['val_tokens']:,} validation, {sizes['test_tokens']:,} test "
        f"tokens. LSTMLM(E={args.embed}, H={args.hidden}, L={args.layers}, dropout {args.dropout}), Adam lr "
        f"{args.lr}, clip {args.clip_norm}, seq_len {args.seq_len}, batch {args.batch_size} (stateful), lr/4 on "
        f"plateau, stop after {args.patience} epoch(s) without improvement (at most {args.epochs}). "
        f"{args.threads} thread(s){', sides run at the same time' if args.parallel else ''}; "
        f"CPU: {machine_description()}.",
        "",
        "| side | epoch | train s | val s | tokens/s | val ppl |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    best, test, total = {}, {}, {}
    for side, records in results.items():
        epochs = [r for r in records if "epoch" in r]
        for r in epochs:
            lines.append(
                f"| {side} | {r['epoch']} | {r['train_seconds']:.0f} | {r['eval_seconds']:.0f} | "
                f"{r['tokens_per_s']:,.0f} | {r['val_perplexity']:.2f} |"
            )
        best[side] = min(r["val_perplexity"] for r in epochs)
        end = next(r for r in records if "test_perplexity" in r)
        test[side], total[side] = end["test_perplexity"], end["total_seconds"]
    lines.append("")
    lines.append(
        "Best validation perplexity: "
        + ", ".join(f"{side} {best[side]:.2f}" for side in best)
        + "; test (final model): "
        + ", ".join(f"{side} {test[side]:.2f}" for side in test)
        + "; total wall-clock (training and evaluation): "
        + ", ".join(f"{side} {total[side]:.0f} s" for side in total)
        + "."
    )
    if "adaptive" in best and "full" in best:
        lines.append(
            f"Adaptive / full best validation perplexity: {best['adaptive'] / best['full']:.4f} "
            f"({best['adaptive'] / best['full'] - 1:+.2%}; target within 5 %)."
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--cutoffs", default="2000,10000")
    parser.add_argument("--sides", default="adaptive,full", help="which sides, in this order")
    parser.add_argument("--epochs", type=int, default=6, help="at most this many")
    parser.add_argument("--patience", type=int, default=1, help="epochs without improvement before stopping")
    parser.add_argument("--embed", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--clip-norm", type=float, default=0.5)
    parser.add_argument("--seq-len", type=int, default=35)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", action="store_true", help="run the sides at the same time")
    parser.add_argument("--log", default=None, help="append every record and the summary here")
    parser.add_argument("--worker", choices=["prepare", "adaptive", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    def report(**values):
        print(json.dumps(values), flush=True)

    if args.worker == "prepare":
        return report(**prepare(args.corpus, args.data))
    if args.worker:
        return train(args, args.worker, report)
    log = open(args.log, "a", encoding="utf-8") if args.log else sys.stdout  # noqa: SIM115
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} adaptive_quality.py {' '.join(argv)}", file=log, flush=True)
    with tempfile.TemporaryDirectory(prefix="fastlm-quality-") as data:
        sizes = collect("prepare", start_side("prepare", argv, data), log)[0]
        results = run_sides(args.sides.split(","), argv, data, log, args.parallel)
    summary = summarise(args, sizes, results)
    print(summary, file=log, flush=True)
    if log is not sys.stdout:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
