"""The training loop (fit, which is LSTMLM.fit) and its optimizers.

Adam with per-parameter moments or SGD (momentum, Nesterov), optional clipping by global
norm, dropout, learning-rate decay on a validation plateau or by epoch (the schedule of
Zaremba et al.), early stopping (restoring the best epoch's weights if asked), per-epoch
checkpoints with the best epoch kept beside the last, callbacks per batch and per epoch, and
exact resume.
Every random choice (window order, dropout masks) is a pure function of (seed, epoch,
batch), and the full optimizer state is saved, so training stopped after any batch and
resumed is bit-identical to an uninterrupted run with the same seed and thread count.
"""

from __future__ import annotations

import functools
import json
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np

from fastlm import distributed, model_dir
from fastlm.batches import ArrayBatches, ContiguousBatches, RowStreams, WindowBatches, all_rows
from fastlm.checks import check_bool, check_choice, check_directory, check_int, check_number, check_tokenizer
from fastlm.token_file import check_corpus

# Settings that must not change between a run and its resumption.
RESUME_KEYS = (
    "seq_len",
    "batch_size",
    "stride",
    "shuffle",
    "stateful",
    "clip_norm",
    "weight_decay",
    "lr_decay",
    "lr_patience",
    "early_stopping",
    "data_tokens",
    "optimizer",
    "momentum",
    "nesterov",
    "lr_decay_epoch",
    "lr",
    "sparse_embedding",
)
# What checkpoints written before a setting was recorded trained with (lr: unknown, not compared).
SETTINGS_BEFORE_RECORDED = {
    "optimizer": "adam",
    "momentum": 0.0,
    "nesterov": False,
    "lr_decay_epoch": None,
    "sparse_embedding": False,
}
OPTIMIZERS = ("adam", "sgd")


def _owned_float32(array):
    """array as a writeable float32 C-contiguous array: itself when it is one, else a copy."""
    return np.require(array, np.float32, ["C_CONTIGUOUS", "WRITEABLE", "ALIGNED"])


class _ClipThenStep:
    """clipped_step for an optimizer with no fused clip: clip_grad_norm(grads, max_norm), then step."""

    def clipped_step(self, ops, params, grads, max_norm):
        ops.clip_grad_norm(_gradient_arrays(grads), max_norm)
        self.step(ops, params, grads)


class Adam(_ClipThenStep):
    """torch.optim.Adam: one first and second moment per parameter, step counted from 1.

    sparse_embedding=True: embedding.weight instead follows torch.optim.SparseAdam (its
    gradient is then (rows, values), see SparseAdam), at the same lr.

    Otherwise a gradient given as (rows, values) is the dense gradient in row form: values in
    rows, 0 in every other row (forward_backward(..., sparse_embedding=True)'s embedding
    gradient, which fit passes so: see _embedding_rows). Every row is updated, as from the
    dense gradient, to the bit (adam_update_rows), and clipping takes the dense gradient's
    norm, to the bit (clip_grad_norm_rows); the dense gradient is never formed.
    """

    def __init__(self, params, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, sparse_embedding=False):
        self.lr, self.beta1, self.beta2, self.eps, self.weight_decay = lr, beta1, beta2, eps, weight_decay
        dense = {name: p for name, p in params.items() if not (sparse_embedding and name == "embedding.weight")}
        # np.zeros, not zeros_like (which writes every zero): a large array's pages stay untouched
        # until the first step, so moments replaced by a checkpoint's (resuming) cost no memory.
        self.m = {name: np.zeros(p.shape, np.float32) for name, p in dense.items()}
        self.v = {name: np.zeros(p.shape, np.float32) for name, p in dense.items()}
        self.sparse = SparseAdam(*params["embedding.weight"].shape, beta1, beta2, eps) if sparse_embedding else None
        self.step_count = 0

    def touched(self):
        """Other code may have written the parameters: nothing to forget, Adam's steps read every row."""

    def step(self, ops, params, grads):
        self.step_count += 1
        hyper = (self.step_count, self.lr, self.beta1, self.beta2, self.eps, self.weight_decay)
        for name in self.m:
            grad = grads[name]
            if isinstance(grad, tuple):  # row form
                ops.adam_update_rows(params[name], *grad, self.m[name], self.v[name], *hyper)
            else:
                ops.adam_update(params[name], grad, self.m[name], self.v[name], *hyper)
        if self.sparse is not None:
            self.sparse.step(ops, params["embedding.weight"], *grads["embedding.weight"], self.lr)

    def clipped_step(self, ops, params, grads, max_norm):
        """clip_grad_norm(grads, max_norm), then step; a gradient in row form is clipped by
        clip_grad_norm_rows (the dense gradient's norm and scaled values, to the bit)."""
        if self.sparse is None and any(isinstance(g, tuple) for g in grads.values()):
            row_form = [(*g, len(params[name])) if isinstance(g, tuple) else g for name, g in grads.items()]
            ops.clip_grad_norm_rows(row_form, max_norm)
            self.step(ops, params, grads)
            return
        super().clipped_step(ops, params, grads, max_norm)

    def arrays(self):
        arrays = {**{f"m.{k}": v for k, v in self.m.items()}, **{f"v.{k}": v for k, v in self.v.items()}}
        return {**arrays, **self.sparse.arrays()} if self.sparse is not None else arrays

    def load_arrays(self, arrays):
        """Take over a checkpoint's arrays (model_dir.load_training_state reads them fresh):
        copied only when they are not writeable float32 C-contiguous arrays already."""
        for name in self.m:
            self.m[name] = _owned_float32(arrays[f"m.{name}"])
            self.v[name] = _owned_float32(arrays[f"v.{name}"])
        if self.sparse is not None:
            self.sparse.load_arrays(arrays)


