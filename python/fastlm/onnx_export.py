"""A model as an ONNX graph, for hosts that run their own runtime (ONNX Runtime and others).

The graph computes what the model computes, with the LSTM state in and out, so that one file
serves scoring (a whole batch of sequences from a zero state) and generation (one token at a
time, carrying the state):

    inputs   ids (B, T) int64, h0 (L, B, H) float32, c0 (L, B, H) float32
    outputs  log_probs (B, T, V) float32 (natural log), hn (L, B, H), cn (L, B, H)

    Transpose ids to (T, B) -> Gather (the embedding) -> ONNX LSTM per layer -> Transpose to
    (B, T, H) -> MatMul + Add (the decoder) -> LogSoftmax

B and T are dynamic. ONNX's LSTM takes its gates in the order i, o, f, c where fastlm (and
PyTorch) store i, f, g, o, so each layer's weights and biases are reordered on the way out;
its bias input is fastlm's bias_ih then bias_hh. The LSTM runs time-major (layout 0):
ONNX Runtime's LSTM does not implement the batch-first layout. A tied decoder reads the one
embedding matrix through a Transpose that runtimes fold into a constant, so the file holds it
once. An adaptive-softmax decoder exports its full distribution, as
``torch.nn.AdaptiveLogSoftmaxWithLoss.log_prob`` gives it: the head's log-softmax for the
shortlist, and for each cluster the tail's log-softmax plus the head's log-probability of
the cluster, concatenated in id order.

The onnx package is an optional dependency (``pip install 'fastlm[onnx]'``), imported only
when a model is exported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fastlm import adaptive
from fastlm.atomic import atomic_write

OPSET = 17  # LogSoftmax on one axis (13+), Squeeze/Slice axes as inputs; run by every current runtime
IR_VERSION = 8  # the IR version of opset 17, so that older runtimes open the file too
PROTOBUF_LIMIT = 2**31 - 2**20  # one protobuf message (the whole file) must stay below 2 GiB
INSTALL_HINT = "pip install 'fastlm[onnx]'"

# fastlm's gate blocks (i, f, g, o) in the order ONNX's LSTM reads them (i, o, f, c).
ONNX_GATE_ORDER = (0, 3, 1, 2)


def import_onnx():
    """The onnx package, or an ImportError saying which extra brings it."""
    try:
        import onnx
    except ImportError as error:
        raise ImportError(
            f"exporting to ONNX needs the onnx package, which is not installed: {INSTALL_HINT} (or pip install onnx)"
        ) from error
    return onnx


def check_output_path(path, name="path"):
    """path as a Path whose file can be written: TypeError for a wrong type, OSError naming the
    path for a missing or unwritable directory or a directory in the file's place, before any work."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike), got {type(path).__name__}")
    given, path = os.fspath(path), Path(path)
    if str(path) in ("", "."):
        raise ValueError(f"{name} must name a file, got {given!r}")
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory, not a file", str(path))
    parent = path.resolve().parent
    if not parent.is_dir():
        raise FileNotFoundError(2, "the directory to write into does not exist", str(parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(13, "the directory is not writable", str(parent))
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(13, "the file exists and is not writable", str(path))
    return path


def onnx_gates(matrix):
    """A (4H, ...) weight or (4H,) bias with its gate blocks in ONNX's order."""
    blocks = np.split(matrix, 4, axis=0)
    return np.concatenate([blocks[k] for k in ONNX_GATE_ORDER], axis=0)


class _Graph:
    """The nodes and initialisers of a graph under construction, with unique value names."""

    def __init__(self, onnx):
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes, self.initializers = [], []

    def constant(self, name, value):
        array = np.ascontiguousarray(value)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, outputs, **attributes):
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=f"{op}_{len(self.nodes)}", **attributes))
        return outputs[0] if len(outputs) == 1 else outputs

    def slice(self, value, start, end, axis, out):
        """value[start:end] along axis (constant bounds)."""
        bounds = [
            self.constant(f"{out}.{part}", np.array([v], dtype=np.int64))
            for part, v in (("start", start), ("end", end), ("axis", axis))
        ]
        return self.node("Slice", [value, *bounds], out)


def _linear(graph, x, weight_name, weight, out, tied_to=None):
    """x @ weight.T as a MatMul with a (in, out) constant; tied_to: reuse that (out, in)
    initialiser through a Transpose instead of storing the matrix twice."""
    if tied_to is not None:
        transposed = graph.node("Transpose", [tied_to], f"{weight_name}.T", perm=[1, 0])
    else:
        transposed = graph.constant(f"{weight_name}.T", np.ascontiguousarray(weight.T))
    return graph.node("MatMul", [x, transposed], out)


def _full_decoder(graph, model, params, top):
    weight = params["decoder.weight"]
    tied = "embedding.weight" if model.tie_weights else None
    logits = _linear(graph, top, "decoder.weight", weight, "decoder.matmul", tied_to=tied)
    logits = graph.node("Add", [logits, graph.constant("decoder.bias", params["decoder.bias"])], "logits")
    return graph.node("LogSoftmax", [logits], "log_probs", axis=-1)


