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


def _quantize(tmp: Path, model: onnx.ModelProto, per_channel: bool, tag: str) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    f, q = tmp / f"{tag}.onnx", tmp / f"{tag}.qdq.onnx"
    onnx.save(model, str(f))
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    quant.quantize_static(
        str(f),
        str(q),
        _Reader(shape, rng),
        quant_format=quant.QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=quant.QuantType.QUInt8,
        weight_type=quant.QuantType.QInt8,
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
    result = compare(fnet, qnet, input_box(fnet, lo, hi), Budget(timeout=2.0))
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
