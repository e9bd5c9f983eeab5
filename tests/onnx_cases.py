"""The enumeration of generated ONNX cases: every supported op over its attribute values
and broadcast shapes, float32 and some float64 graphs, opsets 13..19. Each case is built
from input ``x`` by ``onnx_generator.G``; ``all_cases`` lists them (unique ids)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import numpy_helper

from onnx_cases_cnn import cnn_cases
from onnx_generator import BASES, F32, F64, Case, G, cycle_opset, gemm_base, matmul_base


def elementwise_cases() -> list[Case]:
    cases = []
    for i, (base, op, first) in enumerate(
        itertools.product(BASES, ("Add", "Sub", "Mul", "Div"), (False, True))
    ):
        fn, shape, consts = BASES[base]
        for j, cshape in enumerate(consts):

            def build(
                g: G, x: str, fn: Any = fn, op: str = op, c: Any = cshape, f: bool = first
            ) -> str:
                h = fn(g, x)
                k = g.const(c, away=op == "Div")
                return g.op(op, [k, h] if f else [h, k])

            pos = "const-first" if first else "const-second"
            dtypes = (F32, F64) if base != "conv" and j % 2 == 0 else (F32,)
            for dt in dtypes:
                cid = f"{op}-{pos}-{cshape}-after-{base}-{np.dtype(dt).name}"
                cases.append(Case(cid, op, shape, build, cycle_opset(i + j), dt))
    return cases


def gemm_cases() -> list[Case]:
    cases = []
    biases: list[tuple[int, ...] | None] = [None, (), (1,), (3,), (1, 3)]
    grid = itertools.product((0, 1), (0, 1), (1.0, -2.0), (1.0, 0.25), biases)
    for i, (ta, tb, alpha, beta, bias) in enumerate(grid):
        if bias is None and beta != 1.0:
            continue
        k = 1 if ta else 4  # transA: x (1, 4) is A^T, so A is (4, 1) and K = 1

        def build(
            g: G,
            x: str,
            ta: int = ta,
            tb: int = tb,
            a: float = alpha,
            b: float = beta,
            bias: Any = bias,
            k: int = k,
        ) -> str:
            ins = [x, g.const((3, k) if tb else (k, 3))] + (
                [g.const(bias)] if bias is not None else []
            )
            return g.op("Gemm", ins, transA=ta, transB=tb, alpha=a, beta=b)

        for dt in (F32, F64) if i % 3 == 0 else (F32,):
            cid = (
                f"Gemm-transA{ta}-transB{tb}-alpha{alpha}-beta{beta}-bias{bias}-{np.dtype(dt).name}"
            )
            cases.append(Case(cid, "Gemm", (1, 4), build, cycle_opset(i), dt))
    cases.append(Case("Gemm-symbolic-batch", "Gemm", ("N", 4), gemm_base))
    cases.append(
        Case("Gemm-const-first", "Gemm", (1, 4), lambda g, x: g.op("Gemm", [g.const((3, 1)), x]))
    )
    return cases


def matmul_cases() -> list[Case]:
    cases = []
    specs: list[tuple[str, tuple[int, ...], Callable[[G, str], str]]] = [
        ("x@W", (1, 4), matmul_base),
        ("x@W-rank1", (4,), matmul_base),
        ("W@x-rank1", (4,), lambda g, x: g.op("MatMul", [g.const((3, 4)), x])),
        ("x@W-3d", (1, 2, 4), matmul_base),
        ("W@x-batched", (1, 4), lambda g, x: g.op("MatMul", [g.const((3, 1)), x])),
        ("x@W-rank1+bias", (4,), lambda g, x: g.op("Add", [matmul_base(g, x), g.const((3,))])),
    ]
    for i, (what, shape, build) in enumerate(specs):
        for dt in (F32, F64):
            cid = f"MatMul-{what}-{np.dtype(dt).name}"
            cases.append(Case(cid, "MatMul", shape, build, cycle_opset(i), dt))
    return cases


def conv_cases() -> list[Case]:
    base: dict[str, Any] = {
        "kernel": (3, 3),
        "pads": (0, 0, 0, 0),
        "strides": (1, 1),
        "dilations": (1, 1),
        "group": 1,
        "auto_pad": "NOTSET",
        "bias": True,
    }
    axes: dict[str, list[Any]] = {
        "kernel": [(2, 3), (1, 1)],
        "pads": [(1, 1, 1, 1), (1, 0, 1, 0), (0, 1, 1, 2), (2, 1, 2, 1)],
        "strides": [(2, 2), (1, 2)],
        "dilations": [(2, 2), (1, 2)],
        "group": [2],
        "auto_pad": ["SAME_UPPER", "SAME_LOWER", "VALID"],
        "bias": [False],
    }
    configs = [dict(base)] + [{**base, k: v} for k, vs in axes.items() for v in vs]
    rng = np.random.default_rng(0)
    for _ in range(25):
        configs.append({k: [base[k], *vs][rng.integers(len(vs) + 1)] for k, vs in axes.items()})
    cases = []
    for i, c in enumerate(configs):
        if c["auto_pad"].startswith("SAME") and c["dilations"] != (1, 1):
            continue  # onnxruntime: "Dilation not supported for AutoPadType::SAME_*"

        def build(g: G, x: str, c: dict[str, Any] = c) -> str:
            cout = 4 if c["group"] == 2 else 3
            ins = [x, g.const((cout, 2 // c["group"], *c["kernel"]), scale=0.5)]
            ins += [g.const((cout,))] if c["bias"] else []
            attrs: dict[str, Any] = {
                "strides": c["strides"],
                "dilations": c["dilations"],
                "group": c["group"],
                "kernel_shape": c["kernel"],
            }
            if c["auto_pad"] == "NOTSET":
                attrs["pads"] = c["pads"]
            else:
                attrs["auto_pad"] = c["auto_pad"]
            return g.op("Conv", ins, **attrs)

        cid = "Conv-" + "-".join(f"{k}{v}" for k, v in c.items()).replace(" ", "")
        cases.append(Case(cid, "Conv", (1, 2, 6, 6), build, cycle_opset(i)))
    return cases


def pool_cases() -> list[Case]:
    axes: dict[str, list[Any]] = {
        "kernel_shape": [(2, 2), (3, 3), (2, 3)],
        "strides": [(2, 2), (1, 1), (1, 2)],
        "pads": [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 0, 1), (1, 0, 0, 1)],
        "dilations": [(1, 1), (2, 2), (1, 2)],
        "ceil_mode": [0, 1],
        "auto_pad": ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"],
        "extra": [0, 1],  # storage_order (MaxPool), count_include_pad (AveragePool)
    }
    first = {k: v[0] for k, v in axes.items()}
    configs = [dict(first)] + [{**first, k: v} for k, vs in axes.items() for v in vs[1:]]
    rng = np.random.default_rng(1)
    configs += [{k: vs[rng.integers(len(vs))] for k, vs in axes.items()} for _ in range(20)]
    cases = []
    for op, (i, c) in itertools.product(("MaxPool", "AveragePool"), enumerate(configs)):
        opset = 19 if op == "AveragePool" and c["dilations"] != (1, 1) else cycle_opset(i)
        if c["auto_pad"] != "NOTSET":
            c = {**c, "pads": None}
        elif any(p >= k for p, k in zip(c["pads"], 2 * c["kernel_shape"], strict=True)):
            continue  # ONNX requires pads < kernel
        attrs = {k: v for k, v in c.items() if k != "extra" and v is not None}
        if op == "AveragePool" and opset < 19:
            del attrs["dilations"]  # an attribute since opset 19 only
        if op == "MaxPool":
            attrs["storage_order"] = c["extra"]
        else:
            attrs["count_include_pad"] = c["extra"]

        def build(g: G, x: str, op: str = op, attrs: dict[str, Any] = attrs) -> str:
            return g.op(op, [x], **attrs)

        cid = f"{op}-" + "-".join(f"{k}{v}" for k, v in attrs.items()).replace(" ", "")
        for dt in (F32, F64) if op == "MaxPool" and i % 4 == 0 else (F32,):
            cases.append(Case(f"{cid}-{np.dtype(dt).name}", op, (1, 2, 7, 7), build, opset, dt))
    return cases


def batchnorm_cases() -> list[Case]:
    def bn(g: G, h: str, c: int, eps: float = 1e-5, gamma: float = 1.0) -> str:
        scale = g.array(np.asarray(gamma * g.rng.uniform(0.5, 2, c), dtype=g.dtype))
        var = g.array(np.asarray(g.rng.uniform(0.2, 2, c), dtype=g.dtype))
        return g.op(
            "BatchNormalization", [h, scale, g.const((c,)), g.const((c,)), var], epsilon=eps
        )

    def conv(g: G, x: str, bias: bool = False, pad: int = 0) -> str:
        ins = [x, g.const((3, 2, 3, 3), scale=0.5)] + ([g.const((3,))] if bias else [])
        return g.op("Conv", ins, pads=[pad] * 4)

    def residual(g: G, x: str) -> str:
        c = conv(g, x, True, 1)
        return bn(g, g.op("Add", [g.op("Relu", [c]), c]), 3)

    def shared(g: G, x: str) -> str:  # the conv's output has two consumers: no fold
        c = conv(g, x)
        return g.op("Add", [bn(g, c, 3), c])

    specs: list[tuple[str, tuple[int, ...], Callable[[G, str], str], tuple[type, ...]]] = [
        ("after-conv", (1, 2, 6, 6), lambda g, x: bn(g, conv(g, x), 3), (F32,)),
        ("after-conv-bias", (1, 2, 6, 6), lambda g, x: bn(g, conv(g, x, True), 3, 0.1), (F32,)),
        ("after-conv-scale20", (1, 2, 6, 6), lambda g, x: bn(g, conv(g, x), 3, 1e-3, 20.0), (F32,)),
        ("after-gemm", (1, 4), lambda g, x: bn(g, gemm_base(g, x), 3), (F32, F64)),
        (
            "after-gemm-bias",
            (1, 4),
            lambda g, x: bn(g, g.op("Add", [gemm_base(g, x), g.const((3,))]), 3),
            (F32, F64),
        ),
        ("standalone-input", (1, 3, 4, 4), lambda g, x: bn(g, x, 3, 0.01), (F32, F64)),
        ("after-residual-add", (1, 2, 6, 6), residual, (F32,)),
        ("conv-output-shared", (1, 2, 6, 6), shared, (F32,)),
    ]
    return [
        Case(
            f"BatchNormalization-{w}-{np.dtype(dt).name}",
            "BatchNormalization",
            s,
            b,
            cycle_opset(i + 1),
            dt,
        )
        for i, (w, s, b, dts) in enumerate(specs)
        for dt in dts
    ]


def shape_cases() -> list[Case]:
    """Flatten, Reshape (each followed by a Mul along its last axis, so the layout counts)."""
    cases = []
    for i, axis in enumerate((0, 1, 2, 3, -1, -3)):
        cases.append(
            Case(
                f"Flatten-axis{axis}",
                "Flatten",
                (1, 2, 3, 3),
                lambda g, x, a=axis: g.op("Flatten", [x], axis=a),  # type: ignore[misc]
                cycle_opset(i),
            )
        )
    targets = [[1, -1], [1, 18], [0, -1], [1, 2, 9], [-1, 18], [1, 3, 6], [2, 9], [1, 0, 9], [18]]
    for i, t in enumerate(targets):
        last = 18 if t[-1] == -1 else (2 if t[-1] == 0 else t[-1])

        def build(g: G, x: str, t: list[int] = t, last: int = last) -> str:
            return g.op("Mul", [g.op("Reshape", [x, g.ints(t)]), g.const((last,))])

        cases.append(
            Case(f"Reshape-{t}".replace(" ", ""), "Reshape", (1, 2, 3, 3), build, cycle_opset(i))
        )
    return cases


def pad_cases() -> list[Case]:
    pads = [
        (0, 0, 1, 1, 0, 0, 1, 1),
        (0, 0, 1, 0, 0, 0, 0, 2),
        (0, 1, 0, 0, 0, 0, 0, 0),
        (1, 0, 0, 0, 0, 0, 0, 0),
        (0, 0, -1, 0, 0, 0, 0, -1),
        (0, 0, 0, 2, 0, 0, 0, 1),
    ]
    cases = []
    for i, (p, mode, value) in enumerate(
        itertools.product(pads, ("constant", "reflect", "edge", "wrap"), (0.0, 0.5))
    ):
        if mode != "constant" and (value != 0.0 or min(p) < 0):
            continue
        opset = 19 if mode == "wrap" else cycle_opset(i)

        def build(g: G, x: str, p: Any = p, mode: str = mode, v: float = value) -> str:
            ins = [x, g.ints(list(p))] + ([g.array(np.array(v, g.dtype))] if v else [])
            return g.op("Pad", ins, mode=mode)

        for dt in (F32, F64) if i % 3 == 0 else (F32,):
            cid = f"Pad-{p}-{mode}-value{value}-{np.dtype(dt).name}".replace(" ", "")
            cases.append(Case(cid, "Pad", (1, 2, 4, 4), build, opset, dt))
    for axes, q in (([2, 3], [1, 0, 0, 1]), ([-1], [2, 1]), ([1], [1, 0])):

        def build_axes(g: G, x: str, axes: list[int] = axes, q: list[int] = q) -> str:
            return g.op("Pad", [x, g.ints(q), "", g.ints(axes)])

        cases.append(
            Case(f"Pad-axes{axes}-{q}".replace(" ", ""), "Pad", (1, 2, 4, 4), build_axes, 18)
        )
    return cases


def activation_cases() -> list[Case]:
    acts: list[tuple[str, dict[str, Any]]] = [("Relu", {}), ("Sigmoid", {}), ("Tanh", {})]
    acts += [("LeakyRelu", {"alpha": a}) for a in (0.01, 0.5, 1.0, 2.0, -0.5, 0.0)]
    acts += [("LeakyRelu", {})]
    cases = []
    for i, ((op, attrs), base) in enumerate(itertools.product(acts, ("gemm", "conv"))):
        fn, shape, _ = BASES[base]

        def build(g: G, x: str, fn: Any = fn, op: str = op, attrs: Any = attrs) -> str:
            return g.op(op, [fn(g, x)], **attrs)

        for dt in (F32, F64) if base == "gemm" and op != "LeakyRelu" else (F32,):
            cid = f"{op}-{attrs}-after-{base}-{np.dtype(dt).name}".replace(" ", "")
            cases.append(Case(cid, op, shape, build, cycle_opset(i), dt))
    for i, (base, axis) in enumerate(
        [
            ("gemm", -1),
            ("gemm", 1),
            ("gemm", 0),
            ("conv", 1),
            ("conv", 2),
            ("conv", 3),
            ("conv", -1),
            ("conv", -3),
        ]
    ):
        fn, shape, _ = BASES[base]

        def soft(g: G, x: str, fn: Any = fn, axis: int = axis) -> str:
            return g.op("Softmax", [fn(g, x)], axis=axis)

        cid = f"Softmax-axis{axis}-after-{base}"
        cases.append(Case(cid, "Softmax", shape, soft, cycle_opset(i)))
    return cases


def misc_cases() -> list[Case]:
    """Identity, Dropout (inference: identity), Constant nodes in several forms."""

    def dropout(g: G, x: str, ratio: bool = False, mask: bool = False) -> str:
        ins = [gemm_base(g, x)] + ([g.array(np.array(0.3, g.dtype))] if ratio else [])
        return g.op("Relu", [g.op("Dropout", ins, n_out=2 if mask else 1)])

    def const_node(g: G, **attrs: Any) -> str:
        return g.op("Constant", [], **attrs)

    def const_weight(g: G, x: str) -> str:
        w = numpy_helper.from_array(np.asarray(g.rng.normal(size=(4, 3)), g.dtype))
        return g.op("MatMul", [x, const_node(g, value=w)])

    def const_float(g: G, x: str) -> str:
        return g.op("Add", [gemm_base(g, x), const_node(g, value_float=0.75)])

    def const_floats(g: G, x: str) -> str:
        return g.op("Mul", [gemm_base(g, x), const_node(g, value_floats=[0.5, -1.0, 2.0])])

    def const_shape(g: G, x: str) -> str:
        return g.op("Reshape", [x, const_node(g, value_ints=[1, -1])])

    specs: list[tuple[str, str, tuple[int, ...], Callable[[G, str], str]]] = [
        ("Identity", "Identity", (1, 4), lambda g, x: g.op("Identity", [gemm_base(g, x)])),
        ("Dropout", "Dropout", (1, 4), dropout),
        ("Dropout-ratio", "Dropout", (1, 4), lambda g, x: dropout(g, x, ratio=True)),
        ("Dropout-mask-output", "Dropout", (1, 4), lambda g, x: dropout(g, x, mask=True)),
        ("Constant-tensor-weight", "Constant", (1, 4), const_weight),
        ("Constant-value_float", "Constant", (1, 4), const_float),
        ("Constant-value_floats", "Constant", (1, 4), const_floats),
        ("Constant-value_ints-shape", "Constant", (1, 2, 3, 3), const_shape),
    ]
    return [Case(cid, op, s, b, cycle_opset(i)) for i, (cid, op, s, b) in enumerate(specs)]


def all_cases() -> list[Case]:
    cases = (
        elementwise_cases()
        + gemm_cases()
        + matmul_cases()
        + conv_cases()
        + pool_cases()
        + batchnorm_cases()
        + shape_cases()
        + pad_cases()
        + activation_cases()
        + misc_cases()
        + cnn_cases()
    )
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases
