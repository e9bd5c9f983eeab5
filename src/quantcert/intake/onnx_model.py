"""ONNX intake: read a graph with the ``onnx`` package and translate it node by node into
the IR. Constants (initializers, Constant nodes) fold into the ops that use them: MatMul+Add
and Gemm become one ``Affine``, BatchNormalization folds into the preceding Conv/Affine, and
Sub/Div/Mul/Add by a constant become ``Scale``.

The ONNX input's leading dimension is the batch when the input has rank >= 2 and that
dimension is 1 or symbolic; a rank-1 input is one sample.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from quantcert.errors import InputError
from quantcert.network import INPUT, Network, Node
from quantcert.ops import (
    DTYPE,
    Affine,
    AvgPool,
    Conv,
    LeakyReLU,
    MaxPool,
    Op,
    Pad,
    ReLU,
    Reshape,
    Scale,
    Sigmoid,
    Softmax,
    Sum,
    Tanh,
)

_ALIASES = {"Identity", "Dropout"}
_ELEMENTWISE: dict[str, Callable[[], Op]] = {
    "Relu": ReLU,
    "Sigmoid": Sigmoid,
    "Tanh": Tanh,
}


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64))


class _Builder:
    """Translation state: IR nodes so far, the IR name and shape of each ONNX tensor."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        for name, arr in self.consts.items():
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InputError(f"ONNX initializer {name!r} holds NaN or Inf values")
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise InputError(f"expected one ONNX graph input, found {len(inputs)}")
        dims = [
            d.dim_value if d.dim_value > 0 else -1 for d in inputs[0].type.tensor_type.shape.dim
        ]
        self.batched = len(dims) >= 2 and dims[0] in (1, -1)
        sample = dims[1:] if self.batched else dims
        if any(d <= 0 for d in sample):
            raise InputError(f"ONNX input has an unknown dimension: {dims}")
        self.input_shape = tuple(sample)
        self.alias: dict[str, str] = {inputs[0].name: INPUT}
        self.shape: dict[str, tuple[int, ...]] = {INPUT: self.input_shape}
        self.nodes: list[Node] = []
        self.uses = Counter(i for n in graph.node for i in n.input)
        self.names: set[str] = set()

    # ---------------------------------------------------------------- helpers
    def add(self, onnx_node: onnx.NodeProto, op: Op, srcs: list[str]) -> None:
        base = (onnx_node.name or onnx_node.op_type.lower()).replace(".", "_").replace("/", "_")
        name, k = base, 1
        while name in self.names or name == INPUT:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        node = Node(name, op, tuple(srcs))
        with torch.no_grad():
            xs = [torch.zeros((1, *self.shape[s]), dtype=DTYPE) for s in srcs]
            out = op.forward(xs, op.params)
        self.shape[name] = tuple(out.shape[1:])
        self.nodes.append(node)
        self.alias[onnx_node.output[0]] = name

    def src(self, tensor: str, onnx_node: onnx.NodeProto) -> str:
        if tensor not in self.alias:
            raise InputError(
                f"ONNX node {onnx_node.name or onnx_node.op_type!r} reads {tensor!r}, "
                "which is neither the input nor computed before it"
            )
        return self.alias[tensor]

    def split(self, n: onnx.NodeProto) -> tuple[list[str], list[np.ndarray]]:
        """The node's inputs: IR node names of tensors, and constant arrays."""
        tensors, consts = [], []
        for name in n.input:
            if name in self.consts:
                consts.append(self.consts[name])
            elif name:
                tensors.append(self.src(name, n))
        return tensors, consts

    def producer(self, ir_name: str, onnx_out: str) -> Op | None:
        """The op that produced ``ir_name`` when its output has this one consumer only."""
        if ir_name == INPUT or self.uses[onnx_out] != 1:
            return None
        return self.nodes[-1].op if self.nodes and self.nodes[-1].name == ir_name else None


def _attrs(n: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}


def _pair(values: list[int] | None, default: int) -> tuple[int, int]:
    if not values:
        return (default, default)
    if len(values) != 2:
        raise InputError(f"only 2-D pooling/convolution is supported, got {values}")
    return (int(values[0]), int(values[1]))


def _gemm(b: _Builder, n: onnx.NodeProto) -> None:
    (src,), consts = b.split(n)[0], b.split(n)[1]
    a = _attrs(n)
    if a.get("transA", 0):
        raise InputError(f"Gemm node {n.name!r} with transA=1 is not supported")
    w = consts[0] if a.get("transB", 0) else consts[0].T
    weight = _tensor(w) * float(a.get("alpha", 1.0))
    bias = None
    if len(consts) > 1:
        bias = (_tensor(consts[1]) * float(a.get("beta", 1.0))).expand(weight.shape[0]).clone()
    b.add(n, Affine(weight, bias), [src])


