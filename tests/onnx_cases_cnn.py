"""Generated cases for the operators exported CNNs use (issue 11): Clip (ReLU6), constant
folding of shape arithmetic, Transpose, Squeeze/Unsqueeze, reductions and global pooling,
Concat, Slice, Split, Cast, and pooling with ``ceil_mode`` and asymmetric padding. Each must
match onnxruntime or be refused naming its op (``onnx_generator.run_case``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import TensorProto, numpy_helper

from onnx_cases_act import act_cases
from onnx_generator import BASES, F32, F64, Case, G, conv_base, cycle_opset, gemm_base

Build = Callable[[G, str], str]
BIG = 2**63 - 1


def _scalar(g: G, v: float) -> str:
    return g.array(np.array(v, dtype=g.dtype))


def clip_cases() -> list[Case]:
    cases = []
    bounds: list[tuple[float | None, float | None]] = [
        (0.0, 6.0),
        (-0.5, 0.5),
        (0.0, None),
        (None, 0.3),
        (None, None),
        (0.2, 0.2),
        (1.0, -1.0),  # min > max: refused
    ]
    for i, ((lo, hi), base, form) in enumerate(
        itertools.product(bounds, ("gemm", "conv"), ("init", "node"))
    ):
        fn, shape, _ = BASES[base]

        def build(g: G, x: str, fn: Any = fn, lo: Any = lo, hi: Any = hi, form: str = form) -> str:
            def value(v: float | None) -> str:
                if v is None:
                    return ""
                if form == "init":
                    return _scalar(g, v)
                t = numpy_helper.from_array(np.array(v, dtype=g.dtype))
                return g.op("Constant", [], value=t)

            ins = [fn(g, x), value(lo), value(hi)]
            while ins[-1] == "":
                ins.pop()
            return g.op("Clip", ins)

        for dt in (F32, F64) if base == "gemm" and form == "init" else (F32,):
            cid = f"Clip-{lo}-{hi}-{form}-after-{base}-{np.dtype(dt).name}"
            cases.append(Case(cid, "Clip", shape, build, cycle_opset(i), dt))
    for i, (op, base, consts) in enumerate(
        itertools.product(("Max", "Min"), ("gemm", "conv"), ([0.0], [0.5, -1.0], [(3,)]))
    ):
        fn, shape, _ = BASES[base]

        def mm(g: G, x: str, op: str = op, fn: Any = fn, consts: Any = consts) -> str:
            ins = [fn(g, x)] + [
                g.const(c) if isinstance(c, tuple) else _scalar(g, c) for c in consts
            ]
            return g.op(op, ins)

        cid = f"{op}-{consts}-after-{base}".replace(" ", "")
        cases.append(Case(cid, op, shape, mm, cycle_opset(i)))

    def relu6_min_max(g: G, x: str) -> str:
        h = g.op("Max", [conv_base(g, x), _scalar(g, 0.0)])
        return g.op("Min", [h, _scalar(g, 6.0)])

    def sum3(g: G, x: str) -> str:
        h = conv_base(g, x)
        return g.op("Sum", [h, g.op("Relu", [h]), conv_base(g, x)])

    cases.append(Case("Max-Min-relu6", "Min", (1, 2, 6, 5), relu6_min_max, 13))
    cases.append(Case("Sum-three-activations", "Sum", (1, 2, 6, 5), sum3, 13))
    cases.append(Case("Sum-one", "Sum", (1, 4), lambda g, x: g.op("Sum", [gemm_base(g, x)]), 13))
    for lo, hi in ((0.0, 6.0), (None, 0.5), (-1.0, None)):
        attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}

        def old(g: G, x: str, attrs: Any = attrs) -> str:
            return g.op("Clip", [conv_base(g, x)], **attrs)

        cases.append(Case(f"Clip-attributes-{lo}-{hi}", "Clip", (1, 2, 6, 5), old, 10))
    return cases


def fold_cases() -> list[Case]:
    """torch.onnx.export's shape arithmetic, Identity of initializers, Cast of constants."""

    def torch_flatten(g: G, x: str) -> str:  # x.view(x.size(0), -1)
        h = conv_base(g, x)
        dim0 = g.op("Gather", [g.op("Shape", [h]), g.array(np.array(0, np.int64))], axis=0)
        if g.opset >= 13:
            first = g.op("Unsqueeze", [dim0, g.ints([0])])
        else:
            first = g.op("Unsqueeze", [dim0], axes=[0])
        shape = g.op("Concat", [first, g.ints([-1])], axis=0)
        return g.op("Reshape", [h, shape])

    def shared_weight(g: G, x: str) -> str:  # torch writes Identity for a shared initializer
        w = g.const((3, 4))
        h = g.op("Gemm", [x, w], transB=1)
        return g.op("Gemm", [g.op("Relu", [h]), g.op("Identity", [g.const((3, 3))])], transB=1)

    def identity_conv(g: G, x: str) -> str:
        w = g.op("Identity", [g.const((3, 2, 3, 3), scale=0.5)])
        return g.op("Conv", [x, w, g.op("Identity", [g.const((3,))])])

    def cast_shape(g: G, x: str) -> str:
        h = conv_base(g, x)
        s = g.op("Cast", [g.op("Shape", [h])], to=TensorProto.FLOAT)
        s = g.op("Cast", [g.op("Mul", [s, g.array(np.ones(4, np.float32))])], to=7)
        c = g.op("Slice", [s, g.ints([1]), g.ints([2])])
        return g.op("Reshape", [h, g.op("Concat", [g.ints([1]), c, g.ints([-1])], axis=0)])

    def shape_slice(g: G, x: str) -> str:  # Shape(start=2) (opset 15+)
        h = conv_base(g, x)
        hw = g.op("ReduceProd", [g.op("Shape", [h], start=2)], keepdims=1)
        return g.op("Reshape", [h, g.op("Concat", [g.ints([1, 3]), hw], axis=0)])

    def constant_of_shape(g: G, x: str) -> str:
        h = gemm_base(g, x)
        half = numpy_helper.from_array(np.array([0.5], dtype=g.dtype))
        return g.op("Mul", [h, g.op("ConstantOfShape", [g.ints([3])], value=half)])

    def size_div(g: G, x: str) -> str:
        h = conv_base(g, x)
        n = g.op("Div", [g.op("Size", [h]), g.array(np.array(3, np.int64))])
        shape = g.op("Concat", [g.ints([1, 3]), g.op("Unsqueeze", [n, g.ints([0])])], axis=0)
        return g.op("Reshape", [h, shape])

    specs: list[tuple[str, str, tuple[int, ...], Build, int]] = [
        ("torch-flatten-opset11", "Reshape", (1, 2, 6, 5), torch_flatten, 11),
        ("torch-flatten-opset13", "Reshape", (1, 2, 6, 5), torch_flatten, 13),
        ("torch-flatten-opset17", "Reshape", (1, 2, 6, 5), torch_flatten, 17),
        ("torch-flatten-symbolic", "Reshape", ("N", 2, 6, 5), torch_flatten, 17),
        ("Identity-shared-weight", "Identity", (1, 4), shared_weight, 14),
        ("Identity-conv-weight", "Identity", (1, 2, 6, 6), identity_conv, 16),
        ("Cast-shape", "Cast", (1, 2, 6, 5), cast_shape, 13),
        ("Shape-start", "Shape", (1, 2, 6, 5), shape_slice, 15),
        ("ConstantOfShape", "ConstantOfShape", (1, 4), constant_of_shape, 13),
        ("Size-div", "Size", (1, 2, 6, 5), size_div, 13),
    ]
    known = {"Cast-shape": (1, 3, 12), "Size-div": (1, 3, 12)}
    return [
        Case(
            f"fold-{cid}",
            op,
            shape,
            b,
            opset,
            strict=opset >= 15 and cid not in known,
            out_shape=known.get(cid, (shape[0], 36) if "flatten" in cid else None),
        )
        for cid, op, shape, b, opset in specs
    ]


