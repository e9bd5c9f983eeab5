"""Constant folding at load: the shape arithmetic that exporters write (torch.onnx.export's
``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, ``Cast``, ``Constant``) is computed
here, before any node is translated into the IR.

``Shape`` and ``Size`` of an activation read its static ONNX shape (the batch dimension is 1,
the one the IR's samples have). A node of ``FOLDABLE`` whose inputs are all constants is
evaluated by the ONNX reference implementation (``onnx.reference``, the specification's own
code), so every attribute it carries is honoured as the standard defines it. The result is a
constant, like an initializer; no IR node is made. ``Identity`` of a constant is an alias of
it, and remembers the initializer it copies (``Builder.origin``), so a weight read through an
``Identity`` (torch's exporter writes one for a shared initializer) is still stated on the
file's own tensor.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from quantcert.intake.onnx_builder import Builder, refuse

#: Deterministic, side-effect-free operators folded when all their inputs are constants.
FOLDABLE = frozenset(
    {
        "Abs",
        "Add",
        "And",
        "Cast",
        "CastLike",
        "Ceil",
        "Concat",
        "ConstantOfShape",
        "Div",
        "Equal",
        "Expand",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "Max",
        "Min",
        "Mod",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Range",
        "Reciprocal",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "Reshape",
        "Round",
        "Shape",
        "Sign",
        "Size",
        "Slice",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Tile",
        "Transpose",
        "Unsqueeze",
        "Where",
    }
)


def _shape_of_activation(b: Builder, n: onnx.NodeProto) -> bool:
    """``Shape``/``Size`` of a computed tensor: its static ONNX shape."""
    if n.op_type not in ("Shape", "Size") or not n.input or n.input[0] in b.consts:
        return False
    full = b.full(b.src(n.input[0], n))
    if n.op_type == "Size":
        if list(n.attribute):
            raise refuse(n, f"attribute {n.attribute[0].name} is not supported")
        b.consts[n.output[0]] = np.asarray(int(np.prod(full)), dtype=np.int64)
        return True
    span = {"start": 0, "end": len(full)}
    for a in n.attribute:
        if a.name not in span:
            raise refuse(n, f"attribute {a.name} is not supported")
        span[a.name] = int(helper.get_attribute_value(a))
    dims = list(full)[span["start"] : span["end"]]  # ONNX clamps as Python slicing does
    b.consts[n.output[0]] = np.asarray(dims, dtype=np.int64)
    return True


def _identity(b: Builder, n: onnx.NodeProto) -> bool:
    if n.op_type != "Identity" or n.input[0] not in b.consts:
        return False
    if list(n.attribute):
        raise refuse(n, f"attribute {n.attribute[0].name} is not supported")
    b.consts[n.output[0]] = b.consts[n.input[0]]
    b.origin[n.output[0]] = b.origin.get(n.input[0], n.input[0])
    return True


def _evaluate(b: Builder, n: onnx.NodeProto) -> bool:
    inputs = [i for i in n.input if i]
    if n.op_type not in FOLDABLE or not inputs or not all(i in b.consts for i in inputs):
        return False
    from onnx.reference import ReferenceEvaluator

    feeds = {i: np.asarray(b.consts[i]) for i in inputs}
    try:
        graph = helper.make_graph(
            [n],
            "fold",
            [
                helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                for k, v in feeds.items()
            ],
            [helper.make_value_info(o, onnx.TypeProto()) for o in n.output if o],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", b.opset)])
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # the reference raises many types on invalid nodes
        text = " ".join(str(exc).split())[:200]
        why = f"cannot fold this node on constants ({type(exc).__name__}: {text})"
        raise refuse(n, why) from None
    for name, value in zip([o for o in n.output if o], results, strict=True):
        b.consts[name] = np.asarray(value)
    return True


def fold(b: Builder, n: onnx.NodeProto) -> bool:
    """Compute ``n`` on constants (its outputs become constants) where it can be; ``False``
    leaves the node to its IR handler."""
    if n.domain not in ("", "ai.onnx"):
        return False
    return _identity(b, n) or _shape_of_activation(b, n) or _evaluate(b, n)