def _matmul(b: _Builder, n: onnx.NodeProto) -> None:
    tensors, consts = b.split(n)
    if len(tensors) != 1 or len(consts) != 1 or len(b.shape[tensors[0]]) != 1:
        raise InputError(f"MatMul node {n.name!r}: only a vector times a constant matrix")
    matrix = _tensor(consts[0])
    # x @ M has weight M^T; M @ x (a column vector, one unbatched sample) has weight M.
    weight = matrix.T.contiguous() if n.input[1] in b.consts else matrix
    b.add(n, Affine(weight), tensors)


def _conv(b: _Builder, n: onnx.NodeProto) -> None:
    tensors, consts = b.split(n)
    a = _attrs(n)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise InputError(f"Conv node {n.name!r}: auto_pad is not supported")
    pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
    src = tensors[0]
    if len(pads) == 4 and (pads[0] != pads[2] or pads[1] != pads[3]):
        pad_node = onnx.helper.make_node("Pad", [], [n.input[0] + "_padded"], name=n.name + "_pad")
        b.add(pad_node, Pad((pads[1], pads[3], pads[0], pads[2])), [src])
        src, pads = b.nodes[-1].name, [0, 0, 0, 0]
    bias = _tensor(consts[1]) if len(consts) > 1 else None
    op = Conv(
        _tensor(consts[0]),
        bias,
        _pair(a.get("strides"), 1),
        (pads[0], pads[1]),
        _pair(a.get("dilations"), 1),
        int(a.get("group", 1)),
    )
    b.add(n, op, [src])


def _add_or_sub(b: _Builder, n: onnx.NodeProto) -> None:
    tensors, consts = b.split(n)
    sign = -1.0 if n.op_type == "Sub" else 1.0
    if len(tensors) == 2:
        b.add(n, Sum((1.0, sign)), tensors)
        return
    const = _tensor(consts[0])
    if n.input[0] in b.consts:  # const - x
        b.add(n, Scale(torch.tensor(sign, dtype=DTYPE), const), tensors)
        return
    prev = b.producer(tensors[0], n.input[0])
    if n.op_type == "Add" and isinstance(prev, Affine | Conv) and "bias" not in prev.params:
        channels = prev.params["weight"].shape[0]
        if const.numel() == channels:  # MatMul + Add, Conv + Add: the layer's bias
            prev.params["bias"] = const.reshape(channels).clone()
            b.alias[n.output[0]] = tensors[0]
            return
    b.add(n, Scale(torch.tensor(1.0, dtype=DTYPE), sign * const), tensors)


def _mul_or_div(b: _Builder, n: onnx.NodeProto) -> None:
    tensors, consts = b.split(n)
    if len(tensors) != 1 or (n.op_type == "Div" and n.input[1] not in b.consts):
        raise InputError(f"{n.op_type} node {n.name!r}: only division/product by a constant")
    const = _tensor(consts[0])
    scale = 1.0 / const if n.op_type == "Div" else const
    b.add(n, Scale(scale, torch.tensor(0.0, dtype=DTYPE)), tensors)


def _batchnorm(b: _Builder, n: onnx.NodeProto) -> None:
    tensors, consts = b.split(n)
    gamma, beta, mean, var = (_tensor(c) for c in consts[:4])
    eps = float(_attrs(n).get("epsilon", 1e-5))
    s = gamma / torch.sqrt(var + eps)
    prev = b.producer(tensors[0], n.input[0])
    if isinstance(prev, Affine | Conv):
        w = prev.params["weight"]
        prev.params["weight"] = w * s.reshape(-1, *([1] * (w.dim() - 1)))
        prev.params["bias"] = (prev.bias - mean) * s + beta
        b.alias[n.output[0]] = tensors[0]
        return
    extra = [1] * (len(b.shape[tensors[0]]) - 1)
    b.add(n, Scale(s.reshape(-1, *extra), (beta - mean * s).reshape(-1, *extra)), tensors)


def _flatten(b: _Builder, n: onnx.NodeProto) -> None:
    tensors, _ = b.split(n)
    axis = int(_attrs(n).get("axis", 1))
    if b.batched and axis != 1:
        raise InputError(f"Flatten node {n.name!r} with axis={axis} is not supported")
    b.add(n, Reshape((int(np.prod(b.shape[tensors[0]])),)), tensors)


def _reshape(b: _Builder, n: onnx.NodeProto) -> None:
    tensors, consts = b.split(n)
    target = [int(v) for v in consts[0]]
    in_shape = b.shape[tensors[0]]
    if b.batched:
        target = target[1:]
    resolved = [in_shape[i] if v == 0 else v for i, v in enumerate(target)]
    size = int(np.prod(in_shape))
    if -1 in resolved:
        known = int(np.prod([v for v in resolved if v != -1]))
        resolved[resolved.index(-1)] = size // max(known, 1)
    if int(np.prod(resolved)) != size:
        raise InputError(f"Reshape node {n.name!r}: cannot reshape {in_shape} to {target}")
    b.add(n, Reshape(tuple(resolved)), tensors)


