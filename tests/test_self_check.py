"""The load-time self-check: every bundled network agrees with onnxruntime, a wrong IR is
refused with the largest difference and the output index, and missing onnxruntime is NaN."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS, PACKAGED
from quantcert.errors import InputError
from quantcert.intake.onnx_model import from_onnx
from quantcert.intake.self_check import as_float64, check_against_onnxruntime, input_layout
from quantcert.network import INPUT, Network, Node
from quantcert.ops import DTYPE, Affine, Conv, Identity, LeakyReLU, Scale

SHIPPED = sorted(MODELS.glob("*.onnx")) + sorted(PACKAGED.glob("**/*.onnx"))


def _load(path: Path) -> Network:
    """``from_onnx`` without its own self-check."""
    return from_onnx(path, self_check=False)


def _save(model: onnx.ModelProto, tmp_path: Path, name: str = "m") -> Path:
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _model(
    nodes: list[onnx.NodeProto],
    shape: list[int | str],
    inits: list[onnx.TensorProto],
    elem: int = TensorProto.FLOAT,
    domain: str | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", elem, None)],
        inits,
    )
    opsets = [helper.make_opsetid("", 13)]
    if domain is not None:
        opsets.append(helper.make_opsetid(domain, 1))
        return helper.make_model(graph, opset_imports=opsets, ir_version=8)
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    return onnx.shape_inference.infer_shapes(model)  # fills the output's shape


def _gemm(shape: list[int | str], dtype: type = np.float32) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    elem = TensorProto.FLOAT if dtype is np.float32 else TensorProto.DOUBLE
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, 4)).astype(dtype), "w"),
        numpy_helper.from_array(rng.normal(size=3).astype(dtype), "b"),
    ]
    if len(shape) == 1:  # an unbatched vector: MatMul then Add
        nodes = [
            helper.make_node("MatMul", ["w", "x"], ["h"], name="mm"),
            helper.make_node("Add", ["h", "b"], ["y"], name="add"),
        ]
    else:
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)]
    return _model(nodes, shape, inits, elem)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_bundled_network_passes(path: Path) -> None:
    net = _load(path)
    diff = check_against_onnxruntime(onnx.load(str(path)), net)
    assert 0.0 <= diff < 1e-4


@pytest.mark.parametrize("path", SHIPPED[:4] + SHIPPED[-2:], ids=lambda p: p.name)
def test_a_changed_parameter_is_refused_with_difference_and_index(path: Path) -> None:
    """The last layer's bias (its weight when it has none) moved by 1 in one entry: the
    size of mistake a wrong broadcast makes."""
    net = _load(path)
    param = list(net.param_tensors().values())[-1]
    with torch.no_grad():
        param.view(-1)[-1] += 1.0
    with pytest.raises(InputError, match=r"differs from onnxruntime by .* output index \d+"):
        check_against_onnxruntime(onnx.load(str(path)), net, samples=8)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [([1, 4], np.float32), (["N", 4], np.float32), ([4], np.float32), ([1, 4], np.float64)],
    ids=["batch1", "symbolic", "rank1", "float64"],
)
def test_batch_layouts_and_dtypes(tmp_path: Path, shape: list[int | str], dtype: type) -> None:
    model = _gemm(shape, dtype)
    layout = input_layout(model)
    assert layout.batched == (len(shape) == 2)
    assert layout.sample == (4,)
    assert layout.dtype == dtype
    net = _load(_save(model, tmp_path))
    assert check_against_onnxruntime(model, net) < 1e-12  # float64 on both sides


def test_float64_copy_computes_the_stored_values_exactly() -> None:
    model = _gemm([1, 4])
    wide = as_float64(model)
    assert wide.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    for a, b in zip(model.graph.initializer, wide.graph.initializer, strict=True):
        arr, warr = numpy_helper.to_array(a), numpy_helper.to_array(b)
        assert warr.dtype == np.float64
        np.testing.assert_array_equal(arr.astype(np.float64), warr)
    onnx.checker.check_model(wide, full_check=True)


def _relu_model() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [1, 3], [])


def _identity_net() -> Network:
    return Network([Node("id", Identity(), (INPUT,))], (3,))


def test_the_domain_is_where_it_samples() -> None:
    """An identity IR for a ReLU graph agrees on the positive orthant only."""
    model, net = _relu_model(), _identity_net()
    assert check_against_onnxruntime(model, net, np.zeros(3), np.ones(3)) == 0.0
    with pytest.raises(InputError, match="output index"):
        check_against_onnxruntime(model, net, np.full(3, -1.0), np.full(3, -0.5))
    with pytest.raises(InputError, match="output index"):
        check_against_onnxruntime(model, net)  # the default box has both signs


def test_float32_rounding_is_tolerated_and_a_small_error_is_not() -> None:
    """A float32 LeakyRelu (no float64 kernel in onnxruntime) against the exact IR."""
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("LeakyRelu", ["h"], ["y"], name="lr", alpha=0.1),
        ],
        [1, 3],
        [numpy_helper.from_array(np.full((3, 2), 0.1, np.float32), "w")],
    )
    w = torch.from_numpy(np.full((2, 3), 0.1, np.float32).astype(np.float64))
    net = Network([Node("mm", Affine(w), (INPUT,)), Node("lr", LeakyReLU(0.1), ("mm",))], (3,))
    diff = check_against_onnxruntime(model, net)
    assert 0.0 < diff < 1e-6  # float32 rounding is measured, not hidden
    with torch.no_grad():
        net.param_tensors()["mm.weight"][0, 0] += 0.01  # changes an output by up to 1e-2
    with pytest.raises(InputError, match=r"tolerance 0\.0001"):
        check_against_onnxruntime(model, net)


def test_without_onnxruntime_it_is_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    assert math.isnan(check_against_onnxruntime(_relu_model(), _identity_net()))


def test_onnxruntime_failure_is_one_line() -> None:
    node = helper.make_node("Frobnicate", ["x"], ["y"], name="f", domain="com.example")
    model = _model([node], [1, 3], [], domain="com.example")
    with pytest.raises(InputError, match="onnxruntime cannot load") as info:
        check_against_onnxruntime(model, _identity_net())
    assert "\n" not in str(info.value)


def test_output_size_and_input_shape_mismatches_are_refused() -> None:
    model = _relu_model()
    wide = Network([Node("fc", Affine(torch.ones(4, 3, dtype=DTYPE)), (INPUT,))], (3,))
    with pytest.raises(InputError, match="4 outputs, onnxruntime 3"):
        check_against_onnxruntime(model, wide)
    other = Network([Node("id", Identity(), (INPUT,))], (5,))
    with pytest.raises(InputError, match="shape"):
        check_against_onnxruntime(model, other)


def test_issue_13_conv_plus_channel_sized_constant_fused_as_bias_is_refused() -> None:
    """Issue 13, violation 1: a Conv 1x1 (4 channels) + Add of a (4,) constant broadcasts the
    constant along W; an IR that made it a per-channel bias computes another function."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 1, 1, 1)).astype(np.float32)
    c = rng.normal(size=4).astype(np.float32)
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["h"], name="conv"),
            helper.make_node("Add", ["h", "c"], ["y"], name="add"),
        ],
        [1, 1, 4, 4],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")],
    )
    weight = torch.from_numpy(w.astype(np.float64))
    wrong = Network(
        [Node("conv", Conv(weight, torch.from_numpy(c.astype(np.float64))), (INPUT,))], (1, 4, 4)
    )
    with pytest.raises(InputError, match="output index"):
        check_against_onnxruntime(model, wrong)
    shift = torch.from_numpy(c.astype(np.float64))  # broadcast along the last axis, as ONNX
    right = Network(
        [
            Node("conv", Conv(weight, None), (INPUT,)),
            Node("add", Scale(torch.tensor(1.0, dtype=DTYPE), shift), ("conv",)),
        ],
        (1, 4, 4),
    )
    assert check_against_onnxruntime(model, right) < 1e-4


def test_domain_bounds_in_the_input_shape_or_scalars() -> None:
    model, net = _relu_model(), _identity_net()
    assert check_against_onnxruntime(model, net, np.zeros((1, 3)), np.ones((1, 3))) == 0.0
    assert check_against_onnxruntime(model, net, np.float64(0.0), np.float64(2.0)) == 0.0
    with pytest.raises(InputError, match="2 bounds, the input 3"):
        check_against_onnxruntime(model, net, np.zeros(2), np.ones(2))
