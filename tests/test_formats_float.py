"""Floating and microscaling formats: ``quantize`` bit-exact against onnxruntime (Cast with
``saturate=1``, QuantizeLinear/DequantizeLinear with a float8 zero point, the quantizer's
float8 scale), ``ml_dtypes`` and independent ``Fraction`` references (MX, NVFP4, the small
float grids); ``radius`` checked exactly (``Fraction``) on hypothesis and adversarial tensors."""

from __future__ import annotations

import functools
from bisect import bisect_left
from fractions import Fraction

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from quantcert.errors import InputError
from quantcert.formats import FloatFormat, MXFormat, NVFP4Format, parse_format

SMALL = ("fp8-e4m3", "fp8-e5m2", "fp6-e3m2", "fp6-e2m3", "fp4-e2m1")
KINDS = ("fp16", "bf16", *SMALL)
#: Written out from the OCP MX v1.0 and OFP8 tables, not read from ml_dtypes:
#: (mantissa bits, exponent of the smallest normal, exponent of the largest normal, max).
TABLE = {
    "fp8-e4m3": (3, -6, 8, 448.0),
    "fp8-e5m2": (2, -14, 15, 57344.0),
    "fp6-e3m2": (2, -2, 4, 28.0),
    "fp6-e2m3": (3, 0, 2, 7.5),
    "fp4-e2m1": (1, 0, 2, 6.0),
}
ONNX_TYPE = {
    "fp16": TensorProto.FLOAT16,
    "bf16": TensorProto.BFLOAT16,
    "fp8-e4m3": TensorProto.FLOAT8E4M3FN,
    "fp8-e5m2": TensorProto.FLOAT8E5M2,
}
ZP_DTYPE = {"fp8-e4m3": ml_dtypes.float8_e4m3fn, "fp8-e5m2": ml_dtypes.float8_e5m2}


# ---------------------------------------------------------------- independent references
@functools.cache
def grid(kind: str) -> tuple[Fraction, ...]:
    """The non-negative values of an element type, from its (m, emin, emax, max) alone; a
    value's index is its code, so an even index is an even mantissa."""
    if kind == "int8":
        return tuple(Fraction(k, 64) for k in range(128))
    m, emin, emax, top = TABLE[kind]
    vals = [Fraction(k, 2**m) * Fraction(2) ** emin for k in range(2**m)]
    for e in range(emin, emax + 1):
        vals += [Fraction(2**m + k, 2**m) * Fraction(2) ** e for k in range(2**m)]
    return tuple(v for v in vals if v <= Fraction(top))


def round_grid(x: Fraction, kind: str) -> Fraction:
    """Round to nearest, ties to even (index), saturating at the largest value."""
    g = grid(kind)
    a = abs(x)
    i = bisect_left(g, a)
    if i == len(g):
        r = g[-1]
    elif g[i] == a or i == 0:
        r = g[i]
    else:
        lo, hi = g[i - 1], g[i]
        r = lo if a - lo < hi - a or (a - lo == hi - a and (i - 1) % 2 == 0) else hi
    return -r if x < 0 else r


def floor_log2(a: Fraction) -> int:
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    return e


EMAX = {"fp8-e4m3": 8, "fp8-e5m2": 15, "fp6-e3m2": 4, "fp6-e2m3": 2, "fp4-e2m1": 2, "int8": 0}


def mx_ref_row(row: np.ndarray, element: str, block: int = 32) -> list[Fraction]:
    out: list[Fraction] = []
    for j in range(0, len(row), block):
        v = [Fraction(float(x)) for x in row[j : j + block]]
        amax = max(abs(x) for x in v)
        e = -127 if amax == 0 else max(floor_log2(amax) - EMAX[element], -127)
        scale = Fraction(2) ** e
        out += [scale * round_grid(x / scale, element) for x in v]
    return out