class SparseAdam:
    """torch.optim.SparseAdam for the embedding: each step updates only the rows the batch
    used, from their summed gradient (rows, values), and moments exist only for rows seen
    so far: row slot[id] of m and v, slots handed out in order of first sight. The dense
    V x E gradient is never formed, and memory grows with the rows seen, not with V."""

    def __init__(self, vocab_size, dim, beta1=0.9, beta2=0.999, eps=1e-8):
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.slot = np.full(vocab_size, -1, dtype=np.int32)
        self.seen = np.empty(0, dtype=np.int32)  # the ids of slots 0, 1, ...
        self.m = np.zeros((0, dim), dtype=np.float32)  # capacity >= len(seen) rows
        self.v = np.zeros((0, dim), dtype=np.float32)
        self.step_count = 0

    def _slots(self, rows):
        new = rows[self.slot[rows] < 0]
        if new.size:
            self.slot[new] = np.arange(len(self.seen), len(self.seen) + len(new), dtype=np.int32)
            self.seen = np.concatenate([self.seen, new])
            if len(self.seen) > len(self.m):  # grow by doubling: few copies over a run
                capacity = max(len(self.seen), 2 * len(self.m))
                for name in ("m", "v"):
                    grown = np.zeros((capacity, self.m.shape[1]), dtype=np.float32)
                    grown[: len(getattr(self, name))] = getattr(self, name)
                    setattr(self, name, grown)
        return self.slot[rows]

    def step(self, ops, param, rows, values, lr):
        self.step_count += 1
        slots = self._slots(rows)  # first: it may grow m and v
        ops.sparse_adam_update(
            param, rows, values, self.m, self.v, slots, self.step_count, lr, self.beta1, self.beta2, self.eps
        )

    def arrays(self):
        n = len(self.seen)
        # Optimizer files hold floats only: ids and the step count as float64 (exact below 2**53).
        return {
            "sparse.seen": self.seen.astype(np.float64),
            "sparse.m": self.m[:n],
            "sparse.v": self.v[:n],
            "sparse.step": np.array([self.step_count], dtype=np.float64),
        }

    def load_arrays(self, arrays):
        self.seen = np.array(arrays["sparse.seen"], dtype=np.int32)
        self.m = _owned_float32(arrays["sparse.m"])
        self.v = _owned_float32(arrays["sparse.v"])
        self.slot[:] = -1
        self.slot[self.seen] = np.arange(len(self.seen), dtype=np.int32)
        self.step_count = int(np.asarray(arrays["sparse.step"])[0])


def _gradient_arrays(grads):
    """Every gradient array, the sparse embedding's values included (for clipping)."""
    return [g[1] if isinstance(g, tuple) else g for g in grads.values()]


