"""Translation of the ONNX operators that torchvision's newer CNNs add (issue 11): the product
of two activations (squeeze-excite gates, SiLU as ``Mul(x, Sigmoid(x))``), HardSigmoid,
HardSwish, Softplus, Elu and Erf.

HardSigmoid ``max(0, min(1, alpha x + beta))`` becomes two IR nodes, a ``Scale`` and a
``Clip(0, 1)``, whose relaxations are exact where the function is linear. Division by an
activation is refused (``onnx_layers``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch

from quantcert.intake.onnx_attributes import attributes
from quantcert.intake.onnx_builder import Builder, one_activation, refuse
from quantcert.ops import DTYPE, Clip, Elu, Erf, HardSwish, Mul, Scale, Softplus


def product(b: Builder, n: onnx.NodeProto) -> None:
    """``Mul`` of two activations, broadcast by numpy rules on their ONNX shapes."""
    attributes(n)
    tensors, consts = b.split(n)
    if len(tensors) != 2 or consts:
        raise refuse(n, "expected two activation inputs")
    fulls = [b.full(t) for t in tensors]
    try:
        out = tuple(np.broadcast_shapes(*fulls))
    except ValueError:
        raise refuse(n, f"shapes {[list(f) for f in fulls]} do not broadcast") from None
    if b.batched and out[0] != 1:
        raise refuse(n, f"the product of shape {list(out)} grows the batch dimension")
    padded = [(1,) * (len(out) - len(f)) + tuple(f) for f in fulls]
    shapes = [p[1:] if b.batched else p for p in padded]
    b.add(n, Mul((shapes[0], shapes[1])), tensors)


def _hard_sigmoid(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    affine = onnx.helper.make_node("Mul", [], [n.output[0] + "_affine"], name=n.name + "_affine")
    scale = Scale(torch.tensor(alpha, dtype=DTYPE), torch.tensor(beta, dtype=DTYPE))
    mid = b.add(affine, scale, [src])
    b.add(n, Clip(0.0, 1.0), [mid])


def _elementwise(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    if n.op_type == "Elu":
        b.add(n, Elu(float(a.get("alpha", 1.0))), [src])
        return
    ops = {"HardSwish": HardSwish, "Softplus": Softplus, "Erf": Erf}
    b.add(n, ops[n.op_type](), [src])


ACTIVATION_HANDLERS: dict[str, Callable[[Builder, onnx.NodeProto], None]] = {
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _elementwise,
    "Softplus": _elementwise,
    "Elu": _elementwise,
    "Erf": _elementwise,
}
