"""IntFormat against onnxruntime (QuantizeLinear -> DequantizeLinear, and its quantizer's
scale/zero point) and PyTorch (observers, quantize_per_tensor/channel, fake_quantize), bit
for bit; radius checked exactly with Fractions; FixedFormat against a Fraction closed form."""

from __future__ import annotations

import contextlib
import itertools
from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnxruntime.quantization import quant_utils as qu
from torch.ao.quantization import observer as tobs

from quantcert.errors import InputError
from quantcert.formats import FixedFormat, IntFormat, parse_format

QTYPE = {
    (4, True): TensorProto.INT4,
    (4, False): TensorProto.UINT4,
    (8, True): TensorProto.INT8,
    (8, False): TensorProto.UINT8,
    (16, True): TensorProto.INT16,
    (16, False): TensorProto.UINT16,
}

# -- references ---------------------------------------------------------------------------


def ort_qdq(x: np.ndarray, fmt: IntFormat) -> np.ndarray:
    """onnxruntime's QuantizeLinear -> DequantizeLinear (opset 21) on float32 ``x``, with
    scale and zero point (initializers) from our code, per tensor, axis or block."""
    p = fmt._params(x)
    qtype = QTYPE[(fmt.bits, fmt.signed)]
    attrs: dict[str, int] = {}
    if fmt.granularity == "tensor":
        s, z = p.scale.reshape(-1)[:1], p.zp.reshape(-1)[:1]
        dims: list[int] = []
    else:
        axis = fmt.axis % x.ndim
        attrs["axis"] = axis
        step = fmt.group_size if fmt.granularity == "group" else 1
        idx = [slice(0, 1)] * x.ndim
        idx[axis] = slice(0, x.shape[axis], step)
        s, z = p.scale[tuple(idx)], p.zp[tuple(idx)]
        if fmt.granularity == "channel":
            s, z = s.reshape(-1), z.reshape(-1)
            dims = [x.shape[axis]]
        else:
            attrs["block_size"] = int(step)
            dims = [x.shape[axis] // step if i == axis else n for i, n in enumerate(x.shape)]
            full = [slice(None)] * x.ndim
            full[axis] = slice(0, x.shape[axis], step)
            s = np.broadcast_to(p.scale, x.shape)[tuple(full)]
            z = np.broadcast_to(p.zp, x.shape)[tuple(full)]
    inits = [
        helper.make_tensor(
            "s", TensorProto.FLOAT, dims, np.asarray(s, np.float32).ravel().tolist()
        ),
        helper.make_tensor("z", qtype, dims, [int(v) for v in np.asarray(z).ravel()]),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": x.astype(np.float32)})[0]
    return np.asarray(out, dtype=np.float32)


def ort_params(x: np.ndarray, fmt: IntFormat) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point from onnxruntime's own quantizer functions, per element."""
    qtype = QTYPE[(fmt.bits, fmt.signed)]
    x = x.astype(np.float32)
    if fmt.granularity == "tensor":
        z, s = qu.compute_data_quant_params(x.ravel(), qtype, fmt.symmetric, fmt.reduce_range)
        return np.broadcast_to(s, x.shape), np.broadcast_to(z.astype(np.float64), x.shape)
    axis = fmt.axis % x.ndim
    if fmt.granularity == "channel":
        pairs = [
            qu.compute_data_quant_params(
                x.take(i, axis).ravel(), qtype, fmt.symmetric, fmt.reduce_range
            )
            for i in range(x.shape[axis])
        ]
        shape = [1] * x.ndim
        shape[axis] = -1
        s = np.array([float(p[1]) for p in pairs], np.float32).reshape(shape)
        z = np.array([float(p[0]) for p in pairs]).reshape(shape)
        return np.broadcast_to(s, x.shape), np.broadcast_to(z, x.shape)
    g = fmt.group_size
    assert g is not None and x.ndim == 2 and not fmt.reduce_range
    z, s = qu.compute_scale_zp_blocked(x, qtype, axis, g, fmt.symmetric)
    rep = lambda a: np.repeat(a, g, axis=axis)  # noqa: E731
    return rep(s.astype(np.float32)), rep(np.asarray(z).astype(np.float64))


def spec_qdq(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """The ONNX QuantizeLinear/DequantizeLinear formulas, element by element in float32."""
    out = np.empty(x.shape, np.float32)
    for i in np.ndindex(x.shape):
        s = np.float32(scale[i])
        q = min(max(float(np.rint(np.float32(x[i]) / s)) + float(zp[i]), qmin), qmax)
        out[i] = np.float32(np.float32(q - float(zp[i])) * s)
    return out


def assert_radius(fmt: IntFormat | FixedFormat, t: np.ndarray) -> None:
    """``radius(t) >= |quantize(t) - t|`` for every element, exactly."""
    q, r = fmt.quantize(t), fmt.radius(t)
    assert q.shape == r.shape == np.shape(t) and q.dtype == r.dtype == np.float64
    for a, b, c in zip(q.ravel(), np.ravel(t), r.ravel(), strict=True):
        assert abs(Fraction(float(a)) - Fraction(float(b))) <= Fraction(float(c)), (a, b, c)


# -- data ---------------------------------------------------------------------------------

ELEMENT = st.one_of(
    st.floats(-1.0000000150474662e30, 1.0000000150474662e30, width=32),
    st.floats(-2.0, 2.0, width=32),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.1754944e-38, 1e30, -1e30, 0.5, -0.5]),
)


@st.composite
def ties(draw: st.DrawFn, fmt: IntFormat, n: int) -> np.ndarray:
    """Elements exactly at half steps, with a range that makes the scale a power of two."""
    qmin, qmax = fmt.qrange()
    dq = qmax - qmin
    e = draw(st.integers(-30, 30))
    step = 2.0**e
    if fmt.symmetric:
        lo, hi = -dq / 2 * step, dq / 2 * step
    else:
        m = draw(st.integers(0, dq))
        lo, hi = -m * step, (dq - m) * step
    ks = draw(st.lists(st.integers(int(lo / step) - 1, int(hi / step)), min_size=n, max_size=n))
    vals = np.array([(k + 0.5) * step for k in ks])
    vals = np.clip(vals, lo, hi)
    vals[0], vals[-1] = lo if fmt.symmetric or lo < 0 else vals[0], hi
    return vals.astype(np.float32).astype(np.float64)


ORT_FORMATS = [
    IntFormat(b, sg, sy, "tensor", reduce_range=rr)
    for b, sg, sy, rr in itertools.product((4, 8, 16), (True, False), (True, False), (False, True))
]
CHANNEL_FORMATS = [
    IntFormat(b, sg, sy, "channel", axis)
    for b, sg, sy, axis in itertools.product((4, 8, 16), (True, False), (True, False), (0, 1, -1))
]
GROUP_FORMATS = [
    IntFormat(b, sg, sy, "group", ax, g)
    for b, sg, sy, ax, g in itertools.product(
        (4, 8), (True, False), (True, False), (-1, 0), (16, 32)
    )
]


def check_ort(fmt: IntFormat, x: np.ndarray) -> None:
    x = x.astype(np.float32).astype(np.float64)
    p = fmt._params(x)
    s_ref, z_ref = ort_params(x, fmt)
    assert np.array_equal(p.scale, s_ref) and np.array_equal(p.zp, z_ref)
    assert np.array_equal(fmt.quantize(x).astype(np.float32), ort_qdq(x, fmt))
    assert_radius(fmt, x)


# -- onnxruntime --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(ORT_FORMATS), st.lists(ELEMENT, min_size=1, max_size=24))
def test_per_tensor_matches_onnxruntime(fmt: IntFormat, values: list[float]) -> None:
    check_ort(fmt, np.array(values))


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(ORT_FORMATS), st.data())
def test_ties_match_onnxruntime(fmt: IntFormat, data: st.DataObject) -> None:
    check_ort(fmt, data.draw(ties(fmt, 20)))


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(CHANNEL_FORMATS), st.lists(ELEMENT, min_size=12, max_size=12), st.booleans())
def test_per_channel_matches_onnxruntime(fmt: IntFormat, values: list[float], conv: bool) -> None:
    shape = (3, 2, 1, 2) if conv else (3, 4)
    check_ort(fmt, np.array(values).reshape(shape))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(GROUP_FORMATS), st.data())