class SGD(_ClipThenStep):
    """torch.optim.SGD: plain, with a momentum buffer per parameter (set to the first gradient), or Nesterov.

    A sparse gradient (rows, values), the embedding's with sparse_embedding=True, takes torch's
    plain step on those rows alone (sparse_sgd_update); fit refuses momentum and weight
    decay with it. Otherwise (rows, values) is the dense gradient in row form, as for Adam:
    the step (sgd_update_rows) and the clipping (clipped_sgd_update) are the dense gradient's,
    to the bit. Plain SGD leaves the rows without gradient unread once its own steps have
    written every row of the same array and nothing has touched it since (touched()): only a
    subnormal value there could change under a zero gradient, and the kernels leave none.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, sparse_embedding=False):
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self.sparse_embedding = sparse_embedding
        self.buf = {name: np.zeros(p.shape, np.float32) for name, p in params.items()} if momentum else {}
        self.step_count = 0
        self._settled = {}  # name -> the array a step of this optimizer last wrote whole

    def touched(self):
        """The parameters may have been written by other code (a callback ran): the next step
        writes every row again."""
        self._settled = {}

    def _skip_absent_rows(self, params, grads):
        """skip_absent_rows for this step's row-form gradients: whether their arrays are settled."""
        row_form = [name for name, grad in grads.items() if isinstance(grad, tuple)]
        return bool(row_form) and all(self._settled.get(name) is params[name] for name in row_form)

    def _settle(self, params, grads):
        """After a step: its row-form parameters are settled (see the class docstring)."""
        self._settled = {name: params[name] for name, grad in grads.items() if isinstance(grad, tuple)}

    def step(self, ops, params, grads):
        self.step_count += 1
        skip = self._skip_absent_rows(params, grads)
        for name, param in params.items():
            if isinstance(grads[name], tuple) and self.sparse_embedding:
                ops.sparse_sgd_update(param, *grads[name], self.lr)
                continue
            hyper = (self.buf.get(name), self.step_count, self.lr, self.momentum, self.weight_decay, self.nesterov)
            if isinstance(grads[name], tuple):  # row form
                ops.sgd_update_rows(param, *grads[name], *hyper, skip_absent_rows=skip)
            else:
                ops.sgd_update(param, grads[name], *hyper)
        self._settle(params, grads)

    def clipped_step(self, ops, params, grads, max_norm):
        """clip_grad_norm(grads, max_norm), then step: one op (clipped_sgd_update) unless the
        embedding's gradient is sparse (sparse_embedding=True), which reads the gradients twice
        instead of four times and leaves them unscaled; the parameters and buffers are the same
        to the bit."""
        if self.sparse_embedding:
            super().clipped_step(ops, params, grads, max_norm)
            return
        self.step_count += 1
        names = list(params)
        ops.clipped_sgd_update(
            [params[name] for name in names],
            [grads[name] for name in names],
            [self.buf[name] for name in names] if self.momentum else None,
            self.step_count,
            self.lr,
            max_norm,
            self.momentum,
            self.weight_decay,
            self.nesterov,
            skip_absent_rows=self._skip_absent_rows(params, grads),
        )
        self._settle(params, grads)

    def arrays(self):
        return {f"momentum.{k}": v for k, v in self.buf.items()}

    def load_arrays(self, arrays):
        for name in self.buf:
            self.buf[name] = _owned_float32(arrays[f"momentum.{name}"])


def _embedding_rows(model, settings, dist):
    """Whether fit asks forward_backward for the embedding's gradient in row form
    (sparse_embedding=True): always with sparse_embedding, and otherwise too, as Adam and SGD
    then update the embedding as from the dense gradient, to the bit, without the dense V x E
    gradient being zeroed, scattered into and read (see Adam, SGD). Not with tied weights (the
    shared matrix's gradient is dense, the decoder's) or several ranks (which sum dense
    gradients)."""
    return settings["sparse_embedding"] or (not model.tie_weights and dist.size == 1)


def _make_optimizer(settings, params, lr):
    if settings["optimizer"] == "sgd":
        sparse = settings["sparse_embedding"]
        return SGD(params, lr, settings["momentum"], settings["nesterov"], settings["weight_decay"], sparse)
    return Adam(params, lr, weight_decay=settings["weight_decay"], sparse_embedding=settings["sparse_embedding"])


def epoch_lr(lr, lr_decay, lr_decay_epoch, epoch):
    """The learning rate of epoch (counted from 1) under the epoch schedule of Zaremba et al.:
    lr until epoch lr_decay_epoch - 1, then multiplied by lr_decay once more every epoch."""
    return lr * lr_decay ** max(epoch - lr_decay_epoch + 1, 0)


class _InterruptFlag:
    """First Ctrl-C: finish the current batch, checkpoint, stop. Second: stop at once."""

    def __init__(self):
        self.raised = False
        self.saving = False  # a checkpoint is being written: no interrupt may land inside it
        self.abort_after_save = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.raised:
            if self.saving:  # stop at once, but only once the checkpoint is whole
                self.abort_after_save = True
                return
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _make_batches(model, data, y, seq_len, batch_size, stride, shuffle, stateful, rows=all_rows):
    if y is not None:
        x, y = model.check_batch(data, y)
        return ArrayBatches(x, y, batch_size, shuffle, model.seed, rows), x.size
    ids = check_corpus("ids", data, model.vocab_size)
    if len(ids) < seq_len + 1:
        raise ValueError(
            f"the corpus has {len(ids)} tokens; training windows of seq_len={seq_len} need at least {seq_len + 1}"
        )
    if stateful:
        if len(ids) - 1 < batch_size * seq_len:
            raise ValueError(
                f"stateful training cuts the corpus into batch_size={batch_size} streams of at least "
                f"seq_len={seq_len} tokens: it needs {batch_size * seq_len + 1} tokens, has {len(ids)}"
            )
        return ContiguousBatches(ids, seq_len, batch_size, rows), len(ids)
    return WindowBatches(model.ops, ids, seq_len, batch_size, stride, shuffle, model.seed, rows), len(ids)


def _progress_bar(progress, total, initial, epoch, epochs):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=True, dynamic_ncols=True
    )


def _trains_a_copy(function):
    """Decorate fit: the model trains on a copy of its weights, so that other threads reading
    it meanwhile see the weights as they were (LSTMNetwork.training_snapshot)."""

    @functools.wraps(function)
    def run(model, *args, **kwargs):
        with model.training_snapshot():
            return function(model, *args, **kwargs)

    return run


