"""The ONNX attributes each supported operator honours, and the values it accepts.

No attribute is silently ignored: a node that carries an attribute not in its operator's
table, or a value outside the accepted set, is refused with one line naming the operator,
the node, the attribute and its value. ``ANY`` means every value is honoured (the handler
reads it); a tuple lists the accepted values. Semantic checks that depend on shapes (a
kernel shape that matches the weight, pads that are symmetric) stay in the handlers.
Nodes computed on constants at load (``onnx_fold``) are evaluated by the ONNX reference
implementation, which honours every attribute they carry; the tables cover the operators
the IR computes.
"""

from __future__ import annotations

from typing import Any, Final

import onnx

from quantcert.errors import InputError

ANY: Final = None
_SPATIAL = {"kernel_shape": ANY, "pads": ANY, "strides": ANY}
_AUTO_PAD = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")

#: op type -> attribute name -> accepted values (``ANY``: the handler reads any value).
ATTRIBUTES: dict[str, dict[str, tuple[Any, ...] | None]] = {
    "Gemm": {"alpha": ANY, "beta": ANY, "transA": (0,), "transB": (0, 1)},
    "MatMul": {},
    "Conv": {
        **_SPATIAL,
        "auto_pad": ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"),
        "dilations": ANY,
        "group": ANY,
    },
    "Add": {},
    "Sub": {},
    "Mul": {},
    "Div": {},
    # momentum only matters in training; inference ignores it by definition.
    "BatchNormalization": {"epsilon": ANY, "momentum": ANY, "training_mode": (0,), "spatial": (1,)},
    "Flatten": {"axis": ANY},
    # allowzero=1 differs from 0 only for a 0 in the target shape: the handler refuses one.
    "Reshape": {"allowzero": (0, 1)},
    "Pad": {"mode": ("constant",), "pads": ANY, "value": ANY},
    # storage_order only affects the Indices output, which the handler refuses to provide.
    "MaxPool": {
        **_SPATIAL,
        "auto_pad": _AUTO_PAD,
        "ceil_mode": (0, 1),
        "dilations": ANY,
        "storage_order": (0, 1),
    },
    "AveragePool": {
        **_SPATIAL,
        "auto_pad": _AUTO_PAD,
        "ceil_mode": (0, 1),
        "count_include_pad": (0, 1),
        "dilations": ANY,
    },
    "GlobalAveragePool": {},
    "GlobalMaxPool": {},
    "Clip": {"min": ANY, "max": ANY},
    "Max": {},
    "Min": {},
    "Sum": {},
    "Squeeze": {"axes": ANY},
    "Unsqueeze": {"axes": ANY},
    "Transpose": {"perm": ANY},
    "Concat": {"axis": ANY},
    "Slice": {"starts": ANY, "ends": ANY, "axes": ANY},
    "Split": {"axis": ANY, "split": ANY, "num_outputs": ANY},
    "ReduceMean": {"axes": ANY, "keepdims": (0, 1), "noop_with_empty_axes": (0, 1)},
    "ReduceSum": {"axes": ANY, "keepdims": (0, 1), "noop_with_empty_axes": (0, 1)},
    # saturate only applies to float8 targets, which the handler refuses.
    "Cast": {"to": ANY, "saturate": ANY},
    "Relu": {},
    "Sigmoid": {},
    "Tanh": {},
    "LeakyRelu": {"alpha": ANY},
    "HardSigmoid": {"alpha": ANY, "beta": ANY},
    "HardSwish": {},
    "Softplus": {},
    "Elu": {"alpha": ANY},
    "Erf": {},
    "Softmax": {"axis": ANY},
    "Identity": {},
    "Dropout": {"seed": ANY, "ratio": ANY},
    "Constant": {
        "value": ANY,
        "value_float": ANY,
        "value_floats": ANY,
        "value_int": ANY,
        "value_ints": ANY,
    },
    # Written by intake/qdq.py for a QuantizeLinear -> DequantizeLinear pair on an activation.
    "FakeQuant": {"scale": ANY, "zero_point": ANY, "qmin": ANY, "qmax": ANY, "axis": ANY},
}


def _plain(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def attributes(n: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (strings decoded), after checking every one
    against the operator's table."""
    table = ATTRIBUTES.get(n.op_type, {})
    out: dict[str, Any] = {}
    for a in n.attribute:
        value = _plain(onnx.helper.get_attribute_value(a))
        if a.name not in table:
            raise InputError(
                f"ONNX {n.op_type} node {n.name!r}: attribute {a.name}={value!r} is not supported"
            )
        allowed = table[a.name]
        if allowed is not None and value not in allowed:
            raise InputError(
                f"ONNX {n.op_type} node {n.name!r}: attribute {a.name}={value!r} is not "
                f"supported (supported: {', '.join(map(repr, allowed))})"
            )
        out[a.name] = value
    return out