def test_blocked_matches_onnxruntime(fmt: IntFormat, data: st.DataObject) -> None:
    g = fmt.group_size
    assert g is not None
    shape = (2, 2 * g) if fmt.axis == -1 else (2 * g, 3)
    values = data.draw(
        st.lists(ELEMENT, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))
    )
    check_ort(fmt, np.array(values).reshape(shape))


def test_random_conv_weights_match_onnxruntime() -> None:
    rng = np.random.default_rng(0)
    for fmt in [*ORT_FORMATS[::3], *CHANNEL_FORMATS[::4]]:
        x = (rng.standard_normal((8, 4, 3, 3)) * rng.uniform(1e-3, 10)).astype(np.float32)
        check_ort(fmt, x.astype(np.float64))
    for fmt in GROUP_FORMATS[::3]:
        x = rng.standard_normal((32, 64)).astype(np.float32).astype(np.float64)
        check_ort(fmt, x)


@pytest.mark.parametrize("fmt", ORT_FORMATS[::2])
def test_degenerate_tensors(fmt: IntFormat) -> None:
    for x in (np.zeros(5), np.full(3, 1e-45), np.array([-3.0]), np.array([2.5]), -np.ones((2, 2))):
        check_ort(fmt, x)
    assert fmt.quantize(np.zeros((0, 3))).shape == (0, 3)


