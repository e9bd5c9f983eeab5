"""Intake of QDQ graphs as ``onnxruntime.quantization`` writes them (QDQ format).

The graph is rewritten before translation:

- a ``DequantizeLinear`` of a constant (an integer initializer, or a ``QuantizeLinear`` of a
  float initializer) folds into the exact dequantized float32 weight,
  ``float32(q - zp) * scale`` as onnxruntime computes it (per tensor or per ``axis``);
- a ``QuantizeLinear`` -> ``DequantizeLinear`` pair on an activation becomes one
  ``FakeQuant`` node (IR op ``ops.quantizer.FakeQuant``), its scale, zero point, range and
  axis as attributes;
- a ``Cast`` to float of a float32 constant (how the float8 quantizer stores biases) folds.

Quantized types (the zero point's, else the quantized tensor's): int4, uint4, int8, uint8,
int16, uint16, int32 (integer grids) and float8 e4m3fn / e5m2 (float grids, zero point 0,
``saturate=1``). A float8 FakeQuant node carries the range ``[-M, M]`` of its grid, which no
integer type has; ``from_qdq`` turns those into float-grid quantizers after translation.
Any other type (float8 ``fnuz``, float4, int2, ...) is refused by name.

Other quantized operators (``QLinearConv``, ``QLinearMatMul``, ``MatMulInteger``,
``ConvInteger``, ``DynamicQuantizeLinear``, ``QGemm``, ...) are refused by name, as are
blocked scales (``block_size``). ``MatMulNBits`` (weight-only, ``intake/nbits.py``) becomes
a MatMul with its exactly dequantized weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from quantcert.errors import InputError
from quantcert.intake.nbits import matmul_nbits
from quantcert.network import Network, Node
from quantcert.ops.base import Op
from quantcert.ops.quantizer import FLOAT_GRIDS, FakeQuant

#: Quantized operators of onnxruntime's QOperator and dynamic formats: refused by name.
UNSUPPORTED = (
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "QGemm",
    "QAttention",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
)
#: ONNX element type -> (qmin, qmax) of the integer grids.
INT_TYPES: dict[int, tuple[int, int]] = {
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT4: (0, 15),
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT8: (0, 255),
    TensorProto.INT16: (-(2**15), 2**15 - 1),
    TensorProto.UINT16: (0, 2**16 - 1),
    TensorProto.INT32: (-(2**31), 2**31 - 1),
}
#: ONNX element type -> float grid name (``ops.quantizer.FLOAT_GRIDS``).
FLOAT_TYPES: dict[int, str] = {
    TensorProto.FLOAT8E4M3FN: "float8e4m3fn",
    TensorProto.FLOAT8E5M2: "float8e5m2",
}
FAKE_QUANT = "FakeQuant"
#: The domain of the FakeQuant nodes this rewrite makes: no ONNX file can name it by accident.
FAKE_QUANT_DOMAIN = "quantcert.internal"
_Q, _DQ = "QuantizeLinear", "DequantizeLinear"


def _refuse(n: onnx.NodeProto, why: str) -> InputError:
    return InputError(f"ONNX {n.op_type} node {n.name!r}: {why}")


def _axis_of(n: onnx.NodeProto, blocks: bool = False) -> tuple[int, int]:
    """(axis, block_size); blocked scales only where ``blocks`` (a constant's DQ)."""
    axis, block = 1, 0
    for a in n.attribute:
        if a.name == "axis":
            axis = int(a.i)
        elif a.name == "block_size" and a.i != 0:
            if not blocks:
                raise _refuse(
                    n, f"blocked scales (block_size={a.i}) on an activation are not supported"
                )
            block = int(a.i)
        elif a.name == "saturate" and a.i != 1:
            raise _refuse(n, "saturate=0 (float8 overflow to NaN/inf) is not supported")
        elif a.name not in ("saturate", "output_dtype", "precision"):
            raise _refuse(n, f"attribute {a.name} is not supported")
        elif a.name == "output_dtype" and a.i != 0:
            raise _refuse(n, f"attribute output_dtype={a.i} is not supported")
    return axis, block


@dataclass(frozen=True)
class QParams:
    """A Q or DQ node's scale (float32), zero point (int64), range and grid."""

    scale: np.ndarray
    zp: np.ndarray
    qmin: int
    qmax: int
    grid: str  # "int" or a FLOAT_TYPES value


def _params(
    n: onnx.NodeProto, consts: dict[str, np.ndarray], types: dict[str, int], constant: bool
) -> QParams:
    """``constant``: the DQ of a constant, whose scales may be of any sign (onnxruntime's
    symmetric block quantizer writes negative ones); an activation's must be positive."""
    if len(n.input) < 2 or n.input[1] not in consts:
        raise _refuse(n, "the scale must be a constant")
    scale = np.asarray(consts[n.input[1]], dtype=np.float32)
    if not np.isfinite(scale).all() or not (constant or (scale > 0).all()):
        raise _refuse(n, "scales must be positive and finite")
    if len(n.input) > 2 and n.input[2]:
        if n.input[2] not in consts:
            raise _refuse(n, "the zero point must be a constant")
        zp_arr, etype = consts[n.input[2]], types[n.input[2]]
    elif n.op_type == _DQ and n.input[0] in types:
        zp_arr, etype = np.zeros(scale.shape, np.int64), types[n.input[0]]
    else:
        zp_arr, etype = np.zeros(scale.shape, np.int64), TensorProto.UINT8
    if etype in FLOAT_TYPES:
        zp = np.asarray(zp_arr).astype(np.float64)
        if (zp != 0).any():
            raise _refuse(n, "a float8 zero point must be 0")
        top = int(FLOAT_GRIDS[FLOAT_TYPES[etype]][1])
        return QParams(scale, zp.astype(np.int64), -top, top, FLOAT_TYPES[etype])
    if etype not in INT_TYPES:
        name = TensorProto.DataType.Name(etype)
        raise _refuse(
            n,
            f"quantized type {name} is not supported (int4, uint4, int8, uint8, int16, "
            "uint16, int32, float8e4m3fn, float8e5m2)",
        )
    qmin, qmax = INT_TYPES[etype]
    return QParams(scale, np.asarray(zp_arr).astype(np.int64), qmin, qmax, "int")


def _blocked(v: np.ndarray, axis: int, block: int, shape: tuple[int, ...]) -> np.ndarray:
    """A blocked scale or zero point (``shape`` but ``ceil(d / block)`` along ``axis``)
    repeated to the full tensor."""
    axis = axis % len(shape)
    want = list(shape)
    want[axis] = -(-shape[axis] // block)
    if list(v.shape) != want:
        raise InputError(f"blocked parameter of shape {list(v.shape)}, expected {want}")
    out: np.ndarray = np.repeat(v, block, axis=axis).take(range(shape[axis]), axis=axis)
    return out


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A per-tensor (scalar) or per-axis (1-D) parameter shaped to broadcast along ``axis``."""
    if v.size == 1:
        return v.reshape(())
    axis = axis % ndim
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def quantize_np(
    x: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int, grid: str = "int"
) -> np.ndarray:
    """onnxruntime's QuantizeLinear in float32 (scale and zp already broadcastable): int64
    levels, or for a float grid the float8 values as float64."""
    t = np.asarray(x, dtype=np.float32) / scale.astype(np.float32)
    if grid != "int":
        dtype, top = FLOAT_GRIDS[grid][:2]
        c = torch.clamp(torch.from_numpy(np.ascontiguousarray(t)), -top, top)
        f8: np.ndarray = c.to(dtype).to(torch.float64).numpy()
        return f8
    out: np.ndarray = np.clip(np.rint(t).astype(np.float64) + zp, qmin, qmax).astype(np.int64)
    return out


def dequantize_np(q: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """onnxruntime's DequantizeLinear: ``float32(q - zp) * scale`` in float32 (q integer
    levels, or float8 values with zp 0)."""
    q = np.asarray(q)
    if q.dtype.kind == "f" or (q.dtype.kind == "V" and "float" in q.dtype.name):
        levels = q.astype(np.float32)  # float8 values are exact in float32
    else:
        levels = (q.astype(np.int64) - zp).astype(np.float32)
    out: np.ndarray = levels * scale.astype(np.float32)
    return out


def is_qdq(model: onnx.ModelProto) -> bool:
    kinds = (_Q, _DQ, "MatMulNBits", *UNSUPPORTED)
    return any(n.op_type in kinds for n in model.graph.node)


def rewrite(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ model with constant DQs folded and activation Q/DQ pairs as ``FakeQuant``."""
    graph = model.graph
    for n in graph.node:
        if n.op_type in UNSUPPORTED or n.op_type.startswith("QLinear"):
            raise InputError(
                f"quantized operator {n.op_type} (node {n.name!r}) is not supported; "
                f"supported: QDQ graphs (QuantizeLinear/DequantizeLinear) with float operators"
            )
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    types: dict[str, int] = {t.name: t.data_type for t in graph.initializer}
    for n in graph.node:  # Constant nodes holding scales or zero points
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
            types[n.output[0]] = n.attribute[0].t.data_type
    producer = {o: n for n in graph.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    new_inits: dict[str, np.ndarray] = {}
    replaced: dict[int, onnx.NodeProto | None] = {}  # id(node) -> replacement (None: drop)
    expanded: dict[int, list[onnx.NodeProto]] = {}  # id(node) -> several replacements
    for n in graph.node:
        if n.op_type == "Cast" and _float_cast(n) and n.input[0] in consts:
            if consts[n.input[0]].dtype == np.float32:  # the float8 quantizer's biases
                new_inits[n.output[0]] = consts[n.input[0]]
                replaced[id(n)] = None
            continue
        if n.op_type == "MatMulNBits":
            expanded[id(n)] = matmul_nbits(n, consts, new_inits)
            continue
        if n.op_type != _DQ:
            continue
        axis, block = _axis_of(n, blocks=n.input[0] in consts)
        p = _params(n, consts, types, constant=n.input[0] in consts)
        scale, zp, qmin, qmax = p.scale, p.zp, p.qmin, p.qmax
        src = n.input[0]
        if src in consts:  # a quantized initializer
            q = consts[src]
            if types[src] not in INT_TYPES and types[src] not in FLOAT_TYPES:
                name = TensorProto.DataType.Name(types[src])
                raise _refuse(n, f"dequantizes a {name} constant")
            if (types[src] in FLOAT_TYPES) != (p.grid != "int"):
                raise _refuse(n, "the constant's type differs from its zero point's")
            if block:
                s_full, z_full = (_blocked(v, axis, block, q.shape) for v in (scale, zp))
            else:
                s_full, z_full = _along(scale, axis, q.ndim), _along(zp, axis, q.ndim)
            new_inits[n.output[0]] = dequantize_np(q, s_full, z_full)
            replaced[id(n)] = None
            continue
        qn = producer.get(src)
        if qn is None or qn.op_type != _Q:
            raise _refuse(
                n, "only a DequantizeLinear of a constant or of a QuantizeLinear is supported"
            )
        q_axis, _ = _axis_of(qn)
        qp = _params(qn, consts, types, constant=False)
        q_scale, q_zp, q_min, q_max = qp.scale, qp.zp, qp.qmin, qp.qmax
        if src in outputs or any(u.op_type != _DQ for u in users.get(src, [])):
            raise _refuse(
                qn, "its integer output is read by an operator other than DequantizeLinear"
            )
        if (
            (q_min, q_max, qp.grid) != (qmin, qmax, p.grid)
            or not np.array_equal(q_scale, scale)
            or not np.array_equal(q_zp, zp)
            or (scale.size > 1 and q_axis != axis)
        ):
            raise _refuse(n, "its scale, zero point or axis differ from its QuantizeLinear's")
        replaced[id(qn)] = None
        x = qn.input[0]
        if x in consts:  # a float weight quantized in the graph
            w = np.asarray(consts[x], dtype=np.float32)
            s, z = _along(scale, axis, w.ndim), _along(zp, axis, w.ndim)
            levels = quantize_np(w, s, z, qmin, qmax, p.grid)
            new_inits[n.output[0]] = dequantize_np(levels, s, z)
            replaced[id(n)] = None
            continue
        attrs: dict[str, Any] = {
            "scale": [float(v) for v in scale.ravel()],
            "zero_point": [int(v) for v in zp.ravel()],
            "qmin": qmin,
            "qmax": qmax,
        }
        if scale.size > 1:
            attrs["axis"] = axis
        replaced[id(n)] = helper.make_node(
            FAKE_QUANT,
            [x],
            [n.output[0]],
            name=n.name or f"{x}_fakequant",
            domain=FAKE_QUANT_DOMAIN,
            **attrs,
        )
    nodes: list[onnx.NodeProto] = []
    for n in graph.node:
        new = replaced.get(id(n), n)
        if id(n) in expanded:
            nodes.extend(expanded[id(n)])
        elif new is not None:
            nodes.append(new)
    read = {i for n in nodes for i in n.input}
    inits = [t for t in graph.initializer if t.name in read and t.name not in new_inits]
    inits += [numpy_helper.from_array(a, name) for name, a in new_inits.items() if name in read]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    return out


def _float_cast(n: onnx.NodeProto) -> bool:
    return any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)


def _float_grids(net: Network) -> Network:
    """FakeQuant nodes whose range is a float grid's ``[-M, M]`` become float quantizers."""
    tops = {int(v[1]): k for k, v in FLOAT_GRIDS.items()}

    def change(node: Node) -> Op:
        op = node.op
        float_range = isinstance(op, FakeQuant) and op.qmax in tops and op.qmin == -op.qmax
        if isinstance(op, FakeQuant) and op.grid == "int" and float_range:
            grid = tops[op.qmax]
            return FakeQuant(op.scale, op.zero_point, op.qmin, op.qmax, op.axis, grid)
        return op

    return net.map_ops(change)


def from_qdq(path: str | Path) -> Network:
    """Load a QDQ ONNX file (or a plain float one) into a ``Network``."""
    from quantcert.intake.onnx_model import _read, translate

    path = Path(path)
    model = _read(path)
    net = _float_grids(translate(rewrite(model), path.stem))
    net.origin = str(path)
    return net