@_trains_a_copy
@distributed.aborts_every_rank
def fit(
    model,
    data,
    y=None,
    *,
    seq_len=100,
    batch_size=32,
    epochs=10,
    lr=1e-3,
    stride=None,
    shuffle=True,
    stateful=False,
    val_ids=None,
    clip_norm=None,
    weight_decay=0.0,
    lr_decay=None,
    lr_patience=0,
    early_stopping=None,
    checkpoint_dir=None,
    resume=False,
    tokenizer=None,
    progress=True,
    max_batches=None,
    callback=None,
    comm=None,
    comm_timeout=distributed.DEFAULT_TIMEOUT,
    optimizer="adam",
    momentum=0.0,
    nesterov=False,
    lr_decay_epoch=None,
    sparse_embedding=False,
    metadata=None,
    batch_callback=None,
    restore_best=False,
):
    """Train with Adam or SGD on a 1-D id array (cut into windows) or on pre-made windows (x, y).

    data: 1-D token ids, or (N, T) input windows with y (N, T) their targets. 1-D ids may be
        a memory map (fastlm.open_ids, np.memmap): read a batch at a time, never copied whole.
    seq_len, stride: window length and the distance between window starts. Every window
        predicts all of its seq_len next tokens, so stride=None (seq_len: non-overlapping)
        makes each token a target once per epoch; stride=1 (a window at every position)
        makes it a target up to seq_len times, at about seq_len times the cost per epoch.
        (The classic recipe's window at every position predicts only the token after it.)
    shuffle: a new seeded window order every epoch.
    stateful: read the corpus as batch_size contiguous streams and carry the hidden
        state (detached) from one batch to the next (truncated BPTT); ignores stride/shuffle.
    val_ids: evaluated after each epoch (val_loss, val_perplexity in the history).
    clip_norm: clip the gradients' global L2 norm. weight_decay: L2 term (as torch's Adam and SGD).
    optimizer: "adam" (torch.optim.Adam) or "sgd" (torch.optim.SGD: with momentum > 0 a
        momentum buffer, with nesterov=True Nesterov momentum).
    lr_decay: multiply lr by this when val loss did not improve for more than lr_patience epochs;
        with lr_decay_epoch=k instead once more every epoch from epoch k on (the schedule of
        Zaremba et al.: epoch e, counted from 1, trains with lr * lr_decay ** max(e - k + 1, 0)).
    early_stopping: stop after this many epochs without val-loss improvement.
    restore_best: when training ends (all epochs, or early stopping), leave the model with
        the weights of the epoch of lowest val loss (needs val_ids), as Keras's
        EarlyStopping(restore_best_weights=True). The checkpoint stays the last epoch's.
    checkpoint_dir: save model + optimizer + position after every epoch (and on Ctrl-C);
        resume=True continues from it exactly. With val_ids, checkpoint_dir/best is also a
        model directory (fastlm.load reads it) holding the epoch of lowest val loss so far.
        A fresh run (resume=False) replaces both. tokenizer: saved with the checkpoints
        (None: model.tokenizer).
    progress: a progress bar with loss, perplexity, tokens/s and ETA; as it closes each
        epoch it shows the validation loss and perplexity too.
    max_batches: stop (and checkpoint) after this many batches in this call.
    callback: called with the history after every epoch (on every rank); returning False
        stops training there (checkpointed, as max_batches does).
    batch_callback: called after every batch (every optimizer step) with a dict: "epoch"
        (from 1), "batch" (from 1 within the epoch), "batches" (per epoch), "loss" (this
        batch's mean loss), "lr". Returning False stops training after that batch
        (checkpointed: resume=True continues exactly from there).
    Ctrl-C (SIGINT): the current batch finishes, a checkpoint is written (with
        checkpoint_dir) and KeyboardInterrupt is raised, so that a script does not go on
        with a half-trained model; a KeyboardInterrupt raised by a callback is handled the
        same way. A second Ctrl-C raises at once (never inside a checkpoint being written).
        The exception's checkpoint_dir attribute is the directory written, else None.
    comm: an mpi4py communicator (MPI.COMM_WORLD) for data-parallel training: started on N
        ranks, each takes rank 0's weights and its share of every global batch of
        N * batch_size rows; one Allreduce per step sums the gradients, so the model trained
        is the one a single process trains with batch N * batch_size. Rank 0 alone writes
        checkpoints and shows progress. Ranks given different settings fail at the start on
        every rank; an exception on one rank ends all of them (MPI_Abort).
    comm_timeout: with comm, the longest in seconds a rank waits for the others at one step
        (or at the start-up checks, or while rank 0 saves a checkpoint) before it raises
        TimeoutError naming the step, which ends every rank: a rank that hangs without dying
        would otherwise stop the job for ever. None waits for ever.
    sparse_embedding: update only the embedding rows each batch uses, never forming the dense
        vocab_size x embed_dim gradient: for large vocabularies. With Adam as
        torch.optim.SparseAdam (moments only for rows seen; eps added before the bias
        correction), with plain SGD as torch.optim.SGD on a sparse gradient. Not with
        weight_decay (SparseAdam has none; SGD fails on a sparse gradient with it), SGD's
        momentum (its buffer would grow dense) or comm.
    metadata: a JSON-serialisable dict of the caller's, written as it is into every
        checkpoint's trainer.json ("metadata"), so that a resumed run can find it there
        (`fastlm train` keeps its command-line settings in it).

    Returns the history: lists per epoch of "loss", "val_loss", "val_perplexity",
    "tokens_per_s", "lr"; "interrupted" (False) is set when max_batches or a callback
    stopped it before the last epoch's end.
    """
    comm_timeout = check_number("comm_timeout", comm_timeout, "(0, inf)", allow_none=True)
    dist = distributed.group(comm, comm_timeout)
    sparse_embedding = check_bool("sparse_embedding", sparse_embedding)
    if tokenizer is None:
        tokenizer = model.tokenizer
    if metadata is not None:
        _check_metadata(metadata)
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    seq_len = check_int("seq_len", seq_len, 1)
    stride = seq_len if stride is None else check_int("stride", stride, 1)
    lr = check_number("lr", lr, "(0, inf)")
    shuffle = check_bool("shuffle", shuffle)
    stateful = check_bool("stateful", stateful)
    clip_norm = check_number("clip_norm", clip_norm, "(0, inf)", allow_none=True)
    weight_decay = check_number("weight_decay", weight_decay, "[0, inf)")
    lr_decay = check_number("lr_decay", lr_decay, "(0, 1)", allow_none=True)
    lr_patience = check_int("lr_patience", lr_patience, 0)
    early_stopping = check_int("early_stopping", early_stopping, 1, allow_none=True)
    resume = check_bool("resume", resume)
    progress = check_bool("progress", progress)
    max_batches = check_int("max_batches", max_batches, 1, allow_none=True)
    for name, value in (("callback", callback), ("batch_callback", batch_callback)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable or None, got {value!r}")
    restore_best = check_bool("restore_best", restore_best)
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    momentum = check_number("momentum", momentum, "[0, inf)")
    nesterov = check_bool("nesterov", nesterov)
    if momentum and optimizer != "sgd":
        raise ValueError(
            f"momentum applies to optimizer='sgd' (Adam has its own betas), got momentum={momentum!r} "
            f"with optimizer={optimizer!r}"
        )
    if nesterov and not momentum > 0:
        raise ValueError("nesterov=True needs momentum > 0 (Nesterov momentum without momentum is plain SGD)")
    if sparse_embedding and weight_decay:
        raise ValueError(
            "sparse_embedding=True gives the embedding a sparse gradient, for which PyTorch defines no "
            f"weight decay (SparseAdam has none, SGD fails on it); got weight_decay={weight_decay}"
        )
    if sparse_embedding and optimizer == "sgd" and momentum:
        raise ValueError(
            f"sparse_embedding=True with optimizer='sgd', momentum={momentum!r}: momentum is not supported "
            "with a sparse embedding gradient (its buffer would grow to the dense vocab_size x embed_dim "
            "matrix sparse updates avoid); use momentum=0 or optimizer='adam'"
        )
    if sparse_embedding and model.tie_weights:
        raise ValueError(
            "sparse_embedding=True cannot go with tie_weights=True: the shared matrix's gradient is "
            "dense (the decoder's)"
        )
    if sparse_embedding and dist.size > 1:
        raise ValueError(
            "sparse_embedding=True is not supported with comm (data-parallel training sums dense gradients)"
        )
    lr_decay_epoch = check_int("lr_decay_epoch", lr_decay_epoch, 1, allow_none=True)
    if lr_decay_epoch is not None and lr_decay is None:
        raise ValueError(
            f"lr_decay_epoch={lr_decay_epoch} starts the epoch schedule, which multiplies lr by "
            "lr_decay every epoch: pass lr_decay too"
        )
    if ((lr_decay is not None and lr_decay_epoch is None) or early_stopping is not None) and val_ids is None:
        raise ValueError("lr_decay (without lr_decay_epoch) and early_stopping watch the validation loss: pass val_ids")
    if restore_best and val_ids is None:
        raise ValueError("restore_best=True keeps the weights of the epoch of lowest validation loss: pass val_ids")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    if checkpoint_dir is not None:
        check_directory("checkpoint_dir", checkpoint_dir)
    check_tokenizer(tokenizer, model.vocab_size)
    if val_ids is not None:
        val_ids = check_corpus("val_ids", val_ids, model.vocab_size)
        if len(val_ids) < 2:
            raise ValueError(f"val_ids needs at least 2 tokens to score a prediction, got {len(val_ids)}")
    batches, data_tokens = _make_batches(
        model, data, y, seq_len, batch_size * dist.size, stride, shuffle, stateful, dist.rows
    )

    settings = dict(
        seq_len=seq_len,
        batch_size=batch_size * dist.size,
        stride=stride,
        shuffle=bool(shuffle),
        stateful=bool(stateful),
        clip_norm=clip_norm,
        weight_decay=weight_decay,
        lr_decay=lr_decay,
        lr_patience=lr_patience,
        early_stopping=early_stopping,
        data_tokens=int(data_tokens),
        optimizer=optimizer,
        momentum=momentum,
        nesterov=nesterov,
        lr_decay_epoch=lr_decay_epoch,
        lr=float(lr),
        sparse_embedding=bool(sparse_embedding),
    )
    opt = _make_optimizer(settings, model.trainable(), lr)
    embedding_rows = _embedding_rows(model, settings, dist)
    trainer = dict(
        epoch=0,
        batch=0,
        lr=float(lr),
        best_val_loss=None,
        best_epoch=None,
        epochs_without_improvement=0,
        stopped_early=False,
        epoch_loss_sum=0.0,
        epoch_tokens=0,
        epoch_seconds=0.0,
        history={"epoch": [], "loss": [], "val_loss": [], "val_perplexity": [], "tokens_per_s": [], "lr": []},
    )
    carry = None  # the hidden state carried between contiguous batches
    if checkpoint_dir is not None and dist.rank == 0:  # the one rank that writes: the others never touch it
        model_dir.check_writable(checkpoint_dir)  # a read-only directory: now, not after the first epoch
        if not resume:
            model_dir.remove_best(checkpoint_dir)  # a previous run's: this run starts afresh
    if resume:
        arrays, saved = model_dir.load_training_state(checkpoint_dir)  # FileNotFoundError when there is none
        recorded = {**SETTINGS_BEFORE_RECORDED, "lr": settings["lr"], **saved["settings"]}
        changed = [
            f"{k} was {recorded.get(k)!r}, now {settings[k]!r}" for k in RESUME_KEYS if recorded.get(k) != settings[k]
        ]
        if changed:
            raise ValueError("cannot resume with different training settings: " + "; ".join(changed))
        _check_position(saved, batches, epochs, model_dir.save_path(checkpoint_dir) / model_dir.TRAINER_FILE)
        try:
            saved_tokenizer = model_dir.load_into(checkpoint_dir, model)
        except ValueError as error:
            raise ValueError(f"cannot resume: {error}") from None
        opt = _make_optimizer(settings, model.trainable(), saved["lr"])
        opt.load_arrays(arrays)
        opt.step_count = saved["adam_step"]  # the optimizer's step count, whichever the optimizer
        trainer = {k: saved.get(k, default) for k, default in trainer.items()}  # best_epoch: newer than some
        if restore_best and trainer["best_val_loss"] is not None and not _best_dir(checkpoint_dir).is_dir():
            raise ValueError(
                f"cannot restore_best: the checkpoint in {checkpoint_dir} keeps no {model_dir.BEST_DIR}/ model "
                "(written by an older fastlm); resume without restore_best"
            )
        if stateful and "carry.h.0" in arrays:
            carry = [(arrays[f"carry.h.{k}"], arrays[f"carry.c.{k}"]) for k in range(model.num_layers)]
        if tokenizer is None:
            tokenizer = saved_tokenizer
        check_tokenizer(tokenizer, model.vocab_size)
    if dist.size > 1:
        dist.check_same(
            dict(
                settings,
                **model.config(),
                epochs=epochs,
                lr=lr,
                resume=bool(resume),
                max_batches=max_batches,
                backend=model.backend,
                data=distributed.fingerprint(np.asarray(data)),
                val=None if val_ids is None else distributed.fingerprint(val_ids),
            )
        )
    dist.broadcast_parameters(model.trainable())

    def saving(directory, training):
        """model_dir.write with no Ctrl-C landing inside it (a second one waits until it is whole)."""
        interrupt.saving = True
        try:
            model_dir.write(directory, model, tokenizer=tokenizer, training=training)
        finally:
            interrupt.saving = False
        if interrupt.abort_after_save:
            raise KeyboardInterrupt

    def checkpoint():
        _require_finite_weights(model, trainer)
        if checkpoint_dir is None or dist.rank != 0:  # one rank writes: they all hold the same state
            return
        state = dict(trainer, settings=settings, adam_step=opt.step_count)
        if metadata is not None:
            state["metadata"] = metadata
        arrays = opt.arrays()
        if carry is not None:
            for k, (h, c) in enumerate(carry):
                arrays[f"carry.h.{k}"], arrays[f"carry.c.{k}"] = h, c
        saving(checkpoint_dir, (arrays, state))

    def keep_best():
        """After an epoch of lower val loss: its weights in memory (restore_best) and in
        checkpoint_dir/best, written before the checkpoint that records it, so that a kill
        between the two leaves a checkpoint whose replayed epoch writes the same best again."""
        nonlocal best_state
        if restore_best:
            best_state = model.state_dict()
        if checkpoint_dir is not None and dist.rank == 0:
            _require_finite_weights(model, trainer)
            saving(_best_dir(checkpoint_dir), None)

    def interrupted():
        """The KeyboardInterrupt fit raises after Ctrl-C, the checkpoint written."""
        error = KeyboardInterrupt()
        error.checkpoint_dir = checkpoint_dir
        error.history = history
        return distributed.on_every_rank(error)  # the ranks agreed on stopping: no MPI_Abort

    history = trainer["history"]
    best_state = None  # restore_best: the best epoch's weights, when it was reached in this call
    batches_run = 0
    with _InterruptFlag() as interrupt:
        while trainer["epoch"] < epochs and not trainer["stopped_early"]:
            epoch = trainer["epoch"]
            if trainer["batch"] == 0:
                carry = None
            if lr_decay_epoch is not None:
                opt.lr = trainer["lr"] = epoch_lr(lr, lr_decay, lr_decay_epoch, epoch + 1)
            bar = _progress_bar(progress and dist.rank == 0, len(batches), trainer["batch"], epoch, epochs)
            started = time.perf_counter() - trainer["epoch_seconds"]
            stop_asked = False
            for x, y_batch in batches.epoch(epoch, trainer["batch"]):
                rows = batches.batch_rows(trainer["batch"])  # of the global batch, of which this rank has x
                rng = RowStreams(model.seed, epoch, trainer["batch"], dist.rows(rows)[0], len(x))
                loss, grads, final_state = (
                    model.forward_backward(
                        x, y_batch, initial_state=carry, train=True, rng=rng, sparse_embedding=embedding_rows
                    )
                    if len(x)
                    else (0.0, None, carry)
                )
                where = f"epoch {epoch + 1}, batch {trainer['batch'] + 1}"  # named if the others never come
                loss, grads, stop = dist.reduce_step(grads, loss, len(x), rows, interrupt.raised, where=where)
                interrupt.raised = stop
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged: the loss is {loss} at epoch {epoch + 1}, batch "
                        f"{trainer['batch'] + 1}; lower lr or set clip_norm"
                    )
                if clip_norm is None:
                    opt.step(model.ops, model.trainable(), grads)
                else:
                    opt.clipped_step(model.ops, model.trainable(), grads, clip_norm)
                if stateful:
                    carry = final_state
                trainer["batch"] += 1
                trainer["epoch_loss_sum"] += loss * rows * x.shape[1]
                trainer["epoch_tokens"] += rows * x.shape[1]
                trainer["epoch_seconds"] = time.perf_counter() - started
                batches_run += 1
                if bar is not None:
                    mean = trainer["epoch_loss_sum"] / trainer["epoch_tokens"]
                    speed = trainer["epoch_tokens"] / max(trainer["epoch_seconds"], 1e-9)
                    bar.set_postfix(_bar_figures(mean, speed), refresh=False)
                    bar.update(1)
                if batch_callback is not None:
                    info = dict(epoch=epoch + 1, batch=trainer["batch"], batches=len(batches), loss=loss, lr=opt.lr)
                    stop_asked = _call_back(batch_callback, info, interrupt)
                    opt.touched()  # the callback may have written the weights
                    if dist.size > 1:  # a callback's stop must be every rank's
                        where = f"after the batch callback of epoch {epoch + 1}, batch {trainer['batch']}"
                        stop_asked = dist.any(stop_asked, where=where)
                        interrupt.raised = dist.any(interrupt.raised, where=where)
                if interrupt.raised or stop_asked or (max_batches is not None and batches_run >= max_batches):
                    break
            if trainer["batch"] < len(batches):  # stopped inside the epoch: checkpoint the position
                if bar is not None:
                    bar.close()
                checkpoint()
                if interrupt.raised:
                    raise interrupted()
                history["interrupted"] = False
                return history
            improved = _finish_epoch(
                model,
                trainer,
                opt,
                val_ids,
                seq_len,
                batch_size,
                lr_decay if lr_decay_epoch is None else None,
                lr_patience,
                early_stopping,
            )
            if bar is not None:  # the epoch's validation figures as its bar closes
                figures = _bar_figures(history["loss"][-1], history["tokens_per_s"][-1], history["val_loss"][-1])
                bar.set_postfix(figures, refresh=False)
                bar.close()
            if improved:
                keep_best()
            checkpoint()
            if callback is not None:
                stop_asked = _call_back(callback, history, interrupt) or stop_asked
                opt.touched()
            interrupt.raised = dist.any(  # a Ctrl-C since the last step's agreement
                interrupt.raised, where=f"at the end of epoch {epoch + 1}"
            )
            if interrupt.raised:
                raise interrupted()
            stopping = stop_asked or (max_batches is not None and batches_run >= max_batches)
            if stopping and trainer["epoch"] < epochs and not trainer["stopped_early"]:
                history["interrupted"] = False  # stopped at an epoch boundary
                return history
    history.pop("interrupted", None)
    if restore_best and trainer["best_epoch"] is not None and trainer["best_epoch"] != trainer["epoch"]:
        if best_state is None:  # reached before a resume: read back from checkpoint_dir/best
            best_state = model_dir.load(_best_dir(checkpoint_dir), type(model), model.backend).state_dict()
        model.load_state_dict(best_state)
    return history


