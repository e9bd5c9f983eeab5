"""Issue 13, violations 1-4: crafted ONNX models whose certificates the old intake got wrong.

Every check here is independent of the IR: the model file itself, with its initializers
moved inside the stated perturbation box, is run by onnxruntime, and no such run may exceed
the certified ``upper``. The witness is written back as an ONNX model and replayed too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantcert.analyses.epsilon import Budget, epsilon, input_box
from quantcert.engines import perturbation
from quantcert.errors import InputError
from quantcert.intake import load
from quantcert.intake.self_check import as_float64
from quantcert.network import Network
from quantcert.report.witness_onnx import replay_witness, write_witness_model

RNG = np.random.default_rng(13)


def _model(
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    in_shape: list[int],
    out_shape: list[int],
    opset: int = 13,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "crafted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(a.astype(np.float32), k) for k, a in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(model: onnx.ModelProto, tmp_path: Path, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _run(model: onnx.ModelProto, inits: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The file's function with some initializers replaced, by onnxruntime in float64 where
    it has the kernels, else in float32."""
    for wide in (True, False):
        m = onnx.ModelProto()
        m.CopyFrom(as_float64(model) if wide else model)
        dtype = np.float64 if wide else np.float32
        for t in m.graph.initializer:
            if t.name in inits:
                t.CopyFrom(numpy_helper.from_array(inits[t.name].astype(dtype), t.name))
        try:
            sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # no float64 kernel for some op: run as stored
            continue
        return np.asarray(sess.run(None, {"x": x.astype(dtype)})[0], dtype=np.float64)
    raise AssertionError("onnxruntime cannot run the crafted model")


def _ort_attack(
    model: onnx.ModelProto,
    tensors: list[str],
    delta: float,
    xs: list[np.ndarray],
    samples: int = 200,
) -> float:
    """The largest output change that random corners of the file's perturbation box reach."""
    stored = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    best = 0.0
    for x in xs:
        base = _run(model, {}, x)
        for _ in range(samples):
            moved = {
                k: stored[k] + delta * RNG.choice([-1.0, 1.0], stored[k].shape) for k in tensors
            }
            best = max(best, float(np.abs(_run(model, moved, x) - base).max()))
    return best


def _certify(
    net: Network, delta: float, lo: np.ndarray, hi: np.ndarray
) -> tuple[float, float, dict]:
    pert = perturbation.absolute(net, delta)
    res = epsilon(net, pert, input_box(net, lo, hi), Budget(gap=1e-4, timeout=4))
    return res.overall.lower, res.overall.upper, {"res": res, "pert": pert}


def _replay(model: onnx.ModelProto, net: Network, found: dict, tmp_path: Path) -> float:
    """Write the witness as the user's own graph with perturbed initializers; replay it in
    onnxruntime; return its output change against the stored model at the same input."""
    w = found["res"].overall.witness
    nominal = net.param_tensors()
    ir = {k: nominal[k] + np.asarray(v) for k, v in w.param_offsets.items()}
    import torch

    files = net.file_params({k: torch.as_tensor(v) for k, v in ir.items()})
    out = write_witness_model(model, files, w.x, tmp_path / "witness.onnx")
    replayed = replay_witness(out.model)
    base = _run(model, {}, w.x.reshape(1, *net.input_shape).astype(np.float64))
    return float(np.abs(replayed.astype(np.float64) - base).max())


def _conv_add(const: np.ndarray, in_shape: list[int]) -> onnx.ModelProto:
    c = in_shape[1]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["h", "c"], ["y"]),
    ]
    w = RNG.normal(size=(4, c, 1, 1))
    return _model(nodes, {"w": w, "c": const}, in_shape, [1, 4, *in_shape[2:]])


