"""``quantcert accuracy``: certified accuracy under quantization formats.

Every claim is attacked from outside the code under test:
- a verified image keeps its label under the real quantization run by onnxruntime (the
  model file with its weights rounded by onnxruntime's own QuantizeLinear/DequantizeLinear),
  and under random settings of every weight inside the format's box (corners included);
- a falsified image's witness replays: its offsets lie in the box and the network, evaluated
  afresh, gives another label;
- certified accuracy never exceeds the measured accuracy of the real rounding.
"""

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
from onnx import helper, numpy_helper

from quantcert.analyses.precision import Scheme, accuracy, prepare
from quantcert.analyses.precision.accuracy import (
    BY_ATTACK,
    FALSIFIED,
    VERIFIED,
    margins,
)
from quantcert.errors import InputError
from quantcert.intake import load
from quantcert.ops.base import DTYPE

PACKAGED = Path(__file__).resolve().parents[1] / "src" / "quantcert" / "data"
MODELS = PACKAGED / "models"
NETS = {
    "mnist-256x2": "mnistfc/mnist-net_256x2.onnx",
    "eran-9x200": "eran/mnist_relu_9_200.onnx",
    "convnet-avgpool": "verivital/Convnet_avgpool.onnx",
}
#: Weight bits at which each net is mostly certified (the 9-layer ERAN net's bounds need
#: finer weights: at int8 its CROWN bounds decide none of these images).
BITS = {"mnist-256x2": 8, "eran-9x200": 10, "convnet-avgpool": 8}


def _mnist(n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(PACKAGED / "mnist_test.npz")
    x = d["images"][start : start + n].astype(np.float64) / 255.0
    return x, d["labels"][start : start + n].astype(np.int64)


def _ort_weight_quantized(path: Path, fmt_bits: int) -> onnx.ModelProto:
    """The model with every 2-D / 4-D float initializer passed through onnxruntime's own
    per-channel symmetric QuantizeLinear -> DequantizeLinear (axis 0 for Conv and Gemm with
    transB=1; scales as its quantizer computes them: absmax / 127 per channel)."""
    model = onnx.load(str(path))
    gemm_axis = {}
    for node in model.graph.node:
        if node.op_type == "Gemm":
            transb = next((a.i for a in node.attribute if a.name == "transB"), 0)
            gemm_axis[node.input[1]] = 0 if transb else 1
        elif node.op_type == "MatMul":
            gemm_axis[node.input[1]] = 1
        elif node.op_type == "Conv":
            gemm_axis[node.input[1]] = 0
    qmax = 2 ** (fmt_bits - 1) - 1
    zdtype = np.int8 if fmt_bits <= 8 else np.int16  # |w / s| <= qmax: no clipping either way
    for init in model.graph.initializer:
        if init.name not in gemm_axis:
            continue
        w = numpy_helper.to_array(init).astype(np.float32)
        axis = gemm_axis[init.name]
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        amax = np.maximum(np.abs(moved.min(1)), np.abs(moved.max(1))).astype(np.float64)
        scale = (2 * amax / (2 * qmax)).astype(np.float32)
        scale[scale == 0] = 1.0
        graph = helper.make_graph(
            [
                helper.make_node("QuantizeLinear", ["w", "s", "z"], ["q"], axis=axis),
                helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis),
            ],
            "qdq",
            [helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, list(w.shape))],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(w.shape))],
            [
                numpy_helper.from_array(scale, "s"),
                numpy_helper.from_array(np.zeros(scale.shape, zdtype), "z"),
            ],
        )
        qdq = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        sess = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
        y = sess.run(None, {"w": w})[0]
        init.CopyFrom(numpy_helper.from_array(y.astype(np.float32), init.name))
    return model