def _check_position(saved, batches, epochs, path):
    """A checkpoint's position (read from path, its values checked one by one by model_dir)
    against this run's batches: ValueError naming path, the key and the value when the
    position is not one this run's training could have reached, which would otherwise skew
    the epoch's loss or skip what remains of it without a word."""
    per_epoch = len(batches)
    epoch, batch = saved["epoch"], saved["batch"]
    if epoch > epochs or (epoch == epochs and batch):
        raise ValueError(
            f"cannot resume: {path} records 'epoch' {epoch} done and 'batch' {batch} of the next, "
            f"more than this run's epochs={epochs}"
        )
    if batch >= per_epoch:
        raise ValueError(f"{path} is corrupted: 'batch' {batch} lies outside an epoch of {per_epoch} batches")
    tokens = batches.tokens_before(batch)
    if saved.get("epoch_tokens", tokens) != tokens:
        raise ValueError(
            f"{path} is corrupted: 'epoch_tokens' {saved['epoch_tokens']!r} after {batch} batch(es) of this data, "
            f"which hold {tokens}"
        )
    steps = epoch * per_epoch + batch
    if saved["adam_step"] != steps:
        raise ValueError(
            f"{path} is corrupted: 'adam_step' {saved['adam_step']!r}, but {epoch} epoch(s) of {per_epoch} "
            f"batches and {batch} batch(es) make {steps} optimizer steps"
        )