@pytest.mark.parametrize(
    ("const_shape", "in_shape", "point"),
    [((4,), [1, 1, 4, 4], True), ((4,), [1, 1, 4, 4], False), ((1, 2, 2), [1, 1, 2, 2], False)],
)
def test_conv_add_constant_broadcasts_as_onnx_does(
    const_shape: tuple[int, ...], in_shape: list[int], point: bool, tmp_path: Path
) -> None:
    """Violation 1: a (4,) constant broadcasts along W, a (1, 2, 2) one per pixel: neither is
    a per-channel bias. The IR must compute the file's function and the bound must hold."""
    model = _conv_add(RNG.normal(size=const_shape) * 10, in_shape)
    net = load(_save(model, tmp_path))
    n = int(np.prod(in_shape))
    lo, hi = (np.full(n, 0.5), np.full(n, 0.5)) if point else (np.zeros(n), np.ones(n))
    x = RNG.uniform(0, 1, in_shape)
    ours = net(__import__("torch").as_tensor(x[0:1].reshape(1, *net.input_shape))).detach().numpy()
    assert np.abs(ours - _run(model, {}, x)).max() < 1e-5
    delta = 0.05 if const_shape == (1, 2, 2) else 0.01
    lower, upper, found = _certify(net, delta, lo, hi)
    xs = [lo.reshape(in_shape)] if point else [RNG.uniform(0, 1, in_shape) for _ in range(4)]
    tensors = found["pert"].description["tensors"]
    assert _ort_attack(model, tensors, delta, xs) <= upper + 1e-5
    assert lower <= upper
    assert _replay(model, net, found, tmp_path) >= lower - 1e-5


def test_maxpool_dilations_are_honoured(tmp_path: Path) -> None:
    """Violation 2: MaxPool kernel 2, stride 2, dilations 2 on 7x7 (the output shape matches
    the undilated pool, so only the values tell)."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h"], kernel_shape=[1, 1]),
        helper.make_node(
            "MaxPool", ["h"], ["p"], kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2]
        ),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "v"], ["y"], transB=1),
    ]
    inits = {
        "w": RNG.normal(size=(2, 1, 1, 1)),
        "b": RNG.normal(size=2),
        "v": RNG.normal(size=(1, 18)),
    }
    model = _model(nodes, inits, [1, 1, 7, 7], [1, 1])
    net = load(_save(model, tmp_path))
    x = RNG.uniform(0, 1, (1, 1, 7, 7))
    import torch

    assert np.abs(net(torch.as_tensor(x)).detach().numpy() - _run(model, {}, x)).max() < 1e-5
    lo, hi = np.zeros(49), np.ones(49)
    lower, upper, found = _certify(net, 0.05, lo, hi)
    xs = [RNG.uniform(0, 1, (1, 1, 7, 7)) for _ in range(4)]
    assert _ort_attack(model, found["pert"].description["tensors"], 0.05, xs, 60) <= upper + 1e-5
    assert _replay(model, net, found, tmp_path) >= lower - 1e-5


def test_averagepool_dilations_are_refused(tmp_path: Path) -> None:
    """Violation 3: AveragePool dilations (opset 19) have no IR transfer yet: refused, with
    the attribute named, never ignored."""
    nodes = [
        helper.make_node(
            "AveragePool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2]
        ),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    model = _model(nodes, {}, [1, 1, 7, 7], [1, 9], opset=19)
    with pytest.raises(InputError, match="dilations"):
        load(_save(model, tmp_path))


def _mlp_231(first: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    inits = {
        "W1": RNG.normal(size=(2, 3)),
        "b1": RNG.normal(size=3),
        "W2": RNG.normal(size=(3, 1)),
        "b2": RNG.normal(size=1),
    }
    add1 = ["b1", "m1"] if first == "const" else ["m1", "b1"]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["m1"]),
        helper.make_node("Add", add1, ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "W2"], ["m2"]),
        helper.make_node("Add", ["b2", "m2"], ["y"]),
    ]
    return _model(nodes, inits, [1, 2], [1, 1]), inits


def test_constant_first_add_is_a_perturbed_bias(tmp_path: Path) -> None:
    """Violation 4a: Add(b, h) with the constant first is the layer's bias, and moves."""
    model, inits = _mlp_231("const")
    net = load(_save(model, tmp_path))
    lower, upper, found = _certify(net, 0.05, -np.ones(2), np.ones(2))
    xs = [RNG.uniform(-1, 1, (1, 2)) for _ in range(16)] + [
        np.array([[s, t]]) for s in (-1, 1) for t in (-1, 1)
    ]
    assert _ort_attack(model, list(inits), 0.05, xs, 64) <= upper + 1e-6
    assert set(found["pert"].description["tensors"]) == set(inits)
    # the same network with the constant second certifies the same upper
    model2, _ = _mlp_231("act")
    for t2, t1 in zip(model2.graph.initializer, model.graph.initializer, strict=True):
        t2.CopyFrom(t1)
    upper2 = _certify(load(_save(model2, tmp_path, "m2.onnx")), 0.05, -np.ones(2), np.ones(2))[1]
    assert abs(upper - upper2) <= 1e-4
    assert _replay(model, net, found, tmp_path) >= lower - 1e-5


