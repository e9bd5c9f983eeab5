"""One translation function per supported ONNX operator.

Each reads the node's attributes through the checked table (``onnx_attributes``), so no
attribute is silently ignored, and records where every IR parameter lives in the file
(``ParamSource``): Gemm ``alpha``/``beta`` and transposes become the source's factor and
layout, so radii stated on the file's initializers reach the IR exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from quantcert.intake.onnx_act_layers import ACTIVATION_HANDLERS, product
from quantcert.intake.onnx_attributes import attributes
from quantcert.intake.onnx_builder import Builder, as_tensor, one_activation, refuse
from quantcert.intake.onnx_pool_layers import _pool
from quantcert.intake.onnx_shape_layers import SHAPE_HANDLERS
from quantcert.network import ParamSource
from quantcert.ops import (
    DTYPE,
    Affine,
    BatchNorm,
    Clip,
    Conv,
    LeakyReLU,
    Pad,
    ReLU,
    Scale,
    Sigmoid,
    Softmax,
    Sum,
    Tanh,
)


def _source(
    name: str, arr: np.ndarray, factor: float = 1.0, transpose: bool = False
) -> ParamSource:
    """Where an IR parameter lives: ``name`` is the file's tensor (``Builder.stored``)."""
    return ParamSource(name, tuple(int(d) for d in arr.shape), float(factor), transpose)


def _pair(n: onnx.NodeProto, values: list[int] | None, default: int) -> tuple[int, int]:
    if not values:
        return (default, default)
    if len(values) != 2:
        raise refuse(n, f"only 2-D pooling/convolution is supported, got {list(values)}")
    return (int(values[0]), int(values[1]))


def _gemm(b: Builder, n: onnx.NodeProto) -> None:
    src, _ = one_activation(b, n)
    a = attributes(n)
    if n.input[0] in b.consts or n.input[1] not in b.consts:
        raise refuse(n, "only an activation times a constant matrix is supported")
    if len(b.shape[src]) != 1 or not b.batched:
        raise refuse(n, f"input of shape {list(b.full(src))} is not (1, K)")
    mat = b.consts[n.input[1]]
    trans_b = bool(a.get("transB", 0))
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    weight = as_tensor(mat if trans_b else mat.T) * alpha
    sources = {"weight": _source(b.stored(n.input[1]), mat, alpha, transpose=not trans_b)}
    bias = None
    if len(n.input) > 2 and n.input[2]:
        if n.input[2] not in b.consts:
            raise refuse(n, "the C input must be a constant")
        c = b.consts[n.input[2]]
        out_shape = (1, weight.shape[0])
        if np.broadcast_shapes(c.shape, out_shape) != out_shape:
            raise refuse(n, f"C of shape {list(c.shape)} does not broadcast to {list(out_shape)}")
        bias = (as_tensor(np.broadcast_to(c, out_shape)[0]) * beta).contiguous()
        sources["bias"] = _source(b.stored(n.input[2]), c, beta)
    b.add(n, Affine(weight.contiguous(), bias), [src], sources)


def _matmul(b: Builder, n: onnx.NodeProto) -> None:
    src, consts = one_activation(b, n)
    if len(consts) != 1 or consts[0].ndim != 2 or len(b.shape[src]) != 1:
        raise refuse(n, "only a vector times a constant matrix is supported")
    name = n.input[0] if n.input[0] in b.consts else n.input[1]
    matrix = consts[0]
    if name == n.input[1]:  # x @ M: weight M^T
        b.add(
            n,
            Affine(as_tensor(matrix.T).contiguous()),
            [src],
            {"weight": _source(b.stored(name), matrix, 1.0, True)},
        )
        return
    if b.batched:  # M @ x needs x as a column: one unbatched sample only
        raise refuse(n, "a constant matrix times a batched activation is not supported")
    b.add(n, Affine(as_tensor(matrix)), [src], {"weight": _source(b.stored(name), matrix)})