def _check_metadata(metadata):
    """metadata must survive the round trip through trainer.json: a dict that JSON can write."""
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata must be JSON-serialisable (it is saved in trainer.json): {error}") from None


def _best_dir(checkpoint_dir):
    return Path(checkpoint_dir) / model_dir.BEST_DIR


def _call_back(function, argument, interrupt):
    """Call a user's callback: True when it returned False (stop training); a KeyboardInterrupt
    it raises counts as Ctrl-C (the step it followed is complete, so a checkpoint holds it)."""
    try:
        return function(argument) is False
    except KeyboardInterrupt:
        interrupt.raised = True
        return False


def _bar_figures(loss, tokens_per_s, val_loss=None):
    """The progress bar's postfix: the epoch's mean loss so far, and at its end the validation loss."""
    figures = dict(loss=f"{loss:.3f}", ppl=f"{math.exp(min(loss, 50)):.1f}", tok_s=f"{tokens_per_s:.0f}")
    if val_loss is not None:
        figures.update(val_loss=f"{val_loss:.3f}", val_ppl=f"{math.exp(min(val_loss, 50)):.1f}")
    return figures


def _require_finite_weights(model, trainer):
    """A step with a finite loss can still push weights to infinity (a huge lr): stop before
    they are saved or returned, since no later load would accept them."""
    for name, value in model.params.items():
        if not np.isfinite(value).all():
            raise FloatingPointError(
                f"training diverged: {name} holds NaN or infinity after "
                f"{trainer['epoch']} epoch(s) and {trainer['batch']} batch(es) of the next; "
                "lower lr or set clip_norm"
            )


