"""Formats on activations and the input: the ``QuantNoise`` op's transfers are sound, and the
certificate of ``--activations``/``--input`` holds against the network actually quantized
(QuantizeLinear/DequantizeLinear on every Gemm/MatMul input, run by onnxruntime)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

from quantcert.analyses.epsilon import Budget, epsilon, input_box
from quantcert.cli_glue import add_activation_noise
from quantcert.engines.perturbation import Perturbation
from quantcert.errors import InputError
from quantcert.intake import load
from quantcert.ops import QuantNoise
from quantcert.ops.base import DTYPE, Box, Op

RNG = np.random.default_rng(11)


# ------------------------------------------------------------------ the op


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans())
def test_noise_op_is_never_beaten_by_sampling(seed: int, centred_elsewhere: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    shape, b, s, n = (5,), 2, 3, 64

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g, dtype=DTYPE)

    op: Op = QuantNoise(shape)
    if centred_elsewhere:  # a parameter split moves the centres
        op = op.with_params({"rel": 0.1 * rand(b, *shape), "abs": 0.1 * rand(b, *shape)})
    radius = {"rel": 0.2 * rand(*shape).abs(), "abs": 0.3 * rand(b, *shape).abs()}
    c, w = rand(b, *shape), rand(b, *shape).abs()
    box = Box(c - w, c + w)
    out = op.interval([box], radius)
    A = rand(s, b, *shape)
    back = op.backward(A, [box], radius)
    assert back is not None
    (a_in,), const, _ = back
    for _ in range(4):
        t = torch.rand(n, b, *shape, generator=g, dtype=DTYPE)
        z = box.lo + t * (box.hi - box.lo)
        params = {}
        for k, r in radius.items():
            sg = torch.rand(n, b, *shape, generator=g, dtype=DTYPE) * 2 - 1
            sg = torch.where(sg.abs() > 0.7, sg.sign(), sg)  # corners too
            params[k] = op.params[k] + sg * r
        y = z + z * params["rel"] + params["abs"]
        assert bool((y >= out.lo).all() and (y <= out.hi).all())
        lhs = torch.einsum("sbk,nbk->nsb", A, y)
        rhs = torch.einsum("sbk,nbk->nsb", a_in, z) + const
        assert bool((lhs <= rhs).all())
    nominal = QuantNoise(shape).forward([c], {})
    assert torch.equal(nominal, c)


# ------------------------------------------------------------------ soundness vs real QDQ


def _weights() -> dict[str, np.ndarray]:
    return {
        "W1": RNG.normal(size=(4, 8)),
        "b1": RNG.normal(size=8),
        "W2": RNG.normal(size=(6, 8)) / 2,
        "b2": RNG.normal(size=6),
        "W3": RNG.normal(size=(3, 6)),
        "b3": RNG.normal(size=3),
    }


def _graph(
    weights: dict[str, np.ndarray],
    qdq: dict[str, tuple[float, int | float, int]] | None = None,
    probes: bool = False,
) -> onnx.ModelProto:
    """x -> MatMul W1 + b1 -> Relu -> Gemm(W2) -> Relu -> Gemm(W3). ``qdq`` maps a tensor
    (x, r1, r2) to (scale, zero point, ONNX type): QuantizeLinear then DequantizeLinear on it
    before the layer that reads it."""
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in weights.items()]
    nodes = []

    def read(name: str) -> str:
        if qdq is None or name not in qdq:
            return name
        scale, zp, kind = qdq[name]
        inits.append(numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"))
        inits.append(helper.make_tensor(f"{name}_zp", kind, [], [zp]))
        nodes.append(
            helper.make_node("QuantizeLinear", [name, f"{name}_s", f"{name}_zp"], [name + "_i"])
        )
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [name + "_i", f"{name}_s", f"{name}_zp"], [name + "_d"]
            )
        )
        return name + "_d"

    nodes.append(helper.make_node("MatMul", [read("x"), "W1"], ["m"]))
    nodes.append(helper.make_node("Add", ["m", "b1"], ["h1"]))
    nodes.append(helper.make_node("Relu", ["h1"], ["r1"]))
    nodes.append(helper.make_node("Gemm", [read("r1"), "W2", "b2"], ["h2"], transB=1))
    nodes.append(helper.make_node("Relu", ["h2"], ["r2"]))
    nodes.append(helper.make_node("Gemm", [read("r2"), "W3", "b3"], ["y"], transB=1))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])]
    if probes:
        outputs += [
            helper.make_tensor_value_info(k, TensorProto.FLOAT, [None, n])
            for k, n in (("r1", 8), ("r2", 6))
        ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o, dtype=np.float64) for o in sess.run(None, {"x": x.astype(np.float32)})]


def _ort_params(lo: float, hi: float, kind: int, symmetric: bool) -> tuple[float, int]:
    """onnxruntime's scale and zero point for a calibrated range (QDQ's compute_scale_zp)."""
    qmin, qmax = get_qmin_qmax_for_qType(kind, symmetric=symmetric)
    zp, scale = compute_scale_zp(np.float32(lo), np.float32(hi), qmin, qmax, symmetric)
    return float(scale), int(zp)


@pytest.mark.parametrize("input_format", ["int8", "fp8-e4m3"])
def test_real_activation_quantization_never_exceeds_the_certificate(
    input_format: str, tmp_path: Path
) -> None:
    weights = _weights()
    float_model = _graph(weights)
    path = tmp_path / "mlp.onnx"
    onnx.save(float_model, str(path))
    net = load(path)
    calib = RNG.uniform(-1, 1, (64, 4))
    np.savez(tmp_path / "calib.npz", x=calib)
    # onnxruntime's MinMax calibration: min and max of each tensor over the data.
    _, r1, r2 = _run(_graph(weights, probes=True), calib)
    qdq: dict[str, tuple[float, int | float, int]] = {}
    for name, values in (("r1", r1), ("r2", r2)):
        s, z = _ort_params(float(values.min()), float(values.max()), TensorProto.UINT8, False)
        qdq[name] = (s, z, TensorProto.UINT8)
    if input_format == "int8":
        s, z = _ort_params(float(calib.min()), float(calib.max()), TensorProto.INT8, True)
        qdq["x"] = (s, z, TensorProto.INT8)
    else:
        qdq["x"] = (1.0, 0.0, TensorProto.FLOAT8E4M3FN)
    quant_model = _graph(weights, qdq)
    # Points inside the calibration range and beyond it (saturation).
    for scale in (0.5, 1.0, 1.6):
        x = RNG.uniform(-scale, scale, (1, 4))
        box = input_box(net, x[0], x[0])
        qnet, pert = add_activation_noise(
            net, Perturbation({}), box, "uint8", input_format, str(tmp_path / "calib.npz")
        )
        cert = epsilon(qnet, pert, box, Budget(gap=1e-3, timeout=3))
        y_float, y_quant = _run(float_model, x)[0], _run(quant_model, x)[0]
        measured = float(np.abs(y_quant - y_float).max())
        assert cert.overall.lower <= cert.overall.upper
        # float32 evaluation of both models: a few ulps of the outputs
        assert measured <= cert.overall.upper + 1e-5 * (1 + np.abs(y_float).max())
        assert measured > 0


def test_noise_network_computes_the_same_function(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(_graph(_weights()), str(path))
    net = load(path)
    x = RNG.uniform(-1, 1, (1, 4))
    box = input_box(net, x[0], x[0])
    qnet, pert = add_activation_noise(net, Perturbation({}), box, "uint8", "fp8-e4m3", None)
    noise = [n for n in qnet.nodes if isinstance(n.op, QuantNoise)]
    assert len(noise) == 3
    assert set(pert.radius) == {f"{n.name}.{p}" for n in noise for p in ("rel", "abs")}
    xs = torch.as_tensor(RNG.uniform(-1, 1, (5, 4)), dtype=DTYPE)
    assert torch.equal(qnet(xs), net(xs))


# ------------------------------------------------------------------ CLI


def test_cli_takes_activation_and_input_formats(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(_graph(_weights()), str(path))
    np.savez(tmp_path / "calib.npz", x=RNG.uniform(-1, 1, (16, 4)))
    base = [sys.executable, "-c", "from quantcert.cli import main; main()"]
    at = ["--at", "0.1,0.2,-0.3,0.4", "--timeout", "1", "--no-self-check"]
    out = tmp_path / "eps.json"
    calib = ["--calibration", str(tmp_path / "calib.npz")]
    eps = ["epsilon", str(path), "--activations", "uint8", "--input", "int8", "--weights", "int8"]
    res = subprocess.run(
        [*base, *eps, *calib, *at, "--json", str(out)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    # flip in this process (the command line's start-up is paid once above)
    from typer.testing import CliRunner

    from quantcert.cli import app

    flip = ["flip", str(path), "--activations", "uint8", "--input", "fp8-e4m3", *at, "--json", "-"]
    ran = CliRunner().invoke(app, flip)
    assert ran.exit_code == 0, ran.output
    for data in (json.loads(out.read_text()), json.loads(ran.stdout)):
        assert data["spec"]["perturbation"]["kind"] == "formats"
        assert data["spec"]["perturbation"]["quantized_tensors"]
    offsets = json.loads(out.read_text())["witness"]["param_offsets"]
    assert any(k.endswith("_q.abs") for k in offsets)


def test_bad_activation_formats_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(_graph(_weights()), str(path))
    net = load(path)
    box = input_box(net, np.zeros(4), np.zeros(4))
    with pytest.raises(InputError, match="per-tensor"):
        add_activation_noise(net, Perturbation({}), box, "int4:per-channel", None, None)
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 5)))
    with pytest.raises(InputError, match="calibration"):
        add_activation_noise(net, Perturbation({}), box, "uint8", None, str(tmp_path / "bad.npz"))
    with pytest.raises(InputError, match="saturates"):
        add_activation_noise(
            net,
            Perturbation({}),
            input_box(net, -9 * np.ones(4), 9 * np.ones(4)),
            None,
            "q2.4",
            None,
        )
