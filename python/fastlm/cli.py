"""The `fastlm` command: train, generate, eval, bench.

Exit codes: 0 success, 2 usage errors (argparse), 1 any other failure, reported in one
line without a traceback; 130 when interrupted.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

DEFAULT_OUT = "fastlm-model"
USER_ERRORS = (OSError, ValueError, KeyError, TypeError, FloatingPointError)


def builtin_corpus():
    """About 460 KB of English prose every Python installation has: the reference-manual topics."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[key] for key in sorted(topics))


def read_text(path):
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a text file")
    data = path.read_bytes()  # FileNotFoundError / PermissionError name the path
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (invalid byte at offset {error.start}); "
                         "convert it to UTF-8 first") from None


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _epoch_line(epochs):
    def report(history):
        k = len(history["epoch"]) - 1
        line = f"epoch {history['epoch'][k]}/{epochs}: loss {history['loss'][k]:.4f}"
        if history["val_loss"][k] is not None:
            line += f", val loss {history['val_loss'][k]:.4f} (perplexity {history['val_perplexity'][k]:.2f})"
        line += f", {history['tokens_per_s'][k]:,.0f} tokens/s, lr {history['lr'][k]:.2g}"
        print(line, flush=True)
    return report


def _print_sample(model, seed, tokens):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = model.generate_text("", max_new_tokens=tokens, temperature=0.8, seed=seed)
    print("--- sample ---")
    print(text.strip("\n"))
    print("--------------")


def cmd_train(args):
    import fastlm
    out = Path(args.out)
    text = "\n".join(read_text(p) for p in args.corpus) if args.corpus else builtin_corpus()
    source = ", ".join(args.corpus) if args.corpus else "the built-in corpus (pydoc_data.topics)"
    if not text.strip():
        raise ValueError(f"the corpus is empty: {source}")
    if args.resume:
        model = fastlm.load(out)  # FileNotFoundError when there is nothing to resume
        fastlm.files.load_training_state(out)
        tokenizer = model.tokenizer
        if tokenizer is None:
            raise ValueError(f"{out} holds no tokenizer.json, so the corpus cannot be encoded as before")
    else:
        tokenizer = fastlm.Tokenizer.fit(text, level=args.level, min_count=args.min_count, max_vocab=args.max_vocab,
                                         lowercase=args.lowercase, split_punctuation=args.split_punctuation)
        model = fastlm.LSTMLM(len(tokenizer), args.embed, args.hidden, args.layers, dropout=args.dropout,
                              seed=args.seed)
    if args.threads:
        fastlm.set_num_threads(args.threads)
    ids = tokenizer.encode(text)
    n_val = int(len(ids) * args.val_fraction)
    train_ids, val_ids = (ids[:-n_val], ids[-n_val:]) if n_val >= 2 else (ids, None)
    print(f"corpus: {source}: {len(ids):,} {tokenizer.level} tokens, vocabulary {len(tokenizer):,}; "
          f"training on {len(train_ids):,}, validating on {0 if val_ids is None else len(val_ids):,}")
    print(f"model: embed {model.embed_dim}, hidden {model.hidden_size}, layers {model.num_layers}; "
          f"{fastlm.get_num_threads()} threads, {fastlm.build_info()['simd']}; saving to {out}", flush=True)
    started = time.perf_counter()
    history = model.fit(train_ids, seq_len=args.seq_len, batch_size=args.batch_size, epochs=args.epochs, lr=args.lr,
                        stride=args.stride, val_ids=val_ids, clip_norm=args.clip_norm, checkpoint_dir=out,
                        resume=args.resume, tokenizer=tokenizer, progress=args.progress,
                        max_batches=args.max_steps, callback=_epoch_line(args.epochs))
    if history.get("interrupted"):
        print(f"interrupted: checkpoint saved in {out}; continue with: fastlm train ... --out {out} --resume")
        return 130
    print(f"trained in {time.perf_counter() - started:.1f} s; model saved in {out}")
    if val_ids is not None:
        result = model.evaluate(val_ids, seq_len=args.seq_len, batch_size=args.batch_size)
        print(f"validation: loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}, "
              f"accuracy {result['accuracy']:.3f}")
    model.tokenizer = tokenizer
    _print_sample(model, args.seed, args.sample_tokens)
    return 0