def test_known_values() -> None:
    p = IntFormat(8)._params(np.array([-1.0, 0.5, 2.54]))
    assert p.scale.flat[0] == np.float32(2.54 * 2 / 254) and p.zp.flat[0] == 0
    assert IntFormat(8).qrange() == (-127, 127) and IntFormat(4).qrange() == (-8, 7)
    assert IntFormat(8, reduce_range=True).qrange() == (-64, 64)
    assert IntFormat(8, False, False).qrange() == (0, 255)
    assert IntFormat(8, False, True)._params(np.ones(2)).zp.flat[0] == 128
    assert IntFormat(5).qrange() == (-15, 15) and IntFormat(3, reduce_range=True).qrange() == (
        -2,
        2,
    )
    # int4 symmetric: the largest element lands on the tie 7.5 and saturates to 7.
    x = np.array([7.5, -7.5, 1.0])
    assert IntFormat(4).quantize(x)[0] == 7.0 and IntFormat(4).quantize(x)[1] == -8.0
    assert_radius(IntFormat(4), x)


# -- widths without an ONNX type ----------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(
    st.integers(2, 16).filter(lambda b: b not in (4, 8, 16)),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["tensor", "channel"]),
    st.lists(ELEMENT, min_size=6, max_size=6),
)
def test_other_widths_match_spec(
    bits: int, signed: bool, sym: bool, rr: bool, gran: str, values: list[float]
) -> None:
    fmt = IntFormat(bits, signed, sym, gran, reduce_range=rr)  # type: ignore[arg-type]
    x = np.array(values, np.float32).astype(np.float64).reshape(2, 3)
    qmin, qmax = fmt.qrange()
    dt = np.int32
    rows = [x.ravel()] if gran == "tensor" else list(x)
    ref = [
        qu.compute_scale_zp(np.float32(r.min()), np.float32(r.max()), dt(qmin), dt(qmax), sym)
        for r in rows
    ]
    z = np.array([[float(zz)] for zz, _ in ref]) * np.ones((len(rows), x.size // len(rows)))
    s = np.array([[float(ss)] for _, ss in ref], np.float32) * np.ones_like(z, np.float32)
    p = fmt._params(x)
    assert np.array_equal(p.scale, s.reshape(x.shape)) and np.array_equal(p.zp, z.reshape(x.shape))
    ref_y = spec_qdq(x, s.reshape(x.shape), z.reshape(x.shape), *fmt.clip_range())
    assert np.array_equal(fmt.quantize(x).astype(np.float32), ref_y)
    assert_radius(fmt, x)


# -- PyTorch ------------------------------------------------------------------------------


def torch_ref(fmt: IntFormat, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale, zero point (from torch's observers) and the fake-quantized values."""
    qmin, qmax = fmt.qrange()
    cmin, cmax = fmt.clip_range()
    per_channel = fmt.granularity == "channel"
    scheme = {
        (False, True): torch.per_tensor_symmetric,
        (False, False): torch.per_tensor_affine,
        (True, True): torch.per_channel_symmetric,
        (True, False): torch.per_channel_affine,
    }
    dtype = torch.qint8 if fmt.signed else torch.quint8
    kw: dict[str, object] = {"dtype": dtype, "qscheme": scheme[(per_channel, fmt.symmetric)]}
    if fmt.bits != 8:
        kw.update(quant_min=qmin, quant_max=qmax)
    else:
        kw["reduce_range"] = fmt.reduce_range
    xt = torch.from_numpy(x.astype(np.float32))
    if per_channel:
        axis = fmt.axis % x.ndim
        ob = tobs.PerChannelMinMaxObserver(ch_axis=axis, **kw)  # type: ignore[arg-type]
        ob(xt)
        s, z = ob.calculate_qparams()
        y = torch.fake_quantize_per_channel_affine(xt, s, z.int(), axis, cmin, cmax)
        if fmt.bits == 8:
            y2 = torch.quantize_per_channel(xt, s.double(), z, axis, dtype).dequantize()
            assert torch.equal(y, y2)
        shape = [1] * x.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    else:
        ob = tobs.MinMaxObserver(**kw)  # type: ignore[arg-type]
        ob(xt)
        s, z = ob.calculate_qparams()
        y = torch.fake_quantize_per_tensor_affine(xt, float(s), int(z), cmin, cmax)
        if fmt.bits == 8:
            y2 = torch.quantize_per_tensor(xt, float(s), int(z), dtype).dequantize()
            assert torch.equal(y, y2)
    shp = x.shape
    return (np.broadcast_to(s.numpy().astype(np.float32), shp),
            np.broadcast_to(z.numpy().astype(np.float64), shp), y.numpy())  # fmt: skip


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 8),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["tensor", "channel"]),
    st.lists(ELEMENT, min_size=8, max_size=8),
)
def test_torch_observer(
    bits: int, signed: bool, sym: bool, rr: bool, gran: str, values: list[float]
) -> None:
    rr = rr and bits == 8 and (signed or not sym)  # torch refuses reduce_range for sym quint8
    kind = "channel" if gran == "channel" else "tensor"
    fmt = IntFormat(bits, signed, sym, kind, axis=1, reduce_range=rr, observer="torch")
    x = np.array(values, np.float32).astype(np.float64).reshape(2, 4)
    s, z, y = torch_ref(fmt, x)
    p = fmt._params(x)
    assert np.array_equal(p.scale, s) and np.array_equal(p.zp, z)
    assert np.array_equal(fmt.quantize(x).astype(np.float32), y)
    assert_radius(fmt, x)


# -- radius, describe, errors -------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(ORT_FORMATS + CHANNEL_FORMATS[:6]), st.lists(ELEMENT, min_size=4, max_size=4)
)
def test_radius_rounding_any(fmt: IntFormat, values: list[float]) -> None:
    t = np.array(values).reshape(2, 2)  # float64, not float32-exact: the cast error counts
    t = t * (1 + 1e-9)
    anyf = IntFormat(**{**fmt.__dict__, "rounding": "any"})
    assert_radius(fmt, t)
    assert_radius(anyf, t)
    assert np.all(anyf.radius(t) >= fmt.radius(t))
    assert np.array_equal(anyf.quantize(t), fmt.quantize(t))