def test_gemm_alpha_beta_scale_the_file_radius(tmp_path: Path) -> None:
    """Violation 4b: a radius on the stored B and C of Gemm(alpha=3, beta=-2) is a radius
    3x and 2x as large on the product."""
    inits = {"B": RNG.normal(size=(3, 2)), "C": RNG.normal(size=3), "V": RNG.normal(size=(1, 3))}
    nodes = [
        helper.make_node("Gemm", ["x", "B", "C"], ["h"], alpha=3.0, beta=-2.0, transB=1),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("Gemm", ["t", "V"], ["y"], transB=1),
    ]
    model = _model(nodes, inits, [1, 2], [1, 1])
    net = load(_save(model, tmp_path))
    lower, upper, found = _certify(net, 0.01, np.full(2, 0.3), np.full(2, 0.3))
    xs = [np.full((1, 2), 0.3)]
    assert _ort_attack(model, list(inits), 0.01, xs, 400) <= upper + 1e-6
    assert _replay(model, net, found, tmp_path) >= lower - 1e-5


def test_batchnorm_tensors_are_parameters_of_the_file(tmp_path: Path) -> None:
    """Violation 4c: with a BN scale of 20 after a Gemm, perturbing the file's Gemm weights
    is amplified 20x; BN's own tensors move too; the witness maps back to the file."""
    inits = {
        "W": RNG.normal(size=(2, 3)),
        "b": RNG.normal(size=3),
        "g": np.full(3, 20.0),
        "be": RNG.normal(size=3),
        "m": RNG.normal(size=3),
        "v": np.ones(3),
        "V": RNG.normal(size=(3, 1)),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["h"]),
        helper.make_node("BatchNormalization", ["h", "g", "be", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("MatMul", ["r", "V"], ["y"]),
    ]
    model = _model(nodes, inits, [1, 2], [1, 1])
    net = load(_save(model, tmp_path))
    lower, upper, found = _certify(net, 0.01, np.full(2, 0.5), np.full(2, 0.5))
    xs = [np.full((1, 2), 0.5)]
    assert _ort_attack(model, list(inits), 0.01, xs, 400) <= upper + 1e-6
    assert set(found["pert"].description["tensors"]) == set(inits)
    only_w = _ort_attack(model, ["W"], 0.01, xs, 200)
    assert only_w <= upper
    assert _replay(model, net, found, tmp_path) >= lower - 1e-5


def test_batchnorm_variance_radius_past_zero_is_refused(tmp_path: Path) -> None:
    inits = {
        "W": np.ones((2, 3)),
        "g": np.ones(3),
        "be": np.zeros(3),
        "m": np.zeros(3),
        "v": np.full(3, 1e-3),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["h"]),
        helper.make_node("BatchNormalization", ["h", "g", "be", "m", "v"], ["y"]),
    ]
    net = load(_save(_model(nodes, inits, [1, 2], [1, 3]), tmp_path))
    with pytest.raises(InputError, match="variance"):
        perturbation.absolute(net, 0.01)
    assert perturbation.absolute(net, 0.01, select=["W", "g"]).count == 9


def test_folded_mode_states_radii_on_the_folded_network(tmp_path: Path) -> None:
    inits = {
        "W": RNG.normal(size=(2, 3)),
        "g": np.full(3, 20.0),
        "be": np.zeros(3),
        "m": np.zeros(3),
        "v": np.ones(3),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["h"]),
        helper.make_node("BatchNormalization", ["h", "g", "be", "m", "v"], ["y"]),
    ]
    path = _save(_model(nodes, inits, [1, 2], [1, 3]), tmp_path)
    folded = load(path, perturb="folded")
    assert len(folded) == 1 and not folded.sources
    desc = perturbation.absolute(folded, 0.01).description
    assert desc["stated_on"] == "network parameters"
