"""The adaptive softmax decoder's configuration: its arguments' checks and its parameters'
names and shapes, exactly those of ``torch.nn.AdaptiveLogSoftmaxWithLoss`` held as a
model's ``decoder`` (imports only fastlm.checks).

Head ``Linear(H, c1 + n_clusters, bias=head_bias)``; tail i ``Linear(H, H // div_value**(i+1),
bias=False)`` then ``Linear(that, c_{i+1} - c_i, bias=False)``, with c_{n} = vocab_size.
"""

from __future__ import annotations

from fastlm.checks import check_bool, check_int, check_number


def check_cutoffs(name, cutoffs):
    """cutoffs as a list of strictly increasing positive ints (at least one)."""
    if isinstance(cutoffs, (str, bytes)) or not hasattr(cutoffs, "__iter__"):
        raise TypeError(f"{name} must be a sequence of integers, got {cutoffs!r}")
    cutoffs = [check_int(name, c, 1) for c in cutoffs]
    if not cutoffs:
        raise ValueError(f"{name} is empty: give at least one cutoff, or cutoffs=None for the full softmax")
    for a, b in zip(cutoffs, cutoffs[1:]):
        if b <= a:
            raise ValueError(f"{name} must be strictly increasing, got {a} then {b} in {cutoffs}")
    return cutoffs


def check_adaptive(cutoffs, div_value, head_bias, vocab_size, hidden_size):
    """(cutoffs as a list of int or None, div_value as float, head_bias as bool), checked.

    cutoffs None is the full softmax (div_value and head_bias are then unused but still checked).
    """
    head_bias = check_bool("head_bias", head_bias)
    div_value = check_number("div_value", div_value, "(1, inf)")
    if cutoffs is None:
        return None, div_value, head_bias
    cutoffs = check_cutoffs("cutoffs", cutoffs)
    if cutoffs[-1] >= vocab_size:
        raise ValueError(
            f"cutoffs must be < vocab_size={vocab_size} (the last cluster needs a word), "
            f"got {cutoffs[-1]} in cutoffs={cutoffs}"
        )
    for i, width in enumerate(tail_widths(hidden_size, div_value, len(cutoffs))):
        if width == 0:
            raise ValueError(
                f"div_value={div_value} is too large for hidden_size={hidden_size}: tail {i}'s "
                f"projection would have width {hidden_size} // {div_value}**{i + 1} = 0"
            )
    return cutoffs, div_value, head_bias


def tail_widths(hidden_size, div_value, n_clusters):
    """Each tail projection's width, as torch computes it: int(H // div_value ** (i + 1))."""
    return [int(hidden_size // (div_value ** (i + 1))) for i in range(n_clusters)]


def decoder_shapes(vocab_size, hidden_size, cutoffs, div_value, head_bias):
    """Name -> shape of the decoder's parameters, in torch's state_dict order."""
    H, n = hidden_size, len(cutoffs)
    shapes = {"decoder.head.weight": (cutoffs[0] + n, H)}
    if head_bias:
        shapes["decoder.head.bias"] = (cutoffs[0] + n,)
    edges = cutoffs + [vocab_size]
    for i, width in enumerate(tail_widths(H, div_value, n)):
        shapes[f"decoder.tail.{i}.0.weight"] = (width, H)
        shapes[f"decoder.tail.{i}.1.weight"] = (edges[i + 1] - edges[i], width)
    return shapes


def decoder_arguments(params, n_clusters):
    """The adaptive ops' weight arguments (head_weight, head_bias, proj_weights, out_weights)."""
    return (
        params["decoder.head.weight"],
        params.get("decoder.head.bias"),
        [params[f"decoder.tail.{i}.0.weight"] for i in range(n_clusters)],
        [params[f"decoder.tail.{i}.1.weight"] for i in range(n_clusters)],
    )


def decoder_gradients(dhead, dbias, dprojs, douts):
    """The adaptive ops' weight gradients keyed like the state_dict."""
    grads = {"decoder.head.weight": dhead}
    if dbias is not None:
        grads["decoder.head.bias"] = dbias
    for i, (dproj, dout) in enumerate(zip(dprojs, douts)):
        grads[f"decoder.tail.{i}.0.weight"] = dproj
        grads[f"decoder.tail.{i}.1.weight"] = dout
    return grads