def _axes(g: G, op: str, h: str, axes: list[int], attr_until: int, **attrs: Any) -> str:
    """``op`` with ``axes`` as an attribute (opsets up to ``attr_until``) or as an input."""
    if g.opset <= attr_until:
        return g.op(op, [h], axes=axes, **attrs)
    return g.op(op, [h, g.ints(axes)], **attrs)


def layout_cases() -> list[Case]:
    """Transpose, Squeeze, Unsqueeze on activations (each followed by a Mul along the last
    axis, so the layout counts)."""
    cases = []
    for i, perm in enumerate(
        [[0, 2, 3, 1], [0, 1, 3, 2], [0, 3, 1, 2], None, [1, 0, 2, 3], [0, 1, 2, 3]]
    ):

        def tr(g: G, x: str, perm: Any = perm) -> str:
            h = g.op("Transpose", [conv_base(g, x)], **({} if perm is None else {"perm": perm}))
            last = (1, 3, 4, 3)[perm[-1]] if perm is not None else 1
            return g.op("Mul", [h, g.const((last,))])

        cases.append(
            Case(
                f"Transpose-{perm}".replace(" ", ""), "Transpose", (1, 2, 6, 5), tr, cycle_opset(i)
            )
        )
    specs: list[tuple[str, str, list[int] | None, str, int]] = [
        ("Squeeze", "gap", [2, 3], "", 13),
        ("Squeeze", "gap", [-1, -2], "", 11),
        ("Squeeze", "gap", None, "", 13),  # squeezes the batch too: refused
        ("Squeeze", "gap", [0], "", 13),
        ("Unsqueeze", "gemm", [1], "", 13),
        ("Unsqueeze", "gemm", [0], "", 12),
        ("Unsqueeze", "gemm", [-1, 1], "", 17),
        ("Unsqueeze", "conv", [4], "", 19),
    ]
    for op, base, axes, _, opset in specs:

        def sq(g: G, x: str, op: str = op, base: str = base, axes: Any = axes) -> str:
            if base == "gap":
                h = g.op("GlobalAveragePool", [conv_base(g, x)])
            else:
                h = BASES[base][0](g, x)
            if axes is None:
                return g.op(op, [h])
            return _axes(g, op, h, axes, 12)

        shape = (1, 4) if base == "gemm" else (1, 2, 6, 5)
        cid = f"{op}-{axes}-after-{base}-opset{opset}".replace(" ", "")
        cases.append(Case(cid, op, shape, sq, opset))
    return cases


