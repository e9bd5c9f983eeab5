"""The witness as an ONNX model: written atomically, replayed in onnxruntime, equal to the
graph with the same initializers changed in memory; cast changes reported; bad names refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS, PACKAGED
from quantcert.errors import InputError
from quantcert.report.witness_onnx import input_path, replay_witness, write_witness_model


def _mlp(dtype: type = np.float32, shape: list[int | str] | None = None) -> onnx.ModelProto:
    """x (1, 3) -> Gemm (4) -> Relu -> Gemm (2); rank-1 x uses MatMul + Add instead."""
    rng = np.random.default_rng(0)
    elem = TensorProto.FLOAT if dtype is np.float32 else TensorProto.DOUBLE
    shape = [1, 3] if shape is None else shape
    arrays = {
        "w1": rng.normal(size=(3, 4)),
        "b1": rng.normal(size=4),
        "w2": rng.normal(size=(4, 2)),
        "b2": rng.normal(size=2),
    }
    inits = [numpy_helper.from_array(a.astype(dtype), k) for k, a in arrays.items()]
    if len(shape) == 1:
        nodes = [
            helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
            helper.make_node("Add", ["m1", "b1"], ["h1"], name="add1"),
        ]
    else:
        nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1")]
    nodes += [
        helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
        helper.make_node("Add", ["m2", "b2"], ["y"], name="add2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", elem, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def _in_memory(model: onnx.ModelProto, values: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """onnxruntime on a copy of ``model`` whose initializers are replaced by hand."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in copy.graph.initializer:
        if t.name in values:
            dtype = numpy_helper.to_array(t).dtype
            t.CopyFrom(numpy_helper.from_array(values[t.name].astype(dtype), t.name))
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def _perturbed(model: onnx.ModelProto, names: list[str], delta: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        n: inits[n].astype(np.float64) + delta * rng.choice([-1.0, 1.0], inits[n].shape)
        for n in names
    }


def test_replay_equals_the_graph_changed_in_memory(tmp_path: Path) -> None:
    model = _mlp()
    values = _perturbed(model, ["w1", "b2"], 0.1)
    x = np.array([0.5, -0.25, 1.0])
    files = write_witness_model(model, values, x, tmp_path / "w.onnx")
    replayed = replay_witness(files.model)
    assert replayed.shape == (1, 2)
    expected = _in_memory(model, values, x.astype(np.float32)[None])
    np.testing.assert_array_equal(replayed, expected)
    nominal = _in_memory(model, {}, x.astype(np.float32)[None])
    assert np.abs(replayed - nominal).max() > 0.05  # the perturbation is really there
    assert files.input == input_path(files.model) == tmp_path / "w.input.npz"
    with np.load(files.input) as data:
        assert data.files == ["x"]
        assert data["x"].shape == (1, 3) and data["x"].dtype == np.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.input.npz", "w.onnx"]


@pytest.mark.parametrize(
    "path", [MODELS / "test_small.onnx", PACKAGED / "mnistfc" / "mnist-net_256x2.onnx"]
)
def test_bundled_model_with_two_initializers_perturbed(path: Path, tmp_path: Path) -> None:
    model = onnx.load(str(path))
    floats = [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT]
    names = [floats[0], floats[-1]]
    values = _perturbed(model, names, 0.01)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(2).random(shape).astype(np.float32)
    files = write_witness_model(model, values, x, tmp_path / f"{path.stem}.witness.onnx")
    np.testing.assert_array_equal(replay_witness(files.model), _in_memory(model, values, x))
    assert np.load(files.input)[inp.name].shape == tuple(shape)
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    written = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(files.model)).graph.initializer
    }
    assert written.keys() == original.keys()
    for name in original:
        if name not in names:
            np.testing.assert_array_equal(written[name], original[name])


def test_cast_change_is_reported(tmp_path: Path) -> None:
    model = _mlp()
    w1 = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    exact = {"w1": w1}  # float32 values: representable
    moved = {"w1": w1 + 1e-10}  # below float32 resolution near these magnitudes

    def write(values: dict[str, np.ndarray], x: np.ndarray, out: Path) -> tuple[float, float]:
        files = write_witness_model(model, values, x, out)
        return files.param_cast_change, files.input_cast_change

    assert write(exact, np.array([0.5, 0.25, 1.0]), tmp_path / "a.onnx") == (0.0, 0.0)
    p_change, x_change = write(moved, np.array([0.1, 0.25, 1.0]), tmp_path / "b.onnx")
    assert 0.0 < p_change <= 1e-7
    assert x_change == abs(float(np.float32(0.1)) - 0.1)


def test_float64_model_and_unbatched_input(tmp_path: Path) -> None:
    model = _mlp(np.float64, [3])
    values = _perturbed(model, ["w1", "b1"], 1e-9)
    x = np.array([0.1, 0.2, 0.3])
    files = write_witness_model(model, values, x, tmp_path / "w64.onnx")
    assert files.exact
    assert np.load(files.input)["x"].shape == (3,)
    np.testing.assert_array_equal(replay_witness(files.model), _in_memory(model, values, x))


def test_constant_node_values_can_be_replaced(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["wc"], name="c", value=w),
        helper.make_node("MatMul", ["x", "wc"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    files = write_witness_model(model, {"wc": 2 * np.eye(3)}, np.ones(3), tmp_path / "c.onnx")
    np.testing.assert_array_equal(replay_witness(files.model), [[2.0, 2.0, 2.0]])


def test_bad_names_shapes_and_inputs_are_refused(tmp_path: Path) -> None:
    model = _mlp()
    out = tmp_path / "bad.onnx"
    with pytest.raises(InputError, match="'nope' is not an initializer"):
        write_witness_model(model, {"nope": np.zeros(3)}, np.zeros(3), out)
    with pytest.raises(InputError, match=r"shape \(4,\), the model's \(3, 4\)"):
        write_witness_model(model, {"w1": np.zeros(4)}, np.zeros(3), out)
    with pytest.raises(InputError, match="4 values, the model takes 3"):
        write_witness_model(model, {}, np.zeros(4), out)
    with pytest.raises(InputError, match="overflows float32"):
        write_witness_model(model, {"b1": np.full(4, 1e300)}, np.zeros(3), out)
    assert not list(tmp_path.iterdir())  # nothing written by a refused call


def test_rewrite_replaces_atomically_and_leaves_no_temporary(tmp_path: Path) -> None:
    model = _mlp()
    out = tmp_path / "w.onnx"
    write_witness_model(model, {}, np.zeros(3), out)
    first = replay_witness(out)
    write_witness_model(model, {"b2": np.array([10.0, -10.0])}, np.zeros(3), out)
    second = replay_witness(out)
    assert not np.array_equal(first, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.input.npz", "w.onnx"]