def _pad(b: _Builder, n: onnx.NodeProto) -> None:
    tensors, consts = b.split(n)
    a = _attrs(n)
    pads = [int(p) for p in (consts[0] if consts else a.get("pads", []))]
    mode = a.get("mode", b"constant")
    value = float(consts[1]) if len(consts) > 1 and consts[1].size else float(a.get("value", 0.0))
    rank = len(pads) // 2
    begin, end = pads[:rank], pads[rank:]
    if mode not in (b"constant", "constant") or value != 0.0 or any(begin[:-2]) or any(end[:-2]):
        raise InputError(f"Pad node {n.name!r}: only zero padding of the last two axes")
    b.add(n, Pad((begin[-1], end[-1], begin[-2], end[-2])), tensors)


def _pool(b: _Builder, n: onnx.NodeProto) -> None:
    tensors, _ = b.split(n)
    a = _attrs(n)
    if a.get("ceil_mode", 0):
        raise InputError(f"{n.op_type} node {n.name!r} with ceil_mode=1 is not supported")
    kernel = _pair(a.get("kernel_shape"), 1)
    stride = _pair(a.get("strides"), 1)
    pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise InputError(f"{n.op_type} node {n.name!r} with asymmetric padding")
    padding = (pads[0], pads[1])
    if n.op_type == "MaxPool":
        b.add(n, MaxPool(kernel, stride, padding), tensors)
    else:
        b.add(n, AvgPool(kernel, stride, padding, bool(a.get("count_include_pad", 0))), tensors)


def _activation(b: _Builder, n: onnx.NodeProto) -> None:
    tensors, _ = b.split(n)
    if n.op_type == "LeakyRelu":
        b.add(n, LeakyReLU(float(_attrs(n).get("alpha", 0.01))), tensors)
    elif n.op_type == "Softmax":
        axis = int(_attrs(n).get("axis", -1))
        if axis not in (-1, len(b.shape[tensors[0]]) - (0 if b.batched else 1)):
            raise InputError(f"Softmax node {n.name!r} over axis {axis} is not supported")
        b.add(n, Softmax(), tensors)
    else:
        b.add(n, _ELEMENTWISE[n.op_type](), tensors)


def _constant(b: _Builder, n: onnx.NodeProto) -> None:
    b.consts[n.output[0]] = numpy_helper.to_array(_attrs(n)["value"])


_HANDLERS: dict[str, Callable[[_Builder, onnx.NodeProto], None]] = {
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Conv": _conv,
    "Add": _add_or_sub,
    "Sub": _add_or_sub,
    "Mul": _mul_or_div,
    "Div": _mul_or_div,
    "BatchNormalization": _batchnorm,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Pad": _pad,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "Relu": _activation,
    "Sigmoid": _activation,
    "Tanh": _activation,
    "LeakyRelu": _activation,
    "Softmax": _activation,
    "Constant": _constant,
}


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # the onnx package raises several types for bad bytes
        raise InputError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise InputError(f"{path} is not a readable ONNX model (empty graph)")
    return model


def from_onnx(path: str | Path) -> Network:
    """Load an ONNX file into a ``Network`` (float64)."""
    path = Path(path)
    model = _read(path)
    b = _Builder(model)
    for n in model.graph.node:
        if n.op_type in _ALIASES:
            b.alias[n.output[0]] = b.src(n.input[0], n)
            continue
        handler = _HANDLERS.get(n.op_type)
        if handler is None:
            raise InputError(f"unsupported ONNX operator {n.op_type} (node {n.name!r})")
        try:
            handler(b, n)
        except (IndexError, KeyError, RuntimeError, TypeError) as exc:
            raise InputError(
                f"cannot translate ONNX node {n.name!r} ({n.op_type}): {exc}"
            ) from None
    out = model.graph.output[0].name
    if out not in b.alias or b.alias[out] == INPUT:
        raise InputError(f"ONNX graph output {out!r} is not computed by a supported node")
    nodes = _prune(b.nodes, b.alias[out])
    head = nodes[-1].name if isinstance(nodes[-1].op, Sigmoid | Softmax) else None
    return Network(nodes, b.input_shape, head=head, name=path.stem)


def _prune(nodes: list[Node], output: str) -> list[Node]:
    """Keep the nodes the output depends on, ending with the output node."""
    needed = {output}
    for node in reversed(nodes):
        if node.name in needed:
            needed.update(node.inputs)
    kept = [n for n in nodes if n.name in needed]
    end = next(i for i, n in enumerate(kept) if n.name == output)
    return kept[: end + 1]