def nvfp4_ref_row(row: np.ndarray, s_t: np.float32) -> list[Fraction]:
    out: list[Fraction] = []
    for j in range(0, len(row), 16):
        v = [np.float32(x) for x in row[j : j + 16]]
        bamax = max(abs(x) for x in v)
        raw = np.float32(0) if bamax == 0 else np.float32(bamax / np.float32(np.float32(6) * s_t))
        s_b = np.float32(float(round_grid(Fraction(float(raw)), "fp8-e4m3")))
        s32 = np.float32(s_b * s_t)
        for x in v:
            p = np.float32(x / s32) if s32 > 0 else np.float32(0)
            out.append(
                round_grid(Fraction(float(p)), "fp4-e2m1")
                * Fraction(float(s_b))
                * Fraction(float(s_t))
            )
    return out


def assert_covers(q: np.ndarray, t: np.ndarray, r: np.ndarray) -> None:
    """``r >= |q - t|`` exactly, elementwise; an infinite radius covers anything."""
    assert q.shape == t.shape == r.shape and r.dtype == np.float64
    assert not np.isnan(r).any()
    for qi, ti, ri in zip(q.ravel(), t.ravel(), r.ravel(), strict=True):
        if np.isinf(ri):
            continue
        assert np.isfinite(qi), (qi, ti, ri)
        assert abs(Fraction(float(qi)) - Fraction(float(ti))) <= Fraction(float(ri)), (qi, ti, ri)


def adversarial(kind: str) -> np.ndarray:
    """Grid values, ties, ties ± one float32 step, the max and past it, subnormals, zeros,
    huge values, for an element type; negatives too."""
    if kind in TABLE:
        g = np.array([float(v) for v in grid(kind)])
    else:
        dt = np.float16 if kind == "fp16" else ml_dtypes.bfloat16
        info = ml_dtypes.finfo(dt)
        top = float(info.max) - np.arange(4) * float(info.eps) * float(info.max)
        sub = np.arange(0, 40) * float(info.smallest_subnormal)
        g = np.concatenate([sub, np.array([1, 1.5, 3, 1000.1]), top])
        g = np.unique(g.astype(dt).astype(np.float64))
    mid = (g[:-1] + g[1:]) / 2
    top = g[-1]
    spacing = g[-1] - g[-2]
    extra = [top + spacing / 2, top + spacing, top * 1.5, 2 * top, 1e30, 3e38, 1e-40, 1e-45]
    with np.errstate(over="ignore"):
        v = np.concatenate([g, mid, extra]).astype(np.float32)
    v = np.concatenate([v, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(0))])
    return np.concatenate([v, -v]).astype(np.float64)


# ---------------------------------------------------------------- onnxruntime sessions
def _session(nodes: list, inputs: list, extra: list | None = None) -> ort.InferenceSession:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        extra or [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@functools.cache
def cast_session(kind: str) -> ort.InferenceSession:
    sat = {"saturate": 1} if kind.startswith("fp8") else {}
    nodes = [
        helper.make_node("Cast", ["x"], ["y"], to=ONNX_TYPE[kind], **sat),
        helper.make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT),
    ]
    return _session(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)])


@functools.cache
def qdq_session(kind: str) -> ort.InferenceSession:
    zp = helper.make_tensor("zp", ONNX_TYPE[kind], [], [0])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"]),
        helper.make_node("DequantizeLinear", ["y", "s", "zp"], ["z"]),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
    ]
    return _session(nodes, inputs, [zp])


def run(sess: ort.InferenceSession, x: np.ndarray, **feeds: np.ndarray) -> np.ndarray:
    out = sess.run(None, {"x": x.astype(np.float32), **feeds})[0]
    return np.asarray(out, dtype=np.float64)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(
        np.array_equal(a, b, equal_nan=True) and np.array_equal(np.signbit(a), np.signbit(b))
    )