def _same_pads(
    n: onnx.NodeProto,
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    mode: str,
) -> list[int]:
    """ONNX SAME_UPPER/SAME_LOWER pads (top, left, bottom, right)."""
    begin, end = [], []
    for s, k, st, d in zip(size, kernel, stride, dilation, strict=True):
        total = max(0, (-(-s // st) - 1) * st + (k - 1) * d + 1 - s)
        small, large = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else large)
        end.append(large if mode == "SAME_UPPER" else small)
    return [*begin, *end]


def _conv(b: Builder, n: onnx.NodeProto) -> None:
    src, _ = one_activation(b, n)
    a = attributes(n)
    if n.input[1] not in b.consts or b.consts[n.input[1]].ndim != 4:
        raise refuse(n, "only 2-D convolution with a constant weight is supported")
    if len(b.shape[src]) != 3 or not b.batched:
        raise refuse(n, f"input of shape {list(b.full(src))} is not (1, C, H, W)")
    w = b.consts[n.input[1]]
    kernel = (int(w.shape[2]), int(w.shape[3]))
    if "kernel_shape" in a and tuple(a["kernel_shape"]) != kernel:
        raise refuse(n, f"kernel_shape {a['kernel_shape']} differs from the weight's {kernel}")
    stride, dilation = _pair(n, a.get("strides"), 1), _pair(n, a.get("dilations"), 1)
    mode = a.get("auto_pad", "NOTSET")
    pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])] if mode == "NOTSET" else [0, 0, 0, 0]
    if mode.startswith("SAME"):
        pads = _same_pads(n, b.shape[src][1:], kernel, stride, dilation, mode)  # type: ignore[arg-type]
    if len(pads) != 4 or min(pads) < 0:
        raise refuse(n, f"pads {pads} are not 4 non-negative values")
    sources = {"weight": _source(b.stored(n.input[1]), w)}
    if pads[0] != pads[2] or pads[1] != pads[3]:
        pad_node = onnx.helper.make_node("Pad", [], [n.output[0] + "_padded"], name=n.name + "_pad")
        src = b.add(pad_node, Pad((pads[1], pads[3], pads[0], pads[2])), [src])
        pads = [0, 0, 0, 0]
    bias = None
    if len(n.input) > 2 and n.input[2]:
        if n.input[2] not in b.consts:
            raise refuse(n, "the bias must be a constant")
        bias = as_tensor(b.consts[n.input[2]]).reshape(-1)
        sources["bias"] = _source(b.stored(n.input[2]), b.consts[n.input[2]])
    op = Conv(as_tensor(w), bias, stride, (pads[0], pads[1]), dilation, int(a.get("group", 1)))
    b.add(n, op, [src], sources)


def _add_or_sub(b: Builder, n: onnx.NodeProto) -> None:
    attributes(n)
    tensors, consts = b.split(n)
    sign = -1.0 if n.op_type == "Sub" else 1.0
    if len(tensors) == 2:
        if b.shape[tensors[0]] != b.shape[tensors[1]]:
            raise refuse(n, "broadcasting between two activations is not supported")
        b.add(n, Sum((1.0, sign)), tensors)
        return
    const_first = n.input[0] in b.consts
    name, act = (n.input[0], n.input[1]) if const_first else (n.input[1], n.input[0])
    const, src = consts[0], tensors[0]
    spread = b.broadcast(const, src, n)
    if const_first and sign < 0:  # c - x
        b.fixed.add(b.stored(name))
        b.add(n, Scale(torch.tensor(-1.0, dtype=DTYPE), spread), tensors)
        return
    prev = b.producer(src, act)
    if isinstance(prev, Affine | Conv) and "bias" not in prev.params and b.per_output(const, src):
        # MatMul + Add, Conv + Add of one value per output channel: the layer's bias.
        prev.params["bias"] = sign * as_tensor(const).reshape(-1)
        b.sources[f"{b.nodes[-1].name}.bias"] = _source(b.stored(name), const, sign)
        b.alias[n.output[0]] = src
        return
    b.fixed.add(b.stored(name))
    b.add(n, Scale(torch.tensor(1.0, dtype=DTYPE), sign * spread), tensors)


def _mul_or_div(b: Builder, n: onnx.NodeProto) -> None:
    attributes(n)
    tensors, consts = b.split(n)
    if n.op_type == "Mul" and len(tensors) == 2:
        product(b, n)  # of two activations
        return
    if n.op_type == "Div" and n.input[1] in b.alias:
        raise refuse(n, "division by an activation is not supported")
    if len(tensors) != 1:
        raise refuse(n, "only a product with, or division by, a constant is supported")
    name = n.input[0] if n.input[0] in b.consts else n.input[1]
    spread = b.broadcast(consts[0], tensors[0], n)
    if n.op_type == "Div" and bool((spread == 0).any()):
        raise refuse(n, "division by a constant that holds zeros")
    b.fixed.add(b.stored(name))
    scale = 1.0 / spread if n.op_type == "Div" else spread
    b.add(n, Scale(scale, torch.tensor(0.0, dtype=DTYPE)), tensors)


