"""Generated cases for the operators torchvision's newer CNNs add (issue 11): Mul of two
activations (same shape, squeeze-excite broadcasting, SiLU, a square, both sides
broadcasting), HardSigmoid, HardSwish, Softplus, Elu, Erf and GELU as opset-17 exporters
write it. Division by an activation is refused naming Div. Pre-activations are scaled by 4
so that the draws cross the kinks (HardSwish at -3 and 3)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from onnx_generator import Case, G, conv_base, cycle_opset, gemm_base


def _scalar(g: G, v: float) -> str:
    return g.array(np.array(v, dtype=g.dtype))


def _wide(g: G, x: str, base: Any = conv_base) -> str:
    return g.op("Mul", [base(g, x), _scalar(g, 4.0)])


def product_cases() -> list[Case]:
    def same(g: G, x: str) -> str:
        h = _wide(g, x)
        return g.op("Mul", [h, g.op("Relu", [conv_base(g, x)])])

    def excite(g: G, x: str, first: bool = False) -> str:
        h = g.op("Relu", [conv_base(g, x)])
        gate = g.op("Sigmoid", [g.op("GlobalAveragePool", [h])])
        return g.op("Mul", [gate, h] if first else [h, gate])

    def silu(g: G, x: str) -> str:
        h = _wide(g, x)
        return g.op("Mul", [h, g.op("Sigmoid", [h])])

    def square(g: G, x: str) -> str:
        h = gemm_base(g, x)
        return g.op("Mul", [h, h])

    def both_broadcast(g: G, x: str) -> str:
        h = conv_base(g, x)
        rows = g.op("ReduceMean", [h], axes=[3], keepdims=1)  # (1, 3, 4, 1)
        cols = g.op("ReduceMean", [h], axes=[1, 2], keepdims=1)  # (1, 1, 1, 3)
        return g.op("Mul", [rows, cols])

    def divide(g: G, x: str) -> str:
        h = conv_base(g, x)
        return g.op("Div", [h, g.op("Sigmoid", [h])])

    conv, gemm = (1, 2, 6, 5), (1, 4)
    return [
        Case("Mul-two-activations", "Mul", conv, same, 13),
        Case("Mul-squeeze-excite", "Mul", conv, excite, 14),
        Case("Mul-squeeze-excite-gate-first", "Mul", conv, lambda g, x: excite(g, x, True), 17),
        Case("Mul-silu", "Mul", conv, silu, 17),
        Case("Mul-square-gemm", "Mul", gemm, square, 15),
        Case("Mul-both-broadcast", "Mul", conv, both_broadcast, 13),
        Case("Div-by-activation-refused", "Div", conv, divide, 13),
    ]


def activation_cases() -> list[Case]:
    cases = []
    hard: list[dict[str, float]] = [{}, {"alpha": 1 / 6, "beta": 0.5}, {"alpha": -0.3, "beta": 0.2}]
    for i, attrs in enumerate(hard):

        def hs(g: G, x: str, attrs: Any = attrs) -> str:
            return g.op("HardSigmoid", [_wide(g, x)], **attrs)

        cases.append(
            Case(
                f"HardSigmoid-{attrs}".replace(" ", ""),
                "HardSigmoid",
                (1, 2, 6, 5),
                hs,
                cycle_opset(i),
            )
        )
    for i, (op, attrs) in enumerate(
        [
            ("HardSwish", {}),
            ("Softplus", {}),
            ("Elu", {}),
            ("Elu", {"alpha": 0.5}),
            ("Elu", {"alpha": 2.0}),
            ("Erf", {}),
        ]
    ):
        for base, shape in ((conv_base, (1, 2, 6, 5)), (gemm_base, (1, 4))):

            def act(g: G, x: str, op: str = op, attrs: Any = attrs, base: Any = base) -> str:
                return g.op(op, [_wide(g, x, base)], **attrs)

            cid = f"{op}-{attrs}-after-{base.__name__}".replace(" ", "")
            cases.append(Case(cid, op, shape, act, cycle_opset(i, 14)))

    def gelu(g: G, x: str) -> str:  # torch.nn.GELU exported at opset 17
        h = _wide(g, x)
        e = g.op("Erf", [g.op("Div", [h, _scalar(g, math.sqrt(2.0))])])
        half = g.op("Mul", [h, g.op("Add", [e, _scalar(g, 1.0)])])
        return g.op("Mul", [half, _scalar(g, 0.5)])

    cases.append(Case("Erf-gelu-opset17", "Erf", (1, 2, 6, 5), gelu, 17))
    return cases


def act_cases() -> list[Case]:
    return product_cases() + activation_cases()