def _finish_epoch(model, trainer, opt, val_ids, seq_len, batch_size, lr_decay, lr_patience, early_stopping):
    """Record the epoch, then apply the plateau rules to the validation loss (lr_decay None: no
    plateau decay). True when the validation loss is the lowest so far."""
    history = trainer["history"]
    history["epoch"].append(trainer["epoch"] + 1)
    history["loss"].append(trainer["epoch_loss_sum"] / max(1, trainer["epoch_tokens"]))
    history["tokens_per_s"].append(trainer["epoch_tokens"] / max(trainer["epoch_seconds"], 1e-9))
    history["lr"].append(opt.lr)
    result = model.evaluate(val_ids, seq_len=seq_len, batch_size=batch_size) if val_ids is not None else {}
    val_loss = result.get("loss")
    history["val_loss"].append(val_loss)
    history["val_perplexity"].append(result.get("perplexity"))
    if val_loss is not None:
        if trainer["best_val_loss"] is None or val_loss < trainer["best_val_loss"]:
            trainer["best_val_loss"] = val_loss
            trainer["best_epoch"] = trainer["epoch"] + 1
            trainer["epochs_without_improvement"] = 0
        else:
            trainer["epochs_without_improvement"] += 1
            if lr_decay is not None and trainer["epochs_without_improvement"] > lr_patience:
                opt.lr *= lr_decay
            if early_stopping is not None and trainer["epochs_without_improvement"] >= early_stopping:
                trainer["stopped_early"] = True
    trainer["lr"] = opt.lr
    trainer["epoch"] += 1
    trainer["batch"] = 0
    trainer["epoch_loss_sum"], trainer["epoch_tokens"], trainer["epoch_seconds"] = 0.0, 0, 0.0
    return trainer["best_epoch"] == trainer["epoch"]
