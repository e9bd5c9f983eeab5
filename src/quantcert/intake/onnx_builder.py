"""Translation state of the ONNX intake: the IR nodes so far, the IR name and shape of each
ONNX tensor, the constants, and where each IR parameter lives in the file.

The ONNX input's leading dimension is the batch when the input has rank >= 2 and that
dimension is 1 or symbolic; a rank-1 input is one sample. IR shapes exclude the batch;
``full`` gives the ONNX shape of a tensor (batch 1 included) for broadcasting rules.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from quantcert.errors import InputError
from quantcert.network import INPUT, Node, ParamSource
from quantcert.ops import DTYPE, Op


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64))


#: Operators of dynamic-quantized and QOperator-format ONNX graphs (onnxruntime's), refused
#: by name. QuantizeLinear/DequantizeLinear are not here: QDQ graphs are ``intake/qdq.py``'s.
_QUANTIZED_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QGemm",
        "QAttention",
        "MatMulNBits",
    }
)
_HALF = frozenset({onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


def _refuse_quantized_and_half(graph: onnx.GraphProto) -> None:
    """Refuse a dynamic-quantized or QOperator graph (naming its first quantized operator)
    and a float16/bfloat16 graph (input, output, used initializer or Cast), before any
    translation."""
    for n in graph.node:
        if n.op_type in _QUANTIZED_OPS or n.op_type.startswith("QLinear"):
            raise InputError(
                f"quantized ONNX operator {n.op_type} (node {n.name!r}) is not supported: "
                "give the float model that was quantized"
            )
    used = {name for n in graph.node for name in n.input}
    half = [
        f"{kind} {v.name!r}"
        for kind, values in (("input", graph.input), ("output", graph.output))
        for v in values
        if v.type.tensor_type.elem_type in _HALF
    ]
    half += [
        f"initializer {t.name!r}"
        for t in graph.initializer
        if t.data_type in _HALF and t.name in used
    ]
    half += [
        f"Cast node {n.name!r}"
        for n in graph.node
        if n.op_type in ("Cast", "CastLike")
        and any(a.name == "to" and a.i in _HALF for a in n.attribute)
    ]
    if half:
        raise InputError(
            f"float16 models are not supported yet ({half[0]} is float16/bfloat16): give the "
            "float32 model"
        )


class Builder:
    """``fold_batchnorm``: fold BatchNormalization into the Conv/Gemm before it (the IR
    parameters are then the folded ones, ``--perturb folded``)."""

    def __init__(self, model: onnx.ModelProto, fold_batchnorm: bool = False) -> None:
        graph = model.graph
        _refuse_quantized_and_half(graph)
        self.fold_batchnorm = fold_batchnorm
        self.opset = max(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13
        )
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
        self.uses.update(o.name for o in graph.output)
        self.names: set[str] = set()
        self.sources: dict[str, ParamSource] = {}
        self.fixed: set[str] = set()
        #: Constants that copy another (``Identity``): the tensor they copy, as stored.
        self.origin: dict[str, str] = {}

    def stored(self, const: str) -> str:
        """The name under which the file stores constant ``const`` (through Identities)."""
        return self.origin.get(const, const)

    # ---------------------------------------------------------------- nodes
    def add(
        self,
        onnx_node: onnx.NodeProto,
        op: Op,
        srcs: list[str],
        sources: dict[str, ParamSource] | None = None,
    ) -> str:
        """Append ``op`` reading ``srcs``; ``sources`` maps its parameter names to the file."""
        base = (onnx_node.name or onnx_node.op_type.lower()).replace(".", "_").replace("/", "_")
        name, k = base, 1
        while name in self.names or name == INPUT:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        with torch.no_grad():
            xs = [torch.zeros((1, *self.shape[s]), dtype=DTYPE) for s in srcs]
            out = op.forward(xs, op.params)
        self.shape[name] = tuple(out.shape[1:])
        self.nodes.append(Node(name, op, tuple(srcs)))
        self.alias[onnx_node.output[0]] = name
        for pname, src in (sources or {}).items():
            self.sources[f"{name}.{pname}"] = src
        return name

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
        """The op that produced ``ir_name`` when its output has this one consumer only (and
        is no graph output), so that a bias or normalisation can fold into it."""
        if ir_name == INPUT or self.uses[onnx_out] != 1:
            return None
        return self.nodes[-1].op if self.nodes and self.nodes[-1].name == ir_name else None

    # ---------------------------------------------------------------- shapes
    def full(self, ir_name: str) -> tuple[int, ...]:
        """The ONNX shape of an IR tensor: with the leading batch dimension 1 if batched."""
        shape = self.shape[ir_name]
        return (1, *shape) if self.batched else shape

    def broadcast(self, const: np.ndarray, ir_name: str, n: onnx.NodeProto) -> torch.Tensor:
        """``const`` broadcast against the tensor ``ir_name`` by ONNX (numpy) rules, shaped
        like the IR tensor; refused where broadcasting would change the tensor's shape."""
        full = self.full(ir_name)
        try:
            grown = np.broadcast_shapes(const.shape, full)
        except ValueError:
            grown = None
        if grown != full:
            raise InputError(
                f"ONNX {n.op_type} node {n.name!r}: a constant of shape {list(const.shape)} "
                f"does not broadcast onto the tensor of shape {list(full)} without changing it"
            )
        spread = np.broadcast_to(np.asarray(const, dtype=np.float64), full)
        return as_tensor(spread[0] if self.batched else spread)

    def per_output(self, const: np.ndarray, ir_name: str) -> bool:
        """Whether ``const`` broadcasts as one value per output channel of the tensor
        ``ir_name`` (axis 1 of the ONNX shape with a batch, the last axis of a vector)."""
        full = self.full(ir_name)
        if const.ndim > len(full):
            return False
        padded = (1,) * (len(full) - const.ndim) + tuple(const.shape)
        axis = 1 if self.batched else 0
        if len(full) == 1 + int(self.batched):  # a vector: its one axis is the channel
            axis = len(full) - 1
        channels = full[axis]
        rest = [d for i, d in enumerate(padded) if i != axis]
        return padded[axis] == channels and all(d == 1 for d in rest)


def refuse(n: onnx.NodeProto, why: str) -> InputError:
    """The refusal of node ``n``: one line naming its operator and name."""
    return InputError(f"ONNX {n.op_type} node {n.name!r}: {why}")


def one_activation(b: Builder, n: onnx.NodeProto) -> tuple[str, list[np.ndarray]]:
    """The node's one activation input (IR name) and its constant inputs."""
    tensors, consts = b.split(n)
    if len(tensors) != 1:
        raise refuse(n, f"expected one activation input, found {len(tensors)}")
    return tensors[0], consts


def ints_input(b: Builder, n: onnx.NodeProto, index: int) -> list[int] | None:
    """Optional input ``index`` as a list of ints (a constant), or ``None`` when absent."""
    if len(n.input) <= index or not n.input[index]:
        return None
    if n.input[index] not in b.consts:
        raise refuse(n, f"input {index} ({n.input[index]!r}) must be a constant")
    return [int(v) for v in np.asarray(b.consts[n.input[index]]).ravel()]