def reduce_cases() -> list[Case]:
    cases = []
    grid = itertools.product(
        ("ReduceMean", "ReduceSum"),
        ([2, 3], [1], [-1], [1, 2, 3], [0], None),
        (0, 1),
    )
    for i, (op, axes, keep) in enumerate(grid):
        opset = cycle_opset(i)

        def red(g: G, x: str, op: str = op, axes: Any = axes, keep: int = keep) -> str:
            h = conv_base(g, x)
            if axes is None:
                return g.op(op, [h], keepdims=keep)
            return _axes(g, op, h, axes, 17 if op == "ReduceMean" else 12, keepdims=keep)

        cid = f"{op}-{axes}-keepdims{keep}-opset{opset}".replace(" ", "")
        cases.append(Case(cid, op, (1, 2, 6, 5), red, opset))

    def noop(g: G, x: str) -> str:
        return g.op("ReduceSum", [conv_base(g, x)], noop_with_empty_axes=1)

    cases.append(Case("ReduceSum-noop-empty-axes", "ReduceSum", (1, 2, 6, 5), noop, 13))
    for i, (op, dt) in enumerate(itertools.product(("GlobalAveragePool", "GlobalMaxPool"), (F32,))):

        def glob(g: G, x: str, op: str = op) -> str:
            return g.op(op, [g.op("Relu", [x])])

        cid = f"{op}-{np.dtype(dt).name}"
        cases.append(Case(cid, op, (1, 2, 6, 5), glob, cycle_opset(i), dt))
    return cases


def concat_cases() -> list[Case]:
    cases = []
    for i, axis in enumerate((1, -3, 2, 3, -1, 0)):

        def cat(g: G, x: str, axis: int = axis) -> str:
            h = conv_base(g, x)
            return g.op("Concat", [h, g.op("Relu", [h]), conv_base(g, x)], axis=axis)

        cases.append(Case(f"Concat-conv-axis{axis}", "Concat", (1, 2, 6, 5), cat, cycle_opset(i)))

    def cat_gemm(g: G, x: str) -> str:
        return g.op("Concat", [gemm_base(g, x), x], axis=1)

    def cat_const(g: G, x: str) -> str:
        return g.op("Concat", [gemm_base(g, x), g.const((1, 2))], axis=1)

    def cat_then_gemm(g: G, x: str) -> str:
        h = g.op("Concat", [gemm_base(g, x), g.op("Sigmoid", [x])], axis=-1)
        return g.op("Gemm", [h, g.const((2, 7))], transB=1)

    cases.append(Case("Concat-gemm-and-input", "Concat", (1, 4), cat_gemm, 14))
    cases.append(Case("Concat-with-constant", "Concat", (1, 4), cat_const, 15))
    cases.append(Case("Concat-then-gemm", "Concat", (1, 4), cat_then_gemm, 16))
    return cases