def _ort_labels(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    out = [sess.run(None, {inp.name: xi.reshape(shape).astype(np.float32)})[0] for xi in x]
    return np.array([int(np.argmax(o)) for o in out])


@pytest.mark.parametrize("name", sorted(NETS))
def test_verified_images_hold_under_onnxruntime_weight_rounding(name: str) -> None:
    path = MODELS / NETS[name]
    net = load(path, self_check=False)
    x, y = _mnist(24)
    scheme = Scheme.parse(weights=f"int{BITS[name]}:per-channel")
    res = accuracy(net, x, y, scheme)
    ort_pred = _ort_labels(_ort_weight_quantized(path, BITS[name]), x)
    verified = res.status == VERIFIED
    # The real rounding, run by onnxruntime, keeps every verified label.
    assert (ort_pred[verified] == y[verified]).all()
    # Our real rounding is onnxruntime's: the measured labels agree.
    assert (ort_pred == res.measured_pred).mean() >= 0.95
    assert res.summary()["certified_accuracy"] <= res.summary()["measured_accuracy"]
    assert verified.sum() >= 12


@pytest.mark.parametrize("name", ["mnist-256x2", "convnet-avgpool"])
def test_certificates_survive_sampled_settings_and_witnesses_replay(name: str) -> None:
    net = load(MODELS / NETS[name], self_check=False)
    x, y = _mnist(16 if name == "mnist-256x2" else 8, start=100)
    # Coarse enough that some images are attacked; the conv net's attack is the dearest.
    bits = 6 if name == "mnist-256x2" else 7
    scheme = Scheme.parse(weights=f"int{bits}:per-channel", activations="uint8:asym")
    res = accuracy(net, x, y, scheme)
    q = prepare(net, scheme, x)
    xt = torch.as_tensor(x).reshape(-1, *net.input_shape)
    nominal = q.net.param_tensors()
    gen = torch.Generator().manual_seed(7)
    verified = torch.as_tensor(res.status == VERIFIED)
    for draw in range(12):
        params = {}
        for k, r in q.pert.radius.items():
            u = torch.rand(r.shape, generator=gen, dtype=DTYPE) * 2 - 1
            u = u.sign() if draw % 2 else u  # corners and insides
            params[k] = nominal[k] + u * r * (1 - 2**-40)
        with torch.no_grad():
            pred = q.net(xt, params).flatten(1).argmax(1)
        assert (pred[verified] == torch.as_tensor(y)[verified]).all()
    # Attack witnesses replay: inside the box, another label.
    for i, idx in enumerate(res.attack_images):
        params = {}
        for k, off in res.attack_offsets.items():
            assert bool((torch.as_tensor(off[i]).abs() <= q.pert.radius[k]).all())
            params[k] = nominal[k] + torch.as_tensor(off[i])
        with torch.no_grad():
            pred = int(q.net(xt[idx : idx + 1], params).flatten(1).argmax(1))
        assert pred != y[idx]
        assert res.by[idx] == BY_ATTACK and res.status[idx] == FALSIFIED
    assert res.outside_box == 0
    # Neither check is empty: the MLP at int6 has attack witnesses, the conv net at int7
    # verified images for the sampling to attack.
    assert len(res.attack_images) > 0 if name == "mnist-256x2" else int(verified.sum()) > 0


def test_coarse_formats_are_falsified_by_witnesses() -> None:
    net = load(MODELS / NETS["mnist-256x2"], self_check=False)
    x, y = _mnist(12)
    res = accuracy(net, x, y, Scheme.parse(weights="int2:per-channel"))
    s = res.summary()
    assert s["counts"]["falsified"] >= 6
    assert s["certified_accuracy"] <= s["measured_accuracy"]
    assert (res.measured_pred != y).sum() <= s["counts"]["falsified"] + s["counts"]["unknown"]


def test_binary_network_at_its_threshold() -> None:
    torch.manual_seed(0)
    from quantcert.network import Network, Node
    from quantcert.ops import Affine, ReLU, Sigmoid

    w1, b1 = torch.randn(8, 3, dtype=DTYPE), torch.randn(8, dtype=DTYPE)
    w2, b2 = torch.randn(1, 8, dtype=DTYPE), torch.zeros(1, dtype=DTYPE)
    nodes = [
        Node("fc1", Affine(w1, b1), ("input",)),
        Node("relu", ReLU(), ("fc1",)),
        Node("fc2", Affine(w2, b2), ("relu",)),
        Node("head", Sigmoid(), ("fc2",)),
    ]
    net = Network(nodes, (3,), head="head")
    gen = np.random.default_rng(3)
    x = gen.uniform(-1, 1, (200, 3))
    y = (net(torch.as_tensor(x)).flatten() >= 0.5).long().numpy()
    y[:10] = 1 - y[:10]  # ten wrong labels: falsified by the float network itself
    res = accuracy(net, x, y, Scheme.parse(weights="int8", activations="uint8:asym"))
    s = res.summary()
    assert s["falsified_by"]["float"] == 10
    assert s["counts"]["verified"] >= 150
    ok = res.status == VERIFIED
    assert (res.measured_pred[ok] == y[ok]).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=2, max_size=6), st.data())
