"""quantcert compare: QDQ intake against onnxruntime, and the difference bound against
sampled and attacked differences, both networks run by onnxruntime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantcert.analyses.compare import compare, label_certificate
from quantcert.analyses.epsilon import Budget, input_box
from quantcert.errors import InputError
from quantcert.intake.onnx_model import from_onnx
from quantcert.intake.qdq import from_qdq

ort = pytest.importorskip("onnxruntime")
quant = pytest.importorskip("onnxruntime.quantization")


def _mlp(rng: np.random.Generator) -> onnx.ModelProto:
    w1 = rng.normal(size=(4, 8)).astype(np.float32)
    b1 = rng.normal(size=8).astype(np.float32)
    w2 = rng.normal(size=(8, 3)).astype(np.float32)
    b2 = rng.normal(size=3).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], name="fc2"),
    ]
    inits = [
        numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "b1"), (w2, "W2"), (b2, "b2"))
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _conv(rng: np.random.Generator) -> onnx.ModelProto:
    w = rng.normal(size=(3, 1, 3, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    w2 = rng.normal(size=(3 * 3 * 3, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "W2"], ["y"], name="fc"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (b, "B"), (w2, "W2"))]
    g = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


class _Reader(quant.CalibrationDataReader):  # type: ignore[misc,name-defined]
    def __init__(self, shape: tuple[int, ...], rng: np.random.Generator) -> None:
        self.it = iter(
            [{"x": rng.uniform(-1, 1, size=shape).astype(np.float32)} for _ in range(16)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


def _quantize(
    tmp: Path,
    model: onnx.ModelProto,
    per_channel: bool,
    tag: str,
    activation: str = "QUInt8",
    weight: str = "QInt8",
) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    f, q = tmp / f"{tag}.onnx", tmp / f"{tag}.qdq.onnx"
    if {activation, weight} & {"QInt4", "QUInt4", "QFLOAT8E4M3FN"}:
        model = onnx.version_converter.convert_version(model, 21)  # int4 and float8 Q/DQ
    onnx.save(model, str(f))
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    extra = {}
    if "FLOAT8" in activation:  # the only calibration onnxruntime allows for float8
        extra["calibrate_method"] = quant.CalibrationMethod.Distribution
    quant.quantize_static(
        str(f),
        str(q),
        _Reader(shape, rng),
        quant_format=quant.QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=getattr(quant.QuantType, activation),
        weight_type=getattr(quant.QuantType, weight),
        **extra,
    )
    return f, q


def _session(path: Path) -> object:
    opts = ort.SessionOptions()
    # The QDQ graph as written (no fusion into integer kernels).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(sess: object, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name  # type: ignore[attr-defined]
    x32 = x.astype(np.float32)
    return np.concatenate([sess.run(None, {name: xi[None]})[0] for xi in x32])  # type: ignore[attr-defined]


CASES = [("mlp", _mlp, False), ("mlp", _mlp, True), ("conv", _conv, False), ("conv", _conv, True)]


@pytest.mark.parametrize(("tag", "make", "per_channel"), CASES)
def test_compare_sound_against_onnxruntime(
    tmp_path: Path,
    tag: str,
    make: Callable[[np.random.Generator], onnx.ModelProto],
    per_channel: bool,
) -> None:
    rng = np.random.default_rng(0)
    f_path, q_path = _quantize(tmp_path, make(rng), per_channel, f"{tag}{int(per_channel)}")
    _check_sound(f_path, q_path, rng, 2.0)


#: What quantize_static writes: (activation type, weight type); int4 weights with uint8
#: activations too (the usual weight-only-int4 set-up), all types per tensor and per channel.
TYPES = [
    ("QUInt8", "QUInt8"),
    ("QInt8", "QInt8"),
    ("QUInt16", "QUInt16"),
    ("QInt16", "QInt16"),
    ("QUInt4", "QUInt4"),
    ("QInt4", "QInt4"),
    ("QUInt8", "QInt4"),
    ("QFLOAT8E4M3FN", "QFLOAT8E4M3FN"),
]
TYPE_CASES = [("mlp", _mlp, a, w, pc) for a, w in TYPES for pc in (False, True)] + [
    ("conv", _conv, "QInt4", "QInt4", True),
    ("conv", _conv, "QFLOAT8E4M3FN", "QFLOAT8E4M3FN", True),
]


@pytest.mark.parametrize(("tag", "make", "activation", "weight", "per_channel"), TYPE_CASES)
def test_qdq_types_sound_against_onnxruntime(
    tmp_path: Path,
    tag: str,
    make: Callable[[np.random.Generator], onnx.ModelProto],
    activation: str,
    weight: str,
    per_channel: bool,
) -> None:
    rng = np.random.default_rng(0)
    f_path, q_path = _quantize(
        tmp_path, make(rng), per_channel, f"{tag}{activation}{weight}", activation, weight
    )
    kinds = {t.data_type for t in onnx.load(str(q_path)).graph.initializer}
    expect = {
        "QUInt8": TensorProto.UINT8,
        "QInt8": TensorProto.INT8,
        "QUInt16": TensorProto.UINT16,
        "QInt16": TensorProto.INT16,
        "QUInt4": TensorProto.UINT4,
        "QInt4": TensorProto.INT4,
        "QFLOAT8E4M3FN": TensorProto.FLOAT8E4M3FN,
    }
    assert expect[weight] in kinds and expect[activation] in kinds  # the type was written
    _check_sound(f_path, q_path, rng, 1.0)


def _check_sound(f_path: Path, q_path: Path, rng: np.random.Generator, timeout: float) -> None:
    fnet, qnet = from_onnx(f_path), from_qdq(q_path)
    fs, qs = _session(f_path), _session(q_path)
    shape = qnet.input_shape
    # The IR of the QDQ model matches onnxruntime (the staircase may step differently where
    # float32 and float64 sums straddle a rounding boundary: allow a few such points).
    xs = rng.uniform(-1, 1, size=(300, *shape))
    ours = qnet(torch.from_numpy(xs.astype(np.float32).astype(np.float64))).numpy()
    ref = _run(qs, xs)
    close = np.abs(ours - ref).max(axis=1) <= 1e-5
    assert close.mean() >= 0.95
    # compare's upper covers sampled and attacked differences measured in onnxruntime.
    lo, hi = -np.ones(int(np.prod(shape))), np.ones(int(np.prod(shape)))
    result = compare(fnet, qnet, input_box(fnet, lo, hi), Budget(timeout=timeout))
    upper = result.overall.upper
    samples = rng.uniform(-1, 1, size=(1000, *shape))
    sampled = np.abs(_run(qs, samples) - _run(fs, samples)).max()
    # A gradient-free attack: random local moves from the best samples.
    diffs = np.abs(_run(qs, samples) - _run(fs, samples)).max(axis=1)
    best = samples[np.argsort(diffs)[-8:]]
    attacked = sampled
    for step in range(30):
        cand = np.clip(best + rng.normal(scale=0.3 * 0.9**step, size=best.shape), -1, 1)
        d = np.abs(_run(qs, cand) - _run(fs, cand)).max(axis=1)
        attacked = max(attacked, float(d.max()))
        keep = d > np.abs(_run(qs, best) - _run(fs, best)).max(axis=1)
        best[keep] = cand[keep]
    # onnxruntime sums in float32: allow its own rounding (the bound is on exact arithmetic).
    slack = 1e-5 * upper + 1e-6
    assert upper + slack >= sampled and upper + slack >= attacked
    assert result.overall.lower <= upper
    # The witness reproduces its difference in onnxruntime.
    w = result.overall.witness
    assert w is not None
    x = w.x.reshape(1, *shape)
    d_ort = np.abs(_run(qs, x) - _run(fs, x)).max()
    assert abs(d_ort - (result.overall.lower + w.error)) <= 1e-5 + w.error + 1e-5 * abs(d_ort)
    assert label_certificate(fnet, qnet, input_box(fnet, lo, hi)).status in (
        "verified",
        "falsified",
        "unknown",
    )


def test_compare_refuses_different_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f_path, _ = _quantize(tmp_path, _mlp(rng), False, "a")
    _, q_path = _quantize(tmp_path, _conv(rng), False, "b")
    with pytest.raises(InputError, match="differ"):
        compare(
            from_onnx(f_path),
            from_qdq(q_path),
            input_box(from_onnx(f_path), -np.ones(4), np.ones(4)),
        )


def test_unsupported_quantized_op_is_named(tmp_path: Path) -> None:
    node = helper.make_node("MatMulInteger", ["x", "W"], ["y"], name="mmi")
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 2])],
        [numpy_helper.from_array(np.ones((2, 2), np.uint8), "W")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g), str(path))
    with pytest.raises(InputError, match="MatMulInteger"):
        from_qdq(path)


# ----------------------------------------------------------------- batched label certificates


def _ort_labels(path: Path, xs: np.ndarray) -> np.ndarray:
    out: np.ndarray = _run(_session(path), xs).argmax(1)
    return out


def test_compare_points_batched_against_onnxruntime(tmp_path: Path) -> None:
    """Coarse (4-bit) quantization flips labels: every flip onnxruntime shows is falsified
    or unknown, every falsified point flips in onnxruntime, and the batched answers equal
    the one-point-at-a-time ones."""
    from quantcert.analyses.compare import compare_points
    from quantcert.analyses.compare_labels import point_labels
    from quantcert.ops.base import Box

    rng = np.random.default_rng(4)
    f_path, q_path = _quantize(tmp_path, _mlp(rng), True, "flip", "QUInt4", "QInt4")
    fnet, qnet = from_onnx(f_path), from_qdq(q_path)
    xs = rng.uniform(-1, 1, size=(400, 4)).astype(np.float32).astype(np.float64)
    summary = compare_points(fnet, qnet, xs)
    measured = set(np.nonzero(_ort_labels(f_path, xs) != _ort_labels(q_path, xs))[0].tolist())
    falsified = set(summary["falsified_images"])  # type: ignore[call-overload]
    unknown = set(summary["unknown_images"])  # type: ignore[call-overload]
    assert summary["falsified"] > 0 and summary["verified"] > 0
    assert measured <= falsified | unknown
    assert falsified <= measured
    assert summary["verified"] + summary["falsified"] + summary["unknown"] == len(xs)
    # Labels that hold under any float32 evaluation are onnxruntime's labels.
    x = torch.from_numpy(xs)
    lf, lq, _, _ = point_labels(fnet, qnet, x, float32=True)
    ort_f, ort_q = _ort_labels(f_path, xs), _ort_labels(q_path, xs)
    lf_np, lq_np = lf.numpy(), lq.numpy()
    assert ((lf_np < 0) | (lf_np == ort_f)).all() and ((lq_np < 0) | (lq_np == ort_q)).all()
    # One at a time: the same statuses.
    for i in range(0, 400, 40):
        xi = x[i : i + 1]
        cert = label_certificate(fnet, qnet, Box(xi, xi))
        expect = "falsified" if i in falsified else "unknown" if i in unknown else "verified"
        assert cert.status == expect


def test_label_certificates_on_boxes_against_onnxruntime(tmp_path: Path) -> None:
    """Boxes, batched: a verified box keeps both labels equal at samples run by onnxruntime,
    and a falsified box's witness lies in the box and flips there."""
    from quantcert.analyses.compare import FLOAT, QUANT, comparison_network
    from quantcert.analyses.compare_labels import label_certificates
    from quantcert.ops.base import Box

    rng = np.random.default_rng(4)
    f_path, q_path = _quantize(tmp_path, _mlp(rng), True, "boxes", "QUInt4", "QInt4")
    fnet, qnet = from_onnx(f_path), from_qdq(q_path)
    centres = rng.uniform(-1, 1, size=(120, 4))
    radius = rng.choice([0.0, 1e-3, 0.02, 0.1], size=(120, 1))
    lo, hi = torch.from_numpy(centres - radius), torch.from_numpy(centres + radius)
    pair = comparison_network(fnet, qnet)
    ends = (FLOAT + fnet.output_node, QUANT + qnet.output_node)
    certs = label_certificates(fnet, qnet, pair, ends, Box(lo, hi))
    statuses = [c.status for c in certs]
    assert statuses.count("verified") >= 10 and statuses.count("falsified") >= 1, statuses
    for i, cert in enumerate(certs):
        if cert.status == "verified":
            s = rng.uniform(lo[i].numpy(), hi[i].numpy(), size=(100, 4))
            s = np.concatenate([s, centres[i : i + 1]])
            assert (_ort_labels(f_path, s) == _ort_labels(q_path, s)).all()
        elif cert.status == "falsified":
            assert cert.witness is not None
            w = cert.witness.x.reshape(1, 4)
            assert (w >= lo[i].numpy()).all() and (w <= hi[i].numpy()).all()
            assert _ort_labels(f_path, w)[0] != _ort_labels(q_path, w)[0]


