"""ONNX intake: outputs match onnxruntime (the reference runtime) on random inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import MODELS, PACKAGED, SHARED
from quantcert import load
from quantcert.errors import InputError

SHIPPED = sorted(MODELS.glob("*.onnx")) + sorted(PACKAGED.glob("**/*.onnx"))


def _compare(
    path: Path, lo: np.ndarray | None = None, hi: np.ndarray | None = None, n: int = 8
) -> float:
    net = load(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    feed_shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    rng = np.random.default_rng(0)
    size = int(np.prod(net.input_shape))
    lo = np.zeros(size) if lo is None else lo
    hi = np.ones(size) if hi is None else hi
    worst = 0.0
    for _ in range(n):
        x = (lo + (hi - lo) * rng.random(size)).astype(np.float32)
        ref = sess.run(None, {inp.name: x.reshape(feed_shape)})[0].ravel()
        ours = net(torch.from_numpy(x.astype(np.float64)).reshape(1, *net.input_shape))
        diff = np.abs(ours.detach().numpy().ravel() - ref).max()
        worst = max(worst, float(diff / max(np.abs(ref).max(), 1e-6)))
    return worst


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_models_match_onnxruntime(path: Path) -> None:
    assert _compare(path) < 1e-5


def _vnnlib_box(onnx_path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The input box of the first VNN-LIB spec listed for this network in its benchmark's
    instances CSV (next to the network or one folder up), if any."""
    from quantcert.intake.vnnlib import load_vnnlib

    for folder in (onnx_path.parent, onnx_path.parents[1]):
        for csv in folder.glob("*instances.csv"):
            for line in csv.read_text().splitlines():
                parts = line.split(",")
                if len(parts) >= 2 and Path(parts[0]).name == onnx_path.name:
                    spec = load_vnnlib(csv.parent / parts[1])
                    return spec.lower, spec.upper
    return None


ALL = sorted((SHARED / "models" / "vnncomp2021").glob("**/*.onnx")) if SHARED.exists() else []


@pytest.mark.skipif(not ALL, reason="shared/ models not present beside the repository")
def test_every_vnncomp_network_matches_onnxruntime_in_its_box() -> None:
    worst = {}
    for path in ALL:
        box = _vnnlib_box(path)
        lo, hi = box if box is not None else (None, None)
        worst[path.name] = _compare(path, lo, hi, n=3)
    bad = {k: v for k, v in worst.items() if v >= 1e-5}
    assert not bad, bad


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Cos", ["x"], ["y"], name="weird")
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
    )
    path = tmp_path / "cos.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(InputError, match=r"Cos.*weird"):
        load(path)


def test_nan_weights_rejected(tmp_path: Path) -> None:
    w = onnx.numpy_helper.from_array(np.array([[np.nan, 1.0]], dtype=np.float32), "w")
    node = onnx.helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1])],
        [w],
    )
    path = tmp_path / "nan.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(InputError, match="NaN"):
        load(path)


def test_garbage_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a model at all")
    with pytest.raises(InputError, match="not a readable ONNX"):
        load(path)


def test_batchnorm_folds_into_conv(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "w": rng.normal(size=(4, 2, 3, 3)),
        "b": rng.normal(size=4),
        "g": rng.uniform(0.5, 2, 4),
        "be": rng.normal(size=4),
        "m": rng.normal(size=4),
        "v": rng.uniform(0.5, 2, 4),
    }
    inits = [onnx.numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()]
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        onnx.helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["y"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 5, 5])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 5, 5])],
        inits,
    )
    path = tmp_path / "bn.onnx"
    onnx.save(
        onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), str(path)
    )
    net = load(path)
    assert len(net) == 2  # kept: its four tensors are parameters of the file
    assert {s.initializer for s in net.sources.values()} == {"w", "b", "g", "be", "m", "v"}
    assert len(load(path, perturb="folded")) == 1
    assert _compare(path) < 1e-5