def test_certified_margin_never_claims_a_wrong_label(z: list[float], data: st.DataObject) -> None:
    y = data.draw(st.integers(0, len(z) - 1))
    logits = torch.tensor([z], dtype=DTYPE)
    m = margins(logits, torch.zeros_like(logits), torch.tensor([y]), 0.0)
    others = [v for j, v in enumerate(z) if j != y]
    if float(m[0]) > 0:
        assert max(others) > z[y]
    assert float(m[0]) <= max(others) - z[y]


def test_bad_data_is_refused() -> None:
    net = load(MODELS / NETS["mnist-256x2"], self_check=False)
    x, y = _mnist(4)
    scheme = Scheme.parse(weights="int8")
    with pytest.raises(InputError, match="labels must lie"):
        accuracy(net, x, y + 20, scheme)
    with pytest.raises(InputError, match="does not fit"):
        accuracy(net, x[:, :10], y, scheme)
    with pytest.raises(InputError, match="at least one"):
        Scheme.parse()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from quantcert.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_accuracy_json_and_bad_input(tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    x, y = _mnist(20)
    np.savez(data, images=(x * 255).astype(np.uint8), labels=y)
    model = str(MODELS / NETS["mnist-256x2"])
    out = tmp_path / "acc.json"
    r = _cli("accuracy", model, "--data", str(data), "--weights", "int8:per-channel",
             "--activations", "uint8:asym", "--json", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    assert s["images"] == 20 and sum(s["counts"].values()) == 20
    assert s["certified_accuracy"] <= s["measured_accuracy"]
    w = np.load(s["witness_file"])
    assert (w["status"] == VERIFIED).sum() == s["counts"]["verified"]
    np.savez(tmp_path / "nolabels.npz", images=x)
    # (More bad input to accuracy, through a fast runner: tests/test_bad_input.py.)
    for args in (
        ["--data", str(tmp_path / "nolabels.npz"), "--weights", "int8"],
        ["--data", str(data), "--weights", "int8", "--json", str(data / "x.json")],
    ):
        r = _cli("accuracy", model, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["cat", "ath-relu", "ath-linear"])
def test_seed_cases_accuracy_and_bitwidth(case: str) -> None:
    """The seed's own models on their own data: accuracy under fixed-point weights, and the
    certified bits with the empirical ones beside them."""
    from quantcert.analyses.precision.bitwidth import bitwidth, family
    from quantcert.analyses.precision.targets import parse_target
    from quantcert.cases.builtin import case_info, read_csv

    net = load(case)
    x, y, _ = read_csv(case_info(case))
    gen = np.random.default_rng(0)
    pick = gen.choice(len(x), size=min(300, len(x)), replace=False)
    x, y = x[pick], y[pick].astype(np.int64)
    scheme = Scheme.parse(weights="int6", biases="int6")
    res = accuracy(net, x, y, scheme)
    s = res.summary()
    assert s["certified_accuracy"] <= s["measured_accuracy"] <= 1.0
    q = prepare(net, scheme, x)
    xt = torch.as_tensor(x)
    nominal = q.net.param_tensors()
    t = 0.0  # logit threshold of the sigmoid head at 0.5
    ok = torch.as_tensor(res.status == VERIFIED)
    gen_t = torch.Generator().manual_seed(1)
    for _ in range(20):
        params = {
            k: nominal[k] + (torch.rand(r.shape, generator=gen_t, dtype=DTYPE) * 2 - 1).sign() * r
            for k, r in q.pert.radius.items()
        }
        with torch.no_grad():
            pred = (q.net(xt, params).flatten() >= t).long()
        assert (pred[ok] == torch.as_tensor(y)[ok]).all()
    r = bitwidth(net, x, y, parse_target("accuracy-drop<=1%"), family("int", "per-tensor"),
                 ("weights",), mixed=False)  # fmt: skip
    for layer in r["layers"]:  # type: ignore[union-attr]
        cert, emp = layer["weights"].get("bits"), layer["weights_empirical_bits"]
        assert cert is None or emp is None or cert >= emp