MNIST_NET = Path(__file__).resolve().parents[2] / "shared/models/vnncomp2021/mnistfc"


@pytest.mark.skipif(
    not (MNIST_NET / "mnist-net_256x2.onnx").exists(), reason="shared mnist-net not present"
)
def test_compare_points_mnist_int8(tmp_path: Path) -> None:
    """Issue 9's target: mnist-net_256x2 against its int8 QDQ model on 1,000 MNIST test
    images, batched, well within 30 s; every label change onnxruntime shows is undecided."""
    import time

    from quantcert.analyses.compare import compare_points

    f_path = MNIST_NET / "mnist-net_256x2.onnx"
    data = np.load(Path(__file__).resolve().parents[1] / "src/quantcert/data/mnist_test.npz")
    images = data["images"].reshape(-1, 784).astype(np.float64) / 255.0
    name = _session(f_path).get_inputs()[0].name  # type: ignore[attr-defined]

    class Reader(quant.CalibrationDataReader):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.it = iter(
                [{name: x.reshape(1, 784, 1).astype(np.float32)} for x in images[9000:9100]]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    q_path = tmp_path / "q8.onnx"
    quant.quantize_static(
        str(f_path),
        str(q_path),
        Reader(),
        quant_format=quant.QuantFormat.QDQ,
        activation_type=quant.QuantType.QInt8,
        weight_type=quant.QuantType.QInt8,
    )
    fnet, qnet = from_onnx(f_path), from_qdq(q_path)
    x = images[:1000]
    start = time.perf_counter()
    summary = compare_points(fnet, qnet, x)
    assert time.perf_counter() - start < 30
    assert summary["verified"] + summary["falsified"] + summary["unknown"] == 1000
    assert summary["verified"] >= 990
    xs = x.reshape(-1, 784, 1)
    changed = set(np.nonzero(_ort_labels(f_path, xs) != _ort_labels(q_path, xs))[0].tolist())
    undecided = set(summary["falsified_images"]) | set(summary["unknown_images"])  # type: ignore[call-overload]
    assert changed <= undecided


@pytest.mark.parametrize(
    ("make", "activation", "weight"),
    [
        (_mlp, "QUInt8", "QInt8"),
        (_conv, "QInt16", "QInt16"),
        (_conv, "QFLOAT8E4M3FN", "QFLOAT8E4M3FN"),
    ],
)
def test_float32_error_bound_covers_onnxruntime(
    tmp_path: Path,
    make: Callable[[np.random.Generator], onnx.ModelProto],
    activation: str,
    weight: str,
) -> None:
    """``ort_error(float32=True)``: onnxruntime's float32 outputs of both models lie within
    the stated bound of our float64 values, staircase steps included."""
    from quantcert.analyses.compare_labels import ort_error

    rng = np.random.default_rng(11)
    f_path, q_path = _quantize(tmp_path, make(rng), True, "f32", activation, weight)
    for path, net in ((f_path, from_onnx(f_path)), (q_path, from_qdq(q_path))):
        xs = rng.uniform(-1, 1, size=(300, *net.input_shape))
        values, errors = ort_error(net, torch.from_numpy(xs), float32=True)
        v, e = values[net.output_node].flatten(1).numpy(), errors[net.output_node].flatten(1)
        ref = _run(_session(path), xs).reshape(len(xs), -1).astype(np.float64)
        assert (np.abs(ref - v) <= e.numpy()).all()