def cmd_generate(args):
    import fastlm
    model = fastlm.load(args.directory)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = model.generate_text(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                    num_samples=args.num_samples)
    for warning in caught:
        print(f"fastlm generate: note: {warning.message}", file=sys.stderr)
    separator = " " if model.tokenizer.level == "word" and args.prompt else ""
    for k, text in enumerate([texts] if isinstance(texts, str) else texts):
        if k:
            print("---")
        print(args.prompt + separator + text)
    return 0


def cmd_eval(args):
    import fastlm
    model = fastlm.load(args.directory)
    tokenizer = model._require_tokenizer()
    path = Path(args.file)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a text file")
    ids, unknown = tokenizer.encode(read_text(path), return_unknown=True)
    result = model.evaluate(ids, seq_len=args.seq_len, batch_size=args.batch_size)
    print(f"tokens      {result['tokens']:,} ({unknown:,} unknown, scored as <unk>)")
    print(f"loss        {result['loss']:.4f} nats/token")
    print(f"perplexity  {result['perplexity']:.3f}")
    print(f"bits/token  {result['bits_per_token']:.4f}")
    print(f"accuracy    {result['accuracy']:.4f}")
    return 0


def cmd_bench(args):
    import fastlm
    from fastlm.benchmark import CONFIGS, fastlm_train_step, median_seconds, torch_train_step, training_flops_per_token
    if args.threads:
        fastlm.set_num_threads(args.threads)
    threads = fastlm.get_num_threads()
    print(f"training step (forward, loss, backward, Adam), median of {args.repeats}; {threads} threads, "
          f"{fastlm.build_info()['simd']}")
    print(f"{'config':8} {'(V, E, H, L, T, B)':28} {'backend':8} {'tokens/s':>10} {'GFLOP/s':>8} {'vs numpy':>9}")
    for name in args.configs:
        c = CONFIGS[name]
        steps = {"cpp": fastlm_train_step(c, "cpp"), "numpy": fastlm_train_step(c, "numpy")}
        if args.torch:
            step = torch_train_step(c, threads)
            if step is None:
                print("  (PyTorch not installed: skipped)")
            else:
                steps["torch"] = step
        rates = {}
        for backend, step in steps.items():
            rates[backend] = c.batch * c.steps / median_seconds(step, args.repeats)
        for backend, rate in rates.items():
            gflops = rate * training_flops_per_token(c) / 1e9
            print(f"{name:8} {str(tuple(c)):28} {backend:8} {rate:10,.0f} {gflops:8.1f} "
                  f"{rate / rates['numpy']:8.2f}x")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="fastlm", description="Train, sample and evaluate LSTM language models "
                                     "on the CPU.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model on text files (or on the built-in corpus)",
                                description="Train a language model and save it, with a checkpoint after every "
                                "epoch, then print a sample. With no CORPUS, trains on the Python reference-manual "
                                "topics that ship with every Python (pydoc_data.topics, ~460 KB).")
    train.add_argument("corpus", nargs="*", metavar="CORPUS", help="UTF-8 text files (default: the built-in corpus)")
    train.add_argument("--level", choices=["char", "word"], default="char", help="token level (default: char)")
    train.add_argument("--min-count", type=_positive_int, default=1, help="rarer tokens become <unk> (default: 1)")
    train.add_argument("--max-vocab", type=_positive_int, default=None, help="keep at most this many tokens")
    train.add_argument("--lowercase", action="store_true", help="lower-case the text")
    train.add_argument("--split-punctuation", action="store_true", help="word level: split punctuation off words")
    train.add_argument("--seq-len", type=_positive_int, default=100, help="time steps per window (default: 100)")
    train.add_argument("--stride", type=_positive_int, default=None,
                       help="tokens between window starts (default: seq-len; 1 = every position)")
    train.add_argument("--batch-size", type=_positive_int, default=32, help="windows per batch (default: 32)")
    train.add_argument("--epochs", type=_positive_int, default=4, help="passes over the corpus (default: 4)")
    train.add_argument("--embed", type=_positive_int, default=64, help="embedding width (default: 64)")
    train.add_argument("--hidden", type=_positive_int, default=256, help="LSTM hidden size (default: 256)")
    train.add_argument("--layers", type=_positive_int, default=2, help="LSTM layers (default: 2)")
    train.add_argument("--dropout", type=_fraction, default=0.0, help="dropout between layers (default: 0)")
    train.add_argument("--lr", type=_positive_float, default=2e-3, help="Adam learning rate (default: 0.002)")
    train.add_argument("--clip-norm", type=_positive_float, default=5.0, help="gradient norm clip (default: 5)")
    train.add_argument("--val-fraction", type=_fraction, default=0.05,
                       help="share of the corpus (its end) held out for validation (default: 0.05)")
    train.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many batches")
    train.add_argument("--seed", type=int, default=0, help="initialisation, order and sampling seed (default: 0)")
    train.add_argument("--threads", type=_positive_int, default=None, help="threads (default: all cores)")
    train.add_argument("--sample-tokens", type=_nonnegative_int, default=300,
                       help="length of the sample printed at the end (default: 300)")
    train.add_argument("--out", default=DEFAULT_OUT, help=f"model directory (default: {DEFAULT_OUT})")
    train.add_argument("--resume", action="store_true", help="continue the training checkpointed in --out")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                       help="progress bar (default: on in a terminal)")
    train.set_defaults(run=cmd_train)

    generate = commands.add_parser("generate", help="write text with a trained model",
                                   description="Continue a prompt with text sampled from a saved model.")
    generate.add_argument("directory", metavar="DIR", help="model directory written by fastlm train or save()")
    generate.add_argument("--prompt", default="", help="text to continue (default: none)")
    generate.add_argument("--max-new-tokens", type=_nonnegative_int, default=200, help="tokens to add (default: 200)")
    generate.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    generate.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    generate.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with probability p")
    generate.add_argument("--num-samples", type=_positive_int, default=1, help="independent samples (default: 1)")
    generate.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    generate.set_defaults(run=cmd_generate)

    evaluate = commands.add_parser("eval", help="perplexity and accuracy of a model on a text file",
                                   description="Score a UTF-8 text file: loss, perplexity, bits per token, top-1 "
                                   "accuracy.")
    evaluate.add_argument("directory", metavar="DIR", help="model directory")
    evaluate.add_argument("file", metavar="FILE", help="UTF-8 text file")
    evaluate.add_argument("--seq-len", type=_positive_int, default=100, help="chunk length (default: 100)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=32, help="parallel streams (default: 32)")
    evaluate.set_defaults(run=cmd_eval)

    bench = commands.add_parser("bench", help="training speed: C++ core vs NumPy reference (vs PyTorch)",
                                description="Time one training step (forward, loss, backward, Adam) on random "
                                "batches for the benchmark configurations.")
    bench.add_argument("--configs", nargs="+", choices=["A", "B", "C", "D"], default=["A", "D"],
                       help="configurations (default: A D)")
    bench.add_argument("--repeats", type=_positive_int, default=3, help="timed repeats (default: 3)")
    bench.add_argument("--torch", action="store_true", help="also time PyTorch, if installed")
    bench.add_argument("--threads", type=_positive_int, default=None, help="threads (default: all cores)")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"fastlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"fastlm {args.command}: error: {message}", file=sys.stderr)
        return 1