def test_radius_is_half_a_step_inside() -> None:
    x = np.random.default_rng(1).standard_normal(100)
    fmt = IntFormat(8)
    s = float(fmt._params(x).scale.flat[0])
    assert np.all(fmt.radius(x) <= s * (0.5 + 1e-5) + 1e-6 * np.abs(x))


@pytest.mark.parametrize("fmt", ORT_FORMATS + CHANNEL_FORMATS + GROUP_FORMATS)
def test_describe_round_trip(fmt: IntFormat) -> None:
    assert parse_format(fmt.describe()) == fmt
    anyf = IntFormat(**{**fmt.__dict__, "rounding": "any", "observer": "torch"})
    assert parse_format(anyf.describe()) == anyf


def test_describe_parse_examples() -> None:
    texts = ["int8", "int4:per-channel", "int4:group=128", "uint8", "uint8:sym", "int8:asym"]
    texts += ["int8:reduce-range:observer=torch:rounding=any", "int4:group=32:axis=0"]
    for text in texts:
        assert parse_format(parse_format(text).describe()) == parse_format(text)


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="does not divide"):
        IntFormat(4, granularity="group", axis=-1, group_size=32).quantize(np.ones((2, 48)))
    with pytest.raises(InputError, match="not finite"):
        IntFormat(8).quantize(np.array([1e39]))
    with pytest.raises(InputError, match="axis"):
        IntFormat(8, granularity="channel", axis=2).quantize(np.ones((2, 2)))


