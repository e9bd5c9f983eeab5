"""Intake of QDQ graphs as ``onnxruntime.quantization`` writes them (QDQ format).

The graph is rewritten before translation:

- a ``DequantizeLinear`` of a constant (an integer initializer, or a ``QuantizeLinear`` of a
  float initializer) folds into the exact dequantized float32 weight,
  ``float32(q - zp) * scale`` as onnxruntime computes it (per tensor or per ``axis``);
- a ``QuantizeLinear`` -> ``DequantizeLinear`` pair on an activation becomes one
  ``FakeQuant`` node (IR op ``ops.quantizer.FakeQuant``), its scale, zero point, range and
  axis as attributes.

Other quantized operators (``QLinearConv``, ``QLinearMatMul``, ``MatMulInteger``,
``ConvInteger``, ``DynamicQuantizeLinear``, ``MatMulNBits``, ...) are refused by name, as are
blocked scales (``block_size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantcert.errors import InputError
from quantcert.network import Network

#: Quantized operators of onnxruntime's QOperator and dynamic formats: refused by name.
UNSUPPORTED = (
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "MatMulNBits",
    "QGemm",
    "QAttention",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
)
FAKE_QUANT = "FakeQuant"
#: The domain of the FakeQuant nodes this rewrite makes: no ONNX file can name it by accident.
FAKE_QUANT_DOMAIN = "quantcert.internal"
_Q, _DQ = "QuantizeLinear", "DequantizeLinear"


def _refuse(n: onnx.NodeProto, why: str) -> InputError:
    return InputError(f"ONNX {n.op_type} node {n.name!r}: {why}")


def _axis_of(n: onnx.NodeProto) -> int:
    axis = 1
    for a in n.attribute:
        if a.name == "axis":
            axis = int(a.i)
        elif a.name == "block_size" and a.i != 0:
            raise _refuse(n, f"blocked scales (block_size={a.i}) are not supported")
        elif a.name not in ("saturate", "output_dtype", "precision"):
            raise _refuse(n, f"attribute {a.name} is not supported")
        elif a.name == "output_dtype" and a.i != 0:
            raise _refuse(n, f"attribute output_dtype={a.i} is not supported")
    return axis


def _params(
    n: onnx.NodeProto, consts: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(scale float32, zero point int64, qmin, qmax) of a Q or DQ node."""
    if len(n.input) < 2 or n.input[1] not in consts:
        raise _refuse(n, "the scale must be a constant")
    scale = np.asarray(consts[n.input[1]], dtype=np.float32)
    if len(n.input) > 2 and n.input[2]:
        if n.input[2] not in consts:
            raise _refuse(n, "the zero point must be a constant")
        zp_arr = consts[n.input[2]]
    else:
        zp_arr = np.zeros(scale.shape, dtype=np.uint8)
    if zp_arr.dtype.kind not in "iu" or zp_arr.dtype.itemsize > 4:
        raise _refuse(n, f"quantized type {zp_arr.dtype} is not supported (8, 16 or 32 bits)")
    info = np.iinfo(zp_arr.dtype)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise _refuse(n, "scales must be positive and finite")
    return scale, zp_arr.astype(np.int64), int(info.min), int(info.max)


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A per-tensor (scalar) or per-axis (1-D) parameter shaped to broadcast along ``axis``."""
    if v.size == 1:
        return v.reshape(())
    axis = axis % ndim
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def quantize_np(
    x: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int
) -> np.ndarray:
    """onnxruntime's QuantizeLinear in float32 (scale and zp already broadcastable)."""
    t = np.rint(np.asarray(x, dtype=np.float32) / scale.astype(np.float32))
    out: np.ndarray = np.clip(t.astype(np.float64) + zp, qmin, qmax).astype(np.int64)
    return out


def dequantize_np(q: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """onnxruntime's DequantizeLinear: ``float32(q - zp) * scale`` in float32."""
    out: np.ndarray = (np.asarray(q, dtype=np.int64) - zp).astype(np.float32)
    return out * scale.astype(np.float32)


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in (_Q, _DQ) or n.op_type in UNSUPPORTED for n in model.graph.node)


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
    for n in graph.node:  # Constant nodes holding scales or zero points
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    producer = {o: n for n in graph.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    new_inits: dict[str, np.ndarray] = {}
    replaced: dict[int, onnx.NodeProto | None] = {}  # id(node) -> replacement (None: drop)
    for n in graph.node:
        if n.op_type != _DQ:
            continue
        axis = _axis_of(n)
        scale, zp, qmin, qmax = _params(n, consts)
        src = n.input[0]
        if src in consts:  # an integer initializer
            q = consts[src]
            if q.dtype.kind not in "iu":
                raise _refuse(n, f"dequantizes a {q.dtype} constant")
            new_inits[n.output[0]] = dequantize_np(
                q, _along(scale, axis, q.ndim), _along(zp, axis, q.ndim)
            )
            replaced[id(n)] = None
            continue
        qn = producer.get(src)
        if qn is None or qn.op_type != _Q:
            raise _refuse(
                n, "only a DequantizeLinear of a constant or of a QuantizeLinear is supported"
            )
        q_axis = _axis_of(qn)
        q_scale, q_zp, q_min, q_max = _params(qn, consts)
        if src in outputs or any(u.op_type != _DQ for u in users.get(src, [])):
            raise _refuse(
                qn, "its integer output is read by an operator other than DequantizeLinear"
            )
        if (
            (q_min, q_max) != (qmin, qmax)
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
            new_inits[n.output[0]] = dequantize_np(quantize_np(w, s, z, qmin, qmax), s, z)
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
        if new is not None:
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


def from_qdq(path: str | Path) -> Network:
    """Load a QDQ ONNX file (or a plain float one) into a ``Network``."""
    from quantcert.intake.onnx_model import _read, translate

    path = Path(path)
    model = _read(path)
    net = translate(rewrite(model), path.stem)
    net.origin = str(path)
    return net