def _batchnorm(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, consts = one_activation(b, n)
    if len(consts) != 4 or any(i not in b.consts for i in n.input[1:5]):
        raise refuse(n, "scale, B, mean and var must be constants")
    if any(o and b.uses[o] for o in n.output[1:]):
        raise refuse(n, "the running mean/var outputs (training mode) are not supported")
    gamma, beta, mean, var = (as_tensor(c).reshape(-1) for c in consts)
    channels = b.shape[src][0] if b.shape[src] else 0
    if gamma.numel() != channels:
        raise refuse(n, f"{gamma.numel()} scales for {channels} channels")
    eps = float(a.get("epsilon", 1e-5))
    prev = b.producer(src, n.input[0])
    if b.fold_batchnorm and isinstance(prev, Affine | Conv):
        s = gamma / torch.sqrt(var + eps)
        w = prev.params["weight"]
        prev.params["weight"] = w * s.reshape(-1, *([1] * (w.dim() - 1)))
        prev.params["bias"] = (prev.bias - mean) * s + beta
        for p in ("weight", "bias"):  # folded: the parameters are no longer the file's
            b.sources.pop(f"{b.nodes[-1].name}.{p}", None)
        b.alias[n.output[0]] = src
        return
    names = ("gamma", "beta", "mean", "var")
    sources = {
        p: _source(b.stored(i), b.consts[i]) for p, i in zip(names, n.input[1:5], strict=True)
    }
    b.add(n, BatchNorm(gamma, beta, mean, var, eps), [src], sources)


def _pad(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    if len(n.input) > 3 and n.input[3]:
        raise refuse(n, "the axes input is not supported")
    pads_in = b.consts.get(n.input[1]) if len(n.input) > 1 and n.input[1] else None
    pads = [
        int(p) for p in (np.asarray(pads_in).ravel() if pads_in is not None else a.get("pads", []))
    ]
    value_in = b.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    value = (
        float(np.asarray(value_in).ravel()[0])
        if value_in is not None and value_in.size
        else float(a.get("value", 0.0))
    )
    rank = len(b.full(src))
    if len(pads) != 2 * rank:
        raise refuse(n, f"pads {pads} do not match a tensor of rank {rank}")
    begin, end = pads[:rank], pads[rank:]
    if value != 0.0 or any(begin[:-2]) or any(end[:-2]) or min(pads) < 0 or rank < 3:
        raise refuse(
            n, f"only zero padding of the last two axes is supported (pads {pads}, value {value})"
        )
    b.add(n, Pad((begin[-1], end[-1], begin[-2], end[-2])), [src])


def _activation(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    if n.op_type == "LeakyRelu":
        b.add(n, LeakyReLU(float(a.get("alpha", 0.01))), [src])
        return
    if n.op_type == "Softmax":
        rank = len(b.full(src))
        axis = int(a.get("axis", -1 if b.opset >= 13 else 1))
        axis = axis + rank if axis < 0 else axis
        if axis != rank - 1 or (b.opset < 13 and rank > 2):
            raise refuse(n, f"softmax over axis {a.get('axis')} of a rank-{rank} tensor")
        b.add(n, Softmax(), [src])
        return
    if n.op_type == "Clip":
        b.add(n, _clip(b, n, a), [src])
        return
    ops = {"Relu": ReLU, "Sigmoid": Sigmoid, "Tanh": Tanh}
    b.add(n, ops[n.op_type](), [src])


def _clip(b: Builder, n: onnx.NodeProto, a: dict[str, Any]) -> Clip:
    """Clip's bounds: the ``min``/``max`` attributes (opset < 11) or constant scalar inputs;
    an absent bound is unbounded."""
    ends: list[float] = []
    for index, key, default in ((1, "min", -math.inf), (2, "max", math.inf)):
        if key in a:
            ends.append(float(a[key]))
            continue
        name = n.input[index] if len(n.input) > index else ""
        if name and name not in b.consts:
            raise refuse(n, f"the {key} input must be a constant")
        value = np.asarray(b.consts[name]) if name else np.asarray(default)
        if value.size != 1:
            raise refuse(n, f"the {key} input must be a scalar, got shape {list(value.shape)}")
        ends.append(float(value.ravel()[0]))
    if not ends[0] <= ends[1]:
        raise refuse(n, f"min {ends[0]} must not exceed max {ends[1]}")
    return Clip(ends[0], ends[1])


def _min_max(b: Builder, n: onnx.NodeProto) -> None:
    """``Max(x, c...)`` / ``Min(x, c...)`` of one activation and scalar constants: a one-sided
    Clip (tf2onnx and Keras write ReLU6 as ``Min(Max(x, 0), 6)``)."""
    attributes(n)
    src, consts = one_activation(b, n)
    if not consts or any(np.asarray(c).size != 1 for c in consts):
        raise refuse(n, "only one activation against scalar constants is supported")
    values = [float(np.asarray(c).ravel()[0]) for c in consts]
    if any(math.isnan(v) for v in values):
        raise refuse(n, "a NaN constant")
    op = Clip(max(values), math.inf) if n.op_type == "Max" else Clip(-math.inf, min(values))
    b.add(n, op, [src])


def _sum(b: Builder, n: onnx.NodeProto) -> None:
    """ONNX Sum of activations of one shape."""
    attributes(n)
    tensors, consts = b.split(n)
    if consts or not tensors or any(b.shape[t] != b.shape[tensors[0]] for t in tensors):
        raise refuse(n, "only a sum of activations of one shape is supported")
    if len(tensors) == 1:
        b.alias[n.output[0]] = tensors[0]
        return
    b.add(n, Sum((1.0,) * len(tensors)), tensors)


def _fake_quant(b: Builder, n: onnx.NodeProto) -> None:
    """A QuantizeLinear -> DequantizeLinear pair on an activation (``intake/qdq.py``)."""
    from quantcert.ops.quantizer import FakeQuant

    a = attributes(n)
    src, _ = one_activation(b, n)
    scale = np.asarray(a["scale"], dtype=np.float32).astype(np.float64)
    zp = np.asarray(a["zero_point"], dtype=np.float64)
    full = b.full(src)
    axis = a.get("axis")
    if scale.size > 1:
        rank = len(full)
        ax = int(axis) % rank if axis is not None else 1 % rank
        shape = [1] * rank
        shape[ax] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    else:
        scale, zp = scale.reshape(()), zp.reshape(())
    op = FakeQuant(
        b.broadcast(scale, src, n), b.broadcast(zp, src, n), int(a["qmin"]), int(a["qmax"]), axis
    )
    b.add(n, op, [src])


def _alias(b: Builder, n: onnx.NodeProto) -> None:
    attributes(n)
    if n.op_type == "Dropout":
        if len(n.input) > 2 and n.input[2]:
            mode = b.consts.get(n.input[2])
            if mode is None or bool(np.asarray(mode).ravel()[0]):
                raise refuse(n, "training_mode must be a constant false")
        if len(n.output) > 1 and n.output[1] and b.uses[n.output[1]]:
            raise refuse(n, "the mask output is not supported")
    if n.input[0] in b.consts:
        b.consts[n.output[0]] = b.consts[n.input[0]]
    else:
        b.alias[n.output[0]] = b.src(n.input[0], n)


def _constant(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    if "value" in a:
        b.consts[n.output[0]] = numpy_helper.to_array(a["value"])
        return
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in a:
            b.consts[n.output[0]] = np.asarray(a[key], dtype=dtype)
            return
    raise refuse(n, "only value, value_float(s) and value_int(s) are supported")


HANDLERS: dict[str, Callable[[Builder, onnx.NodeProto], None]] = {
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Conv": _conv,
    "Add": _add_or_sub,
    "Sub": _add_or_sub,
    "Mul": _mul_or_div,
    "Div": _mul_or_div,
    "BatchNormalization": _batchnorm,
    "Pad": _pad,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "Clip": _activation,
    "Max": _min_max,
    "Min": _min_max,
    "Sum": _sum,
    "Relu": _activation,
    "Sigmoid": _activation,
    "Tanh": _activation,
    "LeakyRelu": _activation,
    "Softmax": _activation,
    "Identity": _alias,
    "Dropout": _alias,
    "Constant": _constant,
    "FakeQuant": _fake_quant,
    **SHAPE_HANDLERS,
    **ACTIVATION_HANDLERS,
}
