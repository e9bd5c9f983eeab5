"""Formats as parameter perturbations: the real quantization of every weight lies inside the
box, and the model actually quantized (run by onnxruntime) never exceeds the certificate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantcert.analyses.epsilon import Budget, epsilon, input_box
from quantcert.errors import InputError
from quantcert.formats import parse_format, parse_layer_map
from quantcert.formats.apply import format_perturbation
from quantcert.intake import load

RNG = np.random.default_rng(9)


def _mlp(tmp_path: Path) -> tuple[Path, onnx.ModelProto]:
    """MatMul + Add (weights stored (in, out)), then Gemm(transB=1, alpha=2), tanh between."""
    inits = {
        "W1": RNG.normal(size=(4, 8)),
        "b1": RNG.normal(size=8),
        "W2": RNG.normal(size=(3, 8)),
        "b2": RNG.normal(size=3),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["m"]),
        helper.make_node("Add", ["m", "b1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("Gemm", ["t", "W2", "b2"], ["y"], transB=1, alpha=2.0),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(a.astype(np.float32), k) for k, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    return path, model


def _quantized(model: onnx.ModelProto, formats: dict[str, str]) -> onnx.ModelProto:
    """The model with the named initializers quantized by the format (bit-exact with the
    reference quantizers, tests/test_formats_*.py), laid out as the layer's (out, in)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name not in formats:
            continue
        fmt = parse_format(formats[t.name])
        value = numpy_helper.to_array(t).astype(np.float64)
        transposed = t.name == "W1"  # MatMul stores (in, out)
        laid = value.T if transposed else value
        if hasattr(fmt, "granularity") and fmt.granularity == "group":
            import dataclasses

            fmt = dataclasses.replace(fmt, axis=1)
        q = fmt.quantize(laid)
        t.CopyFrom(numpy_helper.from_array((q.T if transposed else q).astype(np.float32), t.name))
    return out


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x.astype(np.float32)})[0], dtype=np.float64)


@pytest.mark.parametrize("weights", ["int8", "int8:per-channel", "int4:per-channel", "fp8-e4m3"])
def test_real_quantization_never_exceeds_the_certificate(weights: str, tmp_path: Path) -> None:
    path, model = _mlp(tmp_path)
    net = load(path)
    pert = format_perturbation(net, parse_layer_map(weights), parse_layer_map("int8"))
    assert set(pert.description["tensors"]) == {"W1", "W2", "b1", "b2"}
    quant = _quantized(model, {"W1": weights, "W2": weights, "b1": "int8", "b2": "int8"})
    for _ in range(3):
        x = RNG.uniform(-1, 1, (1, 4))
        cert = epsilon(net, pert, input_box(net, x[0], x[0]), Budget(gap=1e-3, timeout=2))
        measured = float(np.abs(_run(quant, x) - _run(model, x)).max())
        # float32 evaluation of both models: a few ulps of the outputs
        assert measured <= cert.overall.upper + 1e-5 * (1 + np.abs(_run(model, x)).max())


def test_layer_maps_name_layers_or_initializers(tmp_path: Path) -> None:
    path, _ = _mlp(tmp_path)
    net = load(path)
    pert = format_perturbation(net, {"W2": parse_format("int4"), "*": parse_format("int8")})
    assert set(pert.description["tensors"]) == {"W1", "W2"}
    with pytest.raises(InputError, match="nolayer"):
        format_perturbation(net, {"nolayer": parse_format("int8")})


def test_cli_takes_formats_in_place_of_delta(tmp_path: Path) -> None:
    path, _ = _mlp(tmp_path)
    args = [sys.executable, "-c", "from quantcert.cli import main; main()", "epsilon", str(path)]
    at = ["--at", "0.1,0.2,-0.3,0.4", "--json", "-", "--timeout", "5"]
    res = subprocess.run(
        [*args, "--weights", "int8:per-channel", *at], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["spec"]["perturbation"]["kind"] == "formats"
    both = subprocess.run(
        [*args, "--weights", "int8", "--delta", "0.1", *at],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert both.returncode == 2 and "exactly one" in both.stderr
    bad = subprocess.run(
        [*args, "--weights", "int3:group=7", *at], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
