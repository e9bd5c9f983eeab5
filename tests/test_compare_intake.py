"""quantcert compare, intake: the FakeQuant staircase (bounds against dense samples, values
against onnxruntime bit for bit; integer and float8 grids), hand-made QDQ graphs (float8
e5m2, the forms refused by name), and MatMulNBits against onnxruntime (outputs, the exact
weight, the difference bound)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantcert.errors import InputError
from quantcert.intake.qdq import from_qdq
from test_compare import _check_sound, _run, _session

ort = pytest.importorskip("onnxruntime")
quant = pytest.importorskip("onnxruntime.quantization")


# ----------------------------------------------------------------- the FakeQuant op


@pytest.mark.parametrize("grid", ["int", "float8e4m3fn", "float8e5m2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fake_quant_bounds_beat_by_no_sample(grid: str, seed: int) -> None:
    """Interval and linear bounds of the staircase hold at dense samples of each box,
    including boxes across zero, in saturation and on the float8 subnormals."""
    from quantcert.ops.base import Box
    from quantcert.ops.quantizer import FakeQuant

    gen = torch.Generator().manual_seed(seed)
    n = 6
    scale = torch.tensor([0.013, 0.37, 1.9e-3, 0.05, 2.0**-7, 0.7], dtype=torch.float64)
    if grid == "int":
        zp = torch.tensor([3.0, -5.0, 0.0, 120.0, -128.0, 7.0], dtype=torch.float64)
        op = FakeQuant(scale, zp, -128, 127)
    else:
        op = FakeQuant(scale, torch.zeros(n, dtype=torch.float64), -1, 1, grid=grid)
    top = float(op._ends()[1].abs().max())
    for width in (1e-6, 1e-2, 1.0, 3 * top):
        centre = (torch.rand((32, n), generator=gen, dtype=torch.float64) - 0.5) * 2.4 * top
        lo = centre - width * torch.rand((32, n), generator=gen, dtype=torch.float64)
        hi = centre + width * torch.rand((32, n), generator=gen, dtype=torch.float64)
        box = Box(lo, hi)
        t = torch.rand((400, 32, n), generator=gen, dtype=torch.float64)
        z = torch.cat([lo[None], hi[None], lo + (hi - lo) * t])
        y = op.quantize(z.reshape(-1, n)).reshape(z.shape)
        iv = op.interval([box], {})
        assert bool((y >= iv.lo).all() and (y <= iv.hi).all())
        A = torch.randn((3, 32, n), generator=gen, dtype=torch.float64)
        out = op.backward(A, [box], {})
        assert out is not None
        (a_in,), const, _ = out
        # Upper: A . y <= a_in . z + const at every sample.
        lhs = torch.einsum("sbn,kbn->ksb", A, y)
        rhs = torch.einsum("sbn,kbn->ksb", a_in, z) + const
        assert bool((lhs <= rhs + 1e-12 * (1 + rhs.abs())).all()), float((lhs - rhs).max())


def test_fake_quant_ends_are_onnxruntime_products() -> None:
    """In saturation the staircase returns float32((qmax - zp) * s): the relaxation uses that
    value, not the exact product, which can lie one float32 rounding above it."""
    from quantcert.ops.base import Box
    from quantcert.ops.quantizer import FakeQuant

    s = torch.tensor(np.float32(0.1234567), dtype=torch.float64)
    op = FakeQuant(s, torch.tensor(-100.0, dtype=torch.float64), 0, 65535)
    z = torch.full((1, 1), 1e6, dtype=torch.float64)
    y = op.quantize(z)
    exact = (65535 + 100) * float(s)
    assert float(y) != exact  # the float32 product differs from the exact one here
    out = op.backward(-torch.ones((1, 1, 1), dtype=torch.float64), [Box(z, z + 1)], {})
    assert out is not None
    (a_in,), const, _ = out
    assert -float(y) <= float(a_in[0, 0, 0] * z[0, 0] + const[0, 0])  # lower line <= y


# ----------------------------------------------------------------- hand-made QDQ graphs


def _hand_qdq(tmp: Path, elem: int, tag: str, **dq_attrs: int) -> tuple[Path, Path]:
    """x -> Q/DQ -> MatMul(DQ(W)) -> Q/DQ, quantized type ``elem``, and its float twin."""
    import ml_dtypes

    rng = np.random.default_rng(5)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    np_type = {
        TensorProto.FLOAT8E5M2: ml_dtypes.float8_e5m2,
        TensorProto.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz,
        TensorProto.UINT8: np.uint8,
    }[elem]
    ws = np.float32(0.05)
    wq = (w / ws).astype(np_type) if elem != TensorProto.UINT8 else np.uint8(w / ws + 128)

    def zero(name: str) -> onnx.TensorProto:
        return helper.make_tensor(name, elem, [], [0 if elem != TensorProto.UINT8 else 128])

    inits = [
        numpy_helper.from_array(wq, "Wq"),
        numpy_helper.from_array(np.float32(0.03), "xs"),
        numpy_helper.from_array(np.float32(0.07), "ys"),
        numpy_helper.from_array(ws, "ws"),
        zero("xz"),
        zero("yz"),
        zero("wz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dqx"),
        helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["W"], name="dqw", **dq_attrs),
        helper.make_node("MatMul", ["xd", "W"], ["h"], name="mm"),
        helper.make_node("QuantizeLinear", ["h", "ys", "yz"], ["hq"], name="qy"),
        helper.make_node("DequantizeLinear", ["hq", "ys", "yz"], ["y"], name="dqy"),
    ]
    io = (
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    q = helper.make_model(
        helper.make_graph(nodes, "q", *io, inits), opset_imports=[helper.make_opsetid("", 21)]
    )
    wf = numpy_helper.from_array(w, "W")
    f = helper.make_model(
        helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "f", *io, [wf]),
        opset_imports=[helper.make_opsetid("", 21)],
    )
    fp, qp = tmp / f"{tag}.onnx", tmp / f"{tag}.qdq.onnx"
    onnx.save(f, str(fp))
    onnx.save(q, str(qp))
    return fp, qp


def test_float8_e5m2_qdq_sound_against_onnxruntime(tmp_path: Path) -> None:
    f_path, q_path = _hand_qdq(tmp_path, TensorProto.FLOAT8E5M2, "e5m2")
    assert "float8e5m2" in from_qdq(q_path).nodes[0].op.describe()
    _check_sound(f_path, q_path, np.random.default_rng(1), 1.0)


def test_unsupported_qdq_forms_are_refused_by_name(tmp_path: Path) -> None:
    _, fnuz = _hand_qdq(tmp_path, TensorProto.FLOAT8E4M3FNUZ, "fnuz")
    with pytest.raises(InputError, match="FLOAT8E4M3FNUZ"):
        from_qdq(fnuz)
    _, blocked = _hand_qdq(tmp_path, TensorProto.UINT8, "blocked", axis=0, block_size=2)
    model = onnx.load(str(blocked))
    for n in model.graph.node:
        if n.name == "qx":  # blocked scales on an activation's Q/DQ pair
            n.attribute.extend([helper.make_attribute("block_size", 2)])
    onnx.save(model, str(blocked))
    with pytest.raises(InputError, match="block_size=2"):
        from_qdq(blocked)
    for op in ("QLinearConv", "QLinearMatMul", "MatMulInteger", "QGemm"):
        node = helper.make_node(op, ["x"], ["y"], name="n")
        g = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2])],
            [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2])],
        )
        path = tmp_path / f"{op}.onnx"
        onnx.save(helper.make_model(g), str(path))
        with pytest.raises(InputError, match=op):
            from_qdq(path)


# ----------------------------------------------------------------- MatMulNBits


def _matmul_mlp(k: int, rng: np.random.Generator) -> onnx.ModelProto:
    """x (1, k) -> MatMul (k, 16) + b -> Relu -> MatMul (16, 3): weights for MatMulNBits."""
    w1 = (rng.normal(size=(k, 16)) / np.sqrt(k)).astype(np.float32)
    b1 = rng.normal(size=16).astype(np.float32)
    w2 = rng.normal(size=(16, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h"], name="add1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "b1"), (w2, "W2"))]
    g = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def _nbits(
    tmp: Path,
    k: int,
    block: int,
    symmetric: bool,
    qdq: bool,
    accuracy: int | None = None,
    bits: int = 4,
) -> tuple[Path, Path]:
    nbits = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
    tag = f"nbits{k}_{block}_{int(symmetric)}_{int(qdq)}_{accuracy}_{bits}"
    f, q = tmp / f"{tag}.onnx", tmp / f"{tag}.q.onnx"
    model = _matmul_mlp(k, np.random.default_rng(k + block))
    onnx.save(model, str(f))
    fmt = quant.QuantFormat.QDQ if qdq else quant.QuantFormat.QOperator
    config = nbits.DefaultWeightOnlyQuantConfig(
        block_size=block,
        is_symmetric=symmetric,
        quant_format=fmt,
        accuracy_level=accuracy,
        bits=bits,
    )
    quantizer = nbits.MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(q))
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert ("DequantizeLinear" if qdq else "MatMulNBits") in ops
    return f, q


SIZES = ((64, 32), (160, 32), (256, 128), (200, 128))
NBITS = [(k, b, sym, qdq, 4) for k, b in SIZES for sym in (0, 1) for qdq in (False, True)]
NBITS += [(64, 32, sym, False, bits) for sym in (0, 1) for bits in (2, 8)]


@pytest.mark.parametrize(("k", "block", "symmetric", "qdq", "bits"), NBITS)
def test_matmul_nbits_matches_onnxruntime(
    tmp_path: Path, k: int, block: int, symmetric: int, qdq: bool, bits: int
) -> None:
    """MatMulNBits (and the QDQ form, blocked int4 DequantizeLinear) folds into the weight
    onnxruntime multiplies by: outputs agree to float32 summation, and compare's bound
    covers the sampled differences with its witness reproduced in onnxruntime."""
    f_path, q_path = _nbits(tmp_path, k, block, bool(symmetric), qdq, bits=bits)
    qnet = from_qdq(q_path)
    rng = np.random.default_rng(7)
    xs = rng.uniform(-1, 1, size=(200, k))
    ours = qnet(torch.from_numpy(xs.astype(np.float32).astype(np.float64))).numpy()
    ref = _run(_session(q_path), xs)
    assert np.abs(ours - ref).max() <= 1e-5 * (1 + np.abs(ref).max())
    if k <= 64:  # the bound against sampling (the fold alone is checked above)
        _check_sound(f_path, q_path, rng, 1.0)


def test_matmul_nbits_weight_is_exact(tmp_path: Path) -> None:
    """The unpacked weight equals onnxruntime's own dequantization, bit for bit: a one-hot
    input picks out one row of W (one product per output, no summation error)."""
    _, q_path = _nbits(tmp_path, 160, 32, False, False)
    qnet = from_qdq(q_path)
    eye = np.eye(160)
    ref = _run(_session(q_path), eye)  # row i: W[i, :] @ ... through the first MatMulNBits
    model = onnx.load(str(q_path))
    first = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    from quantcert.intake.nbits import dequantized_weight

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w = dequantized_weight(first, consts)
    probe = helper.make_model(
        helper.make_graph(
            [first],
            "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 160])],
            [helper.make_tensor_value_info(first.output[0], TensorProto.FLOAT, [1, 16])],
            [t for t in model.graph.initializer if t.name in first.input],
        ),
        opset_imports=list(model.opset_import),
    )
    probe_path = tmp_path / "probe.onnx"
    onnx.save(probe, str(probe_path))
    rows = _run(_session(probe_path), eye)
    assert np.array_equal(rows.astype(np.float32), w)
    assert ref.shape == (160, 3) and qnet.input_shape == (160,)


def test_matmul_nbits_int8_compute_is_refused(tmp_path: Path) -> None:
    _, q_path = _nbits(tmp_path, 64, 32, False, False, accuracy=4)
    with pytest.raises(InputError, match="accuracy_level=4"):
        from_qdq(q_path)


@pytest.mark.parametrize(
    ("elem", "grid"),
    [
        (TensorProto.FLOAT8E4M3FN, "float8e4m3fn"),
        (TensorProto.FLOAT8E5M2, "float8e5m2"),
        (TensorProto.INT4, "int"),
        (TensorProto.UINT16, "int"),
    ],
)
def test_fake_quant_is_onnxruntime_elementwise(tmp_path: Path, elem: int, grid: str) -> None:
    """The staircase equals onnxruntime's QuantizeLinear -> DequantizeLinear bit for bit on
    values across the grid: subnormals, ties, saturation, both signs."""
    from quantcert.intake.qdq import FLOAT_TYPES, INT_TYPES
    from quantcert.ops.quantizer import FakeQuant

    scale = np.float32(0.0371)
    zp_value = {TensorProto.INT4: -3, TensorProto.UINT16: 30000}.get(elem, 0)
    rng = np.random.default_rng(9)
    top = 60000.0 * float(scale)
    x = np.concatenate(
        [
            rng.uniform(-top, top, 3000),
            rng.uniform(-1, 1, 3000) * float(scale),
            rng.uniform(-1, 1, 2000) * float(scale) * 2.0**-12,
            (np.arange(-400, 400) + 0.5) * float(scale),  # integer-grid ties
        ]
    ).astype(np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(scale, "s"),
        helper.make_tensor("z", elem, [], [zp_value]),
    ]
    g = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(x)])],
        inits,
    )
    path = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    ref = _session(path).run(None, {"x": x})[0]  # type: ignore[attr-defined]
    s64 = torch.tensor(float(scale), dtype=torch.float64)
    if grid == "int":
        qmin, qmax = INT_TYPES[elem]
        op = FakeQuant(s64, torch.tensor(float(zp_value), dtype=torch.float64), qmin, qmax)
    else:
        assert FLOAT_TYPES[elem] == grid
        op = FakeQuant(s64, torch.zeros((), dtype=torch.float64), -1, 1, grid=grid)
    ours = op.quantize(torch.from_numpy(x.astype(np.float64))).numpy()
    assert np.array_equal(ours, ref.astype(np.float64))
