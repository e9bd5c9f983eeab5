"""Translation of ONNX layout and reduction operators on activations: Flatten, Reshape,
Squeeze, Unsqueeze, Transpose, Concat, Slice, Split, ReduceMean, ReduceSum,
GlobalAveragePool, GlobalMaxPool, and Cast to float (an identity in the float64 IR).

The batch rule (``onnx_builder``): in a batched graph an IR tensor of sample shape ``s`` is
the ONNX tensor ``(1, *s)``. A result is representable when its ONNX shape still leads with
that axis: reshapes whose result starts with a 1 (batch 1: the data order is the sample's),
and transposes, concatenations, slices and reductions that leave axis 0 alone. Anything else
is refused, naming the node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper

from quantcert.intake.onnx_attributes import attributes
from quantcert.intake.onnx_builder import Builder, ints_input, one_activation, refuse
from quantcert.ops import Concat, PaddedMaxPool, Reduce, Reshape, Slice, Transpose


def _axis(n: onnx.NodeProto, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise refuse(n, f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def _sample_axis(b: Builder, n: onnx.NodeProto, axis: int) -> int:
    """The IR (sample) dimension of ONNX axis ``axis`` (normalised); axis 0 of a batched
    graph is the batch, which these operators may not move or mix."""
    if not b.batched:
        return axis
    if axis == 0:
        raise refuse(n, "operating on the batch axis (axis 0) is not supported")
    return axis - 1


def _input_or_attribute(
    b: Builder, n: onnx.NodeProto, a: dict[str, Any], key: str, index: int, since: int
) -> list[int] | None:
    """``key`` as constant input ``index`` (from opset ``since``) or as an attribute (before);
    the other form, which that opset does not define, is refused rather than ignored."""
    if b.opset >= since:
        if key in a:
            raise refuse(n, f"attribute {key} is not defined at opset {b.opset} (an input is)")
        return ints_input(b, n, index)
    if len(n.input) > index and n.input[index]:
        raise refuse(n, f"input {index} ({key}) is not defined at opset {b.opset}")
    value = a.get(key)
    return None if value is None else [int(v) for v in value]


def _reshaped(b: Builder, n: onnx.NodeProto, src: str, full_out: list[int]) -> None:
    """``src`` laid out as the ONNX shape ``full_out`` (same number of values)."""
    if int(np.prod(full_out)) != int(np.prod(b.full(src))):
        raise refuse(n, f"cannot lay {list(b.full(src))} out as {full_out}")
    if b.batched and (not full_out or full_out[0] != 1):
        raise refuse(n, f"the result's shape {full_out} moves the batch dimension")
    b.add(n, Reshape(tuple(full_out[1:] if b.batched else full_out)), [src])


def _flatten(b: Builder, n: onnx.NodeProto) -> None:
    src, _ = one_activation(b, n)
    full = list(b.full(src))
    axis = int(attributes(n).get("axis", 1))
    axis = axis + len(full) if axis < 0 else axis
    if not 0 <= axis <= len(full):
        raise refuse(n, f"axis {axis} is out of range for a tensor of rank {len(full)}")
    _reshaped(b, n, src, [math.prod(full[:axis]), math.prod(full[axis:])])


def _reshape(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    target = ints_input(b, n, 1)
    if target is None:
        raise refuse(n, "the target shape must be a constant")
    if a.get("allowzero", 0) and 0 in target:
        raise refuse(n, f"allowzero=1 with a 0 in the target shape {target} is not supported")
    full = b.full(src)
    resolved = [full[i] if v == 0 and i < len(full) else v for i, v in enumerate(target)]
    if resolved.count(-1) > 1 or any(v < -1 for v in resolved):
        raise refuse(n, f"invalid target shape {target}")
    if -1 in resolved:
        known = math.prod(v for v in resolved if v != -1)
        resolved[resolved.index(-1)] = math.prod(full) // max(known, 1)
    _reshaped(b, n, src, resolved)


def _squeeze(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    full = list(b.full(src))
    given = _input_or_attribute(b, n, a, "axes", 1, 13)
    if given is None:
        axes = {i for i, d in enumerate(full) if d == 1}
    else:
        axes = {_axis(n, int(v), len(full)) for v in given}
    if any(full[i] != 1 for i in axes):
        raise refuse(n, f"cannot squeeze axes {sorted(axes)} of shape {full}")
    _reshaped(b, n, src, [d for i, d in enumerate(full) if i not in axes])


def _unsqueeze(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    full = list(b.full(src))
    given = _input_or_attribute(b, n, a, "axes", 1, 13)
    if not given:
        raise refuse(n, "the axes are required")
    rank = len(full) + len(given)
    axes = sorted(_axis(n, int(v), rank) for v in given)
    if len(set(axes)) != len(axes):
        raise refuse(n, f"repeated axes {given}")
    out, rest = [], iter(full)
    for i in range(rank):
        out.append(1 if i in axes else next(rest))
    _reshaped(b, n, src, out)


def _transpose(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    rank = len(b.full(src))
    perm = [int(p) for p in a.get("perm", list(range(rank))[::-1])]
    if sorted(perm) != list(range(rank)):
        raise refuse(n, f"perm {perm} is not a permutation of {rank} axes")
    if b.batched:
        if perm[0] != 0:
            raise refuse(n, f"perm {perm} moves the batch axis")
        perm = [p - 1 for p in perm[1:]]
    b.add(n, Transpose(tuple(perm)), [src])


def _concat(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    if any(i in b.consts for i in n.input if i):
        raise refuse(n, "concatenating activations with constants is not supported")
    srcs = [b.src(i, n) for i in n.input if i]
    rank = len(b.full(srcs[0]))
    axis = _sample_axis(b, n, _axis(n, int(a["axis"]), rank))
    shapes = [b.shape[s] for s in srcs]
    if any(len(s) != len(shapes[0]) for s in shapes) or any(
        s[:axis] + s[axis + 1 :] != shapes[0][:axis] + shapes[0][axis + 1 :] for s in shapes
    ):
        raise refuse(n, f"inputs of shapes {[list(s) for s in shapes]} do not concatenate")
    b.add(n, Concat(axis), srcs)


def _slice_bounds(
    b: Builder, n: onnx.NodeProto, src: str, spans: dict[int, tuple[int, int, int]]
) -> tuple[tuple[int, int, int], ...]:
    """Per sample dimension (start, stop, step) from ONNX axis -> (start, end, step)."""
    full = b.full(src)
    bounds = [(0, d, 1) for d in b.shape[src]]
    for axis, (start, end, step) in spans.items():
        dim = full[axis]
        if step < 1:
            raise refuse(n, f"step {step} is not supported (only positive steps)")
        lo = min(max(start + dim if start < 0 else start, 0), dim)
        hi = min(max(end + dim if end < 0 else end, 0), dim)
        if hi <= lo:
            raise refuse(n, f"the slice of axis {axis} is empty")
        if b.batched and axis == 0:
            continue  # the batch axis, of size 1: [0, 1) is all of it
        bounds[_sample_axis(b, n, axis)] = (lo, hi, step)
    return tuple(bounds)


def _slice(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    rank = len(b.full(src))
    starts = _input_or_attribute(b, n, a, "starts", 1, 10)
    ends = _input_or_attribute(b, n, a, "ends", 2, 10)
    axes = _input_or_attribute(b, n, a, "axes", 3, 10)
    steps = ints_input(b, n, 4) if b.opset >= 10 else None
    if starts is None or ends is None or len(starts) != len(ends):
        raise refuse(n, "starts and ends must be constants of one length")
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    spans = {
        _axis(n, int(ax), rank): (int(s), int(e), int(t))
        for ax, s, e, t in zip(axes, starts, ends, steps, strict=True)
    }
    if len(spans) != len(axes):
        raise refuse(n, f"repeated axes {axes}")
    b.add(n, Slice(_slice_bounds(b, n, src, spans)), [src])


def _split(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    full = b.full(src)
    axis = _axis(n, int(a.get("axis", 0)), len(full))
    _sample_axis(b, n, axis)
    sizes = _input_or_attribute(b, n, a, "split", 1, 13)
    count = len(n.output)
    if sizes is not None and "num_outputs" in a:
        raise refuse(n, "both split sizes and num_outputs are given")
    if sizes is None:
        parts = int(a.get("num_outputs", count))
        step = -(-full[axis] // parts)
        sizes = [min(step, full[axis] - i * step) for i in range(parts)]
    if len(sizes) != count or sum(sizes) != full[axis] or min(sizes) < 1:
        raise refuse(n, f"split sizes {sizes} do not divide axis {axis} of {list(full)}")
    start = 0
    for out, size in zip(n.output, sizes, strict=True):
        part = helper.make_node("Split", [], [out], name=f"{n.name}_{out}")
        if out:
            bounds = _slice_bounds(b, n, src, {axis: (start, start + size, 1)})
            b.add(part, Slice(bounds), [src])
        start += size


def _reduce(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    rank = len(b.full(src))
    since = 18 if n.op_type == "ReduceMean" else 13
    given = _input_or_attribute(b, n, a, "axes", 1, since)
    if not given:
        if a.get("noop_with_empty_axes", 0):
            b.alias[n.output[0]] = src
            return
        given = list(range(rank))
    axes = {_axis(n, int(v), rank) for v in given}
    ir_axes = tuple(_sample_axis(b, n, ax) for ax in sorted(axes))
    b.add(n, Reduce(ir_axes, bool(a.get("keepdims", 1)), n.op_type == "ReduceMean"), [src])


def _global_pool(b: Builder, n: onnx.NodeProto) -> None:
    attributes(n)
    src, _ = one_activation(b, n)
    full = b.full(src)
    if len(full) < 3:
        raise refuse(n, f"input of shape {list(full)} has no spatial axes")
    if n.op_type == "GlobalMaxPool":
        if len(full) != 4 or not b.batched:
            raise refuse(n, f"input of shape {list(full)} is not (1, C, H, W)")
        kernel = (int(full[2]), int(full[3]))
        b.add(n, PaddedMaxPool(kernel, (1, 1), (0, 0, 0, 0)), [src])
        return
    ir_axes = tuple(_sample_axis(b, n, ax) for ax in range(2, len(full)))
    b.add(n, Reduce(ir_axes, True, True), [src])


def _cast(b: Builder, n: onnx.NodeProto) -> None:
    """Cast of an activation to float or double: the IR computes in float64 throughout."""
    a = attributes(n)
    if a.get("to") not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise refuse(n, f"cast of an activation to type {a.get('to')} is not supported")
    b.alias[n.output[0]] = b.src(n.input[0], n)


SHAPE_HANDLERS: dict[str, Callable[[Builder, onnx.NodeProto], None]] = {
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
    "Concat": _concat,
    "Slice": _slice,
    "Split": _split,
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "Cast": _cast,
}