def slice_split_cases() -> list[Case]:
    cases = []
    specs: list[tuple[list[int], list[int], list[int] | None, list[int] | None]] = [
        ([0], [2], [1], None),
        ([1, 0], [BIG, -1], [2, 3], None),
        ([-3], [BIG], [-2], [2]),
        ([0, 1], [4, 3], [2, 3], [2, 2]),
        ([0], [1], [0], None),
        ([3], [0], [2], [-1]),  # negative step: refused
        ([2], [2], [3], None),  # empty: refused
    ]
    for i, (starts, ends, axes, steps) in enumerate(specs):

        def sl(g: G, x: str, s: Any = starts, e: Any = ends, a: Any = axes, t: Any = steps) -> str:
            ins = [conv_base(g, x), g.ints(s), g.ints(e)]
            ins += [g.ints(a) if a is not None else ""] + ([g.ints(t)] if t is not None else [])
            while ins[-1] == "":
                ins.pop()
            return g.op("Slice", ins)

        cid = f"Slice-{starts}-{ends}-{axes}-{steps}".replace(" ", "").replace(str(BIG), "max")
        cases.append(Case(cid, "Slice", (1, 2, 6, 5), sl, cycle_opset(i)))

    def sl_old(g: G, x: str) -> str:
        return g.op("Slice", [conv_base(g, x)], starts=[1], ends=[3], axes=[2])

    cases.append(Case("Slice-attributes", "Slice", (1, 2, 6, 5), sl_old, 9))
    for opset, sizes in ((13, [1, 3]), (12, [3, 1]), (18, None), (13, None)):

        def sp(g: G, x: str, sizes: Any = sizes, opset: int = opset) -> str:
            h = conv_base(g, x)  # (1, 3, 4, 3): split the 4 rows (axis 2)
            if sizes is None:
                kw: dict[str, Any] = {"num_outputs": 2} if opset >= 18 else {}
                first = g.op("Split", [h], n_out=2, axis=2, **kw)
            elif opset >= 13:
                first = g.op("Split", [h, g.ints(sizes)], n_out=2, axis=2)
            else:
                first = g.op("Split", [h], n_out=2, axis=2, split=sizes)
            return g.op("Concat", [g.op("Relu", [first + "_1"]), first], axis=2)

        cases.append(Case(f"Split-{sizes}-opset{opset}", "Split", (1, 2, 6, 5), sp, opset))
    return cases


def pool_ceil_cases() -> list[Case]:
    """ceil_mode and asymmetric pads over input sizes where they add or drop windows, and
    the torchvision configurations (GoogLeNet/SqueezeNet max pools, Inception avg pools)."""
    configs: list[tuple[tuple[int, int], tuple[int, int], tuple[int, ...], int, int]] = [
        ((3, 3), (2, 2), (0, 0, 0, 0), 1, 0),
        ((3, 3), (2, 2), (1, 1, 1, 1), 1, 1),
        ((3, 3), (1, 1), (1, 1, 1, 1), 0, 0),
        ((2, 2), (2, 2), (0, 0, 0, 0), 1, 0),
        ((2, 2), (2, 2), (0, 0, 0, 0), 1, 1),
        ((3, 2), (3, 2), (1, 0, 0, 1), 1, 1),
        ((3, 3), (2, 3), (2, 1, 0, 2), 1, 0),
        ((2, 3), (3, 3), (1, 2, 1, 0), 0, 1),
        ((3, 3), (2, 2), (2, 2, 2, 2), 0, 1),
        ((3, 3), (3, 3), (0, 0, 2, 2), 1, 0),
    ]
    cases = []
    for i, ((kernel, stride, pads, ceil, extra), size, op) in enumerate(
        itertools.product(configs, (7, 8), ("MaxPool", "AveragePool"))
    ):
        attrs: dict[str, Any] = {"kernel_shape": kernel, "strides": stride, "pads": pads}
        attrs["ceil_mode"] = ceil
        attrs["count_include_pad" if op == "AveragePool" else "storage_order"] = extra

        def build(g: G, x: str, op: str = op, attrs: Any = attrs) -> str:
            return g.op(op, [x], **attrs)

        cid = f"{op}-ceil-" + "-".join(f"{k}{v}" for k, v in attrs.items()).replace(" ", "")
        cases.append(Case(f"{cid}-size{size}", op, (1, 2, size, size + 1), build, cycle_opset(i)))
    return cases