def _adaptive_decoder(graph, model, params, top):
    """torch.nn.AdaptiveLogSoftmaxWithLoss.log_prob: the full (B, T, V) log-probabilities."""
    head_weight, head_bias, projections, outputs = adaptive.decoder_arguments(params, len(model.cutoffs))
    shortlist = model.cutoffs[0]
    head = _linear(graph, top, "decoder.head.weight", head_weight, "head.matmul")
    if head_bias is not None:
        head = graph.node("Add", [head, graph.constant("decoder.head.bias", head_bias)], "head.logits")
    head = graph.node("LogSoftmax", [head], "head.log_probs", axis=-1)
    pieces = [graph.slice(head, 0, shortlist, -1, "shortlist.log_probs")]
    for i, (projection, output) in enumerate(zip(projections, outputs)):
        cluster = graph.slice(head, shortlist + i, shortlist + i + 1, -1, f"cluster{i}.log_prob")
        hidden = _linear(graph, top, f"decoder.tail.{i}.0.weight", projection, f"tail{i}.projection")
        logits = _linear(graph, hidden, f"decoder.tail.{i}.1.weight", output, f"tail{i}.logits")
        within = graph.node("LogSoftmax", [logits], f"tail{i}.log_probs", axis=-1)
        pieces.append(graph.node("Add", [within, cluster], f"cluster{i}.log_probs"))
    return graph.node("Concat", pieces, "log_probs", axis=-1)


def build(model, params=None):
    """The model's ONNX ModelProto (see the module docstring); params: the weights to export
    (default: the model's, as a reader sees them while fit runs)."""
    onnx = import_onnx()
    helper, TensorProto = onnx.helper, onnx.TensorProto
    p = model.reading_params() if params is None else params
    L, H, V = model.num_layers, model.hidden_size, model.vocab_size
    total = sum(value.nbytes for name, value in p.items() if not (model.tie_weights and name == "decoder.weight"))
    if total > PROTOBUF_LIMIT:
        raise ValueError(
            f"the model's weights take {total / 2**30:.2f} GiB, more than one ONNX file (a single "
            "protobuf message) can hold (2 GiB)"
        )
    graph = _Graph(onnx)
    graph.constant("embedding.weight", p["embedding.weight"])
    ids = graph.node("Transpose", ["ids"], "ids.time_major", perm=[1, 0])
    x = graph.node("Gather", ["embedding.weight", ids], "embedded", axis=0)  # (T, B, E)
    finals_h, finals_c = [], []
    for k in range(L):
        w = graph.constant(f"lstm.W{k}", onnx_gates(p[f"lstm.weight_ih_l{k}"])[None])
        r = graph.constant(f"lstm.R{k}", onnx_gates(p[f"lstm.weight_hh_l{k}"])[None])
        b = np.concatenate([onnx_gates(p[f"lstm.bias_ih_l{k}"]), onnx_gates(p[f"lstm.bias_hh_l{k}"])])
        b = graph.constant(f"lstm.B{k}", b[None])
        h0 = graph.slice("h0", k, k + 1, 0, f"h0.l{k}")
        c0 = graph.slice("c0", k, k + 1, 0, f"c0.l{k}")
        y, yh, yc = graph.node(
            "LSTM", [x, w, r, b, "", h0, c0], [f"lstm{k}.Y", f"lstm{k}.Y_h", f"lstm{k}.Y_c"], hidden_size=H
        )
        x = graph.node("Squeeze", [y, graph.constant(f"lstm{k}.squeeze_axes", np.array([1], np.int64))], f"lstm{k}.out")
        finals_h.append(yh)
        finals_c.append(yc)
    graph.node("Concat", finals_h, "hn", axis=0)
    graph.node("Concat", finals_c, "cn", axis=0)
    top = graph.node("Transpose", [x], "top", perm=[1, 0, 2])  # (B, T, H)
    if model.cutoffs is None:
        _full_decoder(graph, model, p, top)
    else:
        _adaptive_decoder(graph, model, p, top)

    def state(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [L, "batch", H])

    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "time"]), state("h0"), state("c0")]
    outputs = [
        helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["batch", "time", V]),
        state("hn"),
        state("cn"),
    ]
    proto = helper.make_model(
        helper.make_graph(graph.nodes, "fastlm_lstm_lm", inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fastlm",
        doc_string="fastlm LSTM language model: log_probs[b, t] is the distribution of the token after "
        "ids[b, :t+1], given the state (h0, c0); zeros for a fresh start.",
    )
    proto.ir_version = IR_VERSION
    helper.set_model_props(proto, {"fastlm_config": json.dumps(model.config(), sort_keys=True)})
    return proto


def to_onnx(model, path):
    """Write the model as an ONNX graph to path (atomically: a complete file or none).

    Inputs ``ids`` (B, T) int64, ``h0`` and ``c0`` (num_layers, B, hidden_size) float32;
    outputs ``log_probs`` (B, T, vocab_size), the natural-log distribution of the next
    token at every position, and ``hn``, ``cn``, the state after the last position. B and T
    are dynamic: pass zeros as h0 and c0 to score sequences, or feed one token at a time
    with the previous call's hn and cn to generate. Needs the onnx package
    (``pip install 'fastlm[onnx]'``). Returns the path written.
    """
    path = check_output_path(path)
    onnx = import_onnx()
    proto = build(model)
    onnx.checker.check_model(proto)
    atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    return path