# -- fixed point --------------------------------------------------------------------------


def fixed_ref(m: int, n: int, signed: bool, t: float) -> Fraction | None:
    """Round half to even on the grid 2^-n with Fractions; None when out of range."""
    x = Fraction(t) * 2**n
    fl = x.numerator // x.denominator
    rem = x - fl
    k = fl + (1 if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2) else 0)
    lo, hi = (-(2 ** (m - 1 + n)), 2 ** (m - 1 + n) - 1) if signed else (0, 2 ** (m + n) - 1)
    return Fraction(k, 2**n) if lo <= k <= hi else None


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 12),
    st.integers(0, 20),
    st.booleans(),
    st.lists(
        st.one_of(st.floats(-5000, 5000), st.integers(-8000, 8000).map(lambda k: k / 8 + 1 / 16)),
        min_size=1,
        max_size=8,
    ),
)
def test_fixed_matches_fraction(m: int, n: int, signed: bool, values: list[float]) -> None:
    if m + n < 2:
        m = 2
    fmt = FixedFormat(m, n, signed)
    t = np.array(values)
    refs = [fixed_ref(m, n, signed, v) for v in values]
    if any(r is None for r in refs):
        with pytest.raises(InputError, match="tensor: value"):
            fmt.quantize(t)
        return
    q = fmt.quantize(t)
    assert [Fraction(float(v)) for v in q] == refs
    assert np.all(fmt.radius(t) == 2.0 ** -(n + 1))
    assert_radius(fmt, t)
    anyf = FixedFormat(m, n, signed, "any")
    if all((-(2.0 ** (m - 1)) if signed else 0) <= v for v in values):
        with contextlib.suppress(InputError):
            assert np.all(anyf.radius(t) == 2.0**-n)


def test_fixed_errors_and_describe() -> None:
    with pytest.raises(InputError, match=r"w1: value 8\.0"):
        FixedFormat(4, 12, tensor="w1").quantize(np.array([1.0, 8.0]))
    assert FixedFormat(4, 12).quantize(np.array([7.9998]))[0] == 8 - 2**-12
    with pytest.raises(InputError):
        FixedFormat(4, 12, rounding="any").quantize(np.array([8 - 2**-14]))
    with pytest.raises(InputError):
        FixedFormat(4, 4, signed=False).quantize(np.array([-0.1]))
    for f in (FixedFormat(4, 12), FixedFormat(8, 8, False), FixedFormat(1, 15, True, "any")):
        assert parse_format(f.describe()) == f
    assert parse_format("q4.12") == FixedFormat(4, 12)


def test_onnx_version_supports_block_size() -> None:
    assert tuple(int(v) for v in ort.__version__.split(".")[:2]) >= (1, 20)
    assert onnx.defs.onnx_opset_version() >= 21