# ---------------------------------------------------------------- FloatFormat
@pytest.mark.parametrize("kind", KINDS)
def test_float_adversarial_bitexact_and_covered(kind: str) -> None:
    t = adversarial(kind)
    fmt = FloatFormat(kind)  # type: ignore[arg-type]
    q = fmt.quantize(t)
    if kind in ONNX_TYPE:
        assert same(q, run(cast_session(kind), t))
    if kind.startswith("fp8"):
        assert same(q, run(qdq_session(kind), t, s=np.array(1.0, np.float32)))
    if kind in TABLE:
        ref = np.array([float(round_grid(Fraction(float(x)), kind)) for x in t.astype(np.float32)])
        assert np.array_equal(q, ref)
    with np.errstate(over="ignore"):
        ml = t.astype(np.float32)
        if kind.startswith("fp8"):
            ml = np.clip(ml, -fmt.spec.max, fmt.spec.max)
        assert same(q, ml.astype(fmt.spec.dtype).astype(np.float64))
    for rounding in ("nearest", "any"):
        assert_covers(q, t, FloatFormat(kind, rounding=rounding).radius(t))  # type: ignore[arg-type]


def test_float_radius_formula_and_overflow() -> None:
    e4 = FloatFormat("fp8-e4m3")
    t = np.array([1.0, 3.0, 2.0**-9, 0.0, 500.0, -1e6, np.inf])
    r = e4.radius(t)
    assert list(r[:4]) == [2.0**-4, 3 * 2.0**-4, 2.0**-10, 2.0**-10]
    assert r[4] >= 52 and r[5] >= 1e6 - 448 and np.isinf(r[6])
    assert list(e4.quantize(t[4:])) == [448.0, -448.0, 448.0]
    assert FloatFormat("fp8-e4m3", rounding="any").radius(np.array([1.0]))[0] == 2.0**-3
    h = FloatFormat("fp16")
    q, r = (
        h.quantize(np.array([65519.0, 65520.0, -7e4])),
        h.radius(np.array([65519.0, 65520.0, -7e4])),
    )
    assert list(q) == [65504.0, np.inf, -np.inf] and np.isfinite(r[0]) and np.isinf(r[1:]).all()
    assert np.isinf(FloatFormat("fp16", rounding="any").radius(np.array([65505.0])))[0]
    b = FloatFormat("bf16")
    assert b.quantize(np.array([1e39]))[0] == np.inf and np.isinf(b.radius(np.array([1e39])))[0]


floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
floats64 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
tiny = st.floats(min_value=-1e-3, max_value=1e-3)
elems = st.one_of(
    floats32,
    floats64,
    tiny,
    st.sampled_from([0.0, -0.0, 448.0, 464.0, 57344.0, 65520.0, 2.0**-10, 1e38]),
)


@settings(max_examples=60, deadline=None)
@given(
    t=hnp.arrays(np.float64, st.integers(1, 40), elements=elems),
    kind=st.sampled_from(KINDS),
    rounding=st.sampled_from(["nearest", "any"]),
    scaled=st.booleans(),
)
def test_float_radius_covers(t: np.ndarray, kind: str, rounding: str, scaled: bool) -> None:
    scaled = scaled and kind.startswith("fp8")
    fmt = FloatFormat(kind, scaled, rounding)  # type: ignore[arg-type]
    q = fmt.quantize(t)
    assert_covers(q, t, fmt.radius(t))
    if scaled or kind in ONNX_TYPE:
        s = fmt.scale(t)
        sess = qdq_session(kind) if scaled else cast_session(kind)
        assert same(q, run(sess, t, s=np.array(s, np.float32)) if scaled else run(sess, t))