def grouped_conv_cases() -> list[Case]:
    """Depthwise (groups = channels, multiplier 1 and 2) and grouped convolutions, as
    MobileNet-style blocks write them (conv, BatchNormalization, ReLU6)."""
    cases = []
    for i, (cin, groups, mult, stride, pad) in enumerate(
        [(4, 4, 1, 1, 1), (4, 4, 2, 2, 1), (4, 2, 1, 1, 0), (6, 3, 2, 2, 1), (4, 4, 1, 2, 0)]
    ):

        def build(
            g: G,
            x: str,
            cin: int = cin,
            groups: int = groups,
            mult: int = mult,
            s: int = stride,
            p: int = pad,
        ) -> str:
            cout = groups * mult
            w = g.const((cout, cin // groups, 3, 3), scale=0.5)
            h = g.op("Conv", [x, w, g.const((cout,))], group=groups, strides=[s, s], pads=[p] * 4)
            var = g.array(np.asarray(g.rng.uniform(0.5, 2, cout), dtype=g.dtype))
            ins = [h, g.const((cout,)), g.const((cout,)), g.const((cout,)), var]
            return g.op("Clip", [g.op("BatchNormalization", ins), _scalar(g, 0.0), _scalar(g, 6.0)])

        cid = f"Conv-groups{groups}-of{cin}-mult{mult}-stride{stride}-pad{pad}"
        cases.append(Case(cid, "Conv", (1, cin, 7, 6), build, cycle_opset(i)))
    return cases


def tf2onnx_cases() -> list[Case]:
    """tf2onnx's layout: an NHWC input transposed to NCHW for Conv, Relu6 as Clip, back to
    NHWC, a spatial ReduceMean (keepdims 0) or Squeeze, then MatMul + Add; a Reshape to
    [-1, K] with a symbolic batch."""

    def nhwc(g: G, x: str, squeeze: bool = False) -> str:
        h = g.op("Transpose", [x], perm=[0, 3, 1, 2])
        h = g.op("Conv", [h, g.const((3, 2, 3, 3), scale=0.5), g.const((3,))], pads=[1] * 4)
        h = g.op("Clip", [h, _scalar(g, 0.0), _scalar(g, 6.0)])
        h = g.op("Transpose", [h], perm=[0, 2, 3, 1])
        if squeeze:
            h = g.op("ReduceMean", [h], axes=[1, 2], keepdims=1)
            h = g.op("Squeeze", [h, g.ints([1, 2])])
        else:
            h = g.op("ReduceMean", [h], axes=[1, 2], keepdims=0)
        return g.op("Add", [g.op("MatMul", [h, g.const((3, 2))]), g.const((2,))])

    def flat(g: G, x: str) -> str:
        h = g.op("Transpose", [x], perm=[0, 3, 1, 2])
        h = g.op("Conv", [h, g.const((3, 2, 2, 2), scale=0.5)], strides=[2, 2])
        h = g.op("Reshape", [g.op("Transpose", [h], perm=[0, 2, 3, 1]), g.ints([-1, 18])])
        return g.op("Add", [g.op("MatMul", [h, g.const((18, 2))]), g.const((2,))])

    return [
        Case("tf2onnx-nhwc-reducemean", "Transpose", ("unk__1", 6, 5, 2), nhwc, 13),
        Case("tf2onnx-nhwc-squeeze", "Squeeze", (1, 6, 5, 2), lambda g, x: nhwc(g, x, True), 13),
        Case("tf2onnx-reshape-minus1", "Reshape", ("unk__2", 4, 6, 2), flat, 15),
    ]


def cnn_cases() -> list[Case]:
    return (
        tf2onnx_cases()
        + grouped_conv_cases()
        + clip_cases()
        + fold_cases()
        + layout_cases()
        + reduce_cases()
        + concat_cases()
        + slice_split_cases()
        + pool_ceil_cases()
        + act_cases()
    )