@pytest.mark.parametrize("kind", ["fp8-e4m3", "fp8-e5m2"])
def test_scaled_fp8_matches_onnxruntime_quantizer(kind: str) -> None:
    from onnxruntime.quantization.quant_utils import compute_data_quant_params, quantize_data

    rng = np.random.default_rng(3)
    fmt = FloatFormat(kind, scaled=True)  # type: ignore[arg-type]
    for t32 in (
        rng.standard_normal((16, 24)).astype(np.float32) * 0.05,
        (rng.standard_t(2, 500) * 30).astype(np.float32),
    ):
        t = t32.astype(np.float64)
        t.flat[:3] = [0.0, float(np.abs(t).max()) * 40, -1e10]  # saturating elements
        t32 = t.astype(np.float32)
        s = fmt.scale(t)
        if kind == "fp8-e4m3":
            zp, s_ort = compute_data_quant_params(t32, TensorProto.FLOAT8E4M3FN, True)
            assert s_ort.dtype == np.float32 and s == s_ort and float(zp.astype(np.float32)) == 0
            _, _, codes = quantize_data(t32, TensorProto.FLOAT8E4M3FN, True)
            ref = (codes.astype(np.float32) * s_ort).astype(np.float64)
            assert same(fmt.quantize(t), ref)
        q = fmt.quantize(t)
        assert same(q, run(qdq_session(kind), t, s=np.array(s, np.float32)))
        assert_covers(q, t, fmt.radius(t))
        assert_covers(q, t, FloatFormat(kind, True, "any").radius(t))  # type: ignore[arg-type]
    assert FloatFormat(kind, scaled=True).scale(np.zeros(4)) == 1  # type: ignore[arg-type]


# ---------------------------------------------------------------- MX and NVFP4
MX_ELEMENTS = ("fp8-e4m3", "fp8-e5m2", "fp6-e3m2", "fp6-e2m3", "fp4-e2m1", "int8")


def mx_adversarial(element: str, rng: np.random.Generator) -> np.ndarray:
    """Rows of 32 (and a short last block of 7) that hit the floor rule's clamp, ties,
    zeros, subnormals, and the E8M0 limits."""
    rows = []
    top = TABLE[element][3] if element in TABLE else 127 / 64
    for e in (-140, -127, -10, 0, 3, 100, 110):
        amax = 2.0**e * 1.999  # floor rule: amax / X near 2^(emax+1), above the element max
        row = rng.standard_normal(39) * 2.0**e
        row[0], row[1], row[2] = amax, -amax * 0.99, 2.0**e * top * 1.01
        row[3:10] = [float(g) * 2.0 ** (e - EMAX[element]) for g in grid(element)[1:8]]
        row[10:17] = (row[3:10] + row[4:11]) / 2  # ties
        row[17:20] = 0.0
        rows.append(row)
    rows.append(np.zeros(39))
    return np.array(rows).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("element", MX_ELEMENTS)
def test_mx_matches_reference_and_is_covered(element: str) -> None:
    rng = np.random.default_rng(7)
    t = mx_adversarial(element, rng)
    t = np.concatenate([t, rng.standard_normal((3, 39)) * 10.0 ** rng.integers(-6, 6, (3, 1))])
    fmt = MXFormat(element)  # type: ignore[arg-type]
    q = fmt.quantize(t)
    ref = np.array([[float(x) for x in mx_ref_row(row, element)] for row in t.astype(np.float32)])
    assert np.array_equal(q, ref)
    assert np.array_equal(MXFormat(element, axis=0).quantize(t.T), q.T)  # type: ignore[arg-type]
    for rounding in ("nearest", "any"):
        assert_covers(q, t, MXFormat(element, rounding=rounding).radius(t))  # type: ignore[arg-type]
    clamped = np.abs(q - t) > np.abs(t) * 2.0 ** -(TABLE.get(element, (7,))[0] + 1) + 1e-300
    assert clamped.any() or element == "int8"  # the floor rule's clamp happens


def test_mx_nan_and_shapes() -> None:
    t = np.ones((2, 40))
    t[0, 5] = np.nan
    q, r = MXFormat("fp8-e4m3").quantize(t), MXFormat("fp8-e4m3").radius(t)
    assert np.isnan(q[0, :32]).all() and np.isinf(r[0, :32]).all() and (q[0, 32:] == 1).all()
    assert (q[1] == 1).all() and (r[1] > 0).all()
    assert MXFormat("int8").quantize(np.float64(3.0)).shape == ()
    assert MXFormat("fp4-e2m1").quantize(np.zeros((0, 5))).shape == (0, 5)


@settings(max_examples=40, deadline=None)
@given(
    t=hnp.arrays(np.float64, st.tuples(st.integers(1, 2), st.integers(1, 70)), elements=elems),
    element=st.sampled_from(MX_ELEMENTS),
    rounding=st.sampled_from(["nearest", "any"]),
)
def test_mx_hypothesis(t: np.ndarray, element: str, rounding: str) -> None:
    fmt = MXFormat(element, rounding=rounding)  # type: ignore[arg-type]
    q = fmt.quantize(t)
    ref = np.array([[float(x) for x in mx_ref_row(row, element)] for row in t.astype(np.float32)])
    assert np.array_equal(q, ref)
    assert_covers(q, t, fmt.radius(t))


def nvfp4_ref(t: np.ndarray) -> np.ndarray:
    t32 = t.astype(np.float32)
    s_t = np.float32(np.max(np.abs(t32)) / np.float32(2688.0))
    return np.array([[float(x) for x in nvfp4_ref_row(row, s_t)] for row in t32])


@settings(max_examples=40, deadline=None)
@given(
    t=hnp.arrays(np.float64, st.tuples(st.integers(1, 2), st.integers(1, 50)), elements=elems),
    rounding=st.sampled_from(["nearest", "any"]),
)
def test_nvfp4_hypothesis(t: np.ndarray, rounding: str) -> None:
    fmt = NVFP4Format(rounding=rounding)  # type: ignore[arg-type]
    q = fmt.quantize(t)
    if np.abs(t.astype(np.float32)).max() > 1e-30:
        assert np.array_equal(q, nvfp4_ref(t))
    assert_covers(q, t, fmt.radius(t))


def test_nvfp4_adversarial() -> None:
    rng = np.random.default_rng(11)
    t = rng.standard_normal((6, 37)) * 10.0 ** rng.integers(-5, 5, (6, 1))
    t[0, :16] = 0.0
    t[1, :16] = np.array([6.0, 5.0, 3.5, 2.5, 1.25, 0.75, 0.25, 4.9, -6.0, -5.1] + [1.0] * 6) * 3.3
    t[2, 0] = 1e4  # the tensor max: other blocks get small e4m3 scales, some round to 0
    t[3, 16:32] = 1e-9
    fmt = NVFP4Format()
    q = fmt.quantize(t)
    assert np.array_equal(q, nvfp4_ref(t)) and (q[0, :16] == 0).all()
    assert np.array_equal(NVFP4Format(axis=0).quantize(t.T), q.T)
    for rounding in ("nearest", "any"):
        assert_covers(q, t, NVFP4Format(rounding=rounding).radius(t))  # type: ignore[arg-type]
    assert (fmt.quantize(np.zeros(20)) == 0).all() and (fmt.radius(np.zeros(20)) == 0).all()
    bad = np.array([1.0, np.inf, 2.0])
    assert np.isnan(fmt.quantize(bad)).all() and np.isinf(fmt.radius(bad)).all()


# ---------------------------------------------------------------- describe, bad input
@pytest.mark.parametrize(
    "text",
    [
        "fp16",
        "bf16",
        "fp8-e4m3",
        "fp8-e4m3:scaled",
        "fp8-e5m2:scaled:rounding=any",
        "fp6-e3m2",
        "fp6-e2m3:rounding=any",
        "fp4-e2m1",
        "mxfp8-e4m3",
        "mxfp8-e5m2",
        "mxfp6-e3m2",
        "mxfp6-e2m3",
        "mxfp4:axis=0",
        "mxint8:rounding=any",
        "nvfp4",
        "nvfp4:axis=1:rounding=any",
    ],
)
def test_describe_round_trip(text: str) -> None:
    fmt = parse_format(text)
    assert fmt.describe() == text and parse_format(fmt.describe()) == fmt


def test_bad_input() -> None:
    with pytest.raises(InputError):
        FloatFormat("fp16", scaled=True)
    with pytest.raises(InputError):
        parse_format("bf16:scaled")
    with pytest.raises(InputError):
        MXFormat("fp8-e4m3", axis=2).quantize(np.ones((2, 3)))
