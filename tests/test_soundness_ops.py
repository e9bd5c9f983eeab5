"""Ops and queries at the edges of their contract: bias-free layers under parameter splits
(batched weights), LeakyReLU with any slope (convex below 1, concave above), never beaten by
sampled inputs and parameters; and kappa on one-output networks (an answer, never a crash)."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import quantcert.analyses.epsilon as epsilon_module
from conftest import sampled_max
from quantcert.analyses.epsilon import Budget, epsilon
from quantcert.engines import perturbation
from quantcert.engines.bounds import bound_spec
from quantcert.engines.param_split import splits_parameters
from quantcert.engines.relu_split import SplitOutcome
from quantcert.network import INPUT, Network, Node
from quantcert.ops import DTYPE, Affine, Box, Conv, LeakyReLU, ReLU, Reshape

#: ReLU splits skipped: no tightening (sound), and not a timeout, so parameter splits follow.
_NO_SPLIT = SplitOutcome(float("inf"), 0, 0, "bounded")


def _rnd(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=DTYPE)


def bias_free_mlp(seed: int) -> Network:
    """2-4-4-2, ReLU, no bias anywhere (ONNX MatMul without Add)."""
    gen = torch.Generator().manual_seed(seed)
    nodes = [
        Node("fc0", Affine(_rnd(gen, 4, 2), None), (INPUT,)),
        Node("a0", ReLU(), ("fc0",)),
        Node("fc1", Affine(_rnd(gen, 4, 4) / 2, None), ("a0",)),
        Node("a1", ReLU(), ("fc1",)),
        Node("fc2", Affine(_rnd(gen, 2, 4) / 2, None), ("a1",)),
    ]
    return Network(nodes, (2,))


def bias_free_conv(seed: int) -> Network:
    """conv 2x2 (no bias) -> relu -> conv (no bias) -> flatten -> affine (no bias)."""
    gen = torch.Generator().manual_seed(seed)
    nodes = [
        Node("c0", Conv(_rnd(gen, 2, 1, 2, 2) / 2, None), (INPUT,)),
        Node("r0", ReLU(), ("c0",)),
        Node("c1", Conv(_rnd(gen, 2, 2, 2, 2) / 2, None), ("r0",)),
        Node("r1", ReLU(), ("c1",)),
        Node("flat", Reshape((2,)), ("r1",)),
        Node("fc", Affine(_rnd(gen, 1, 2), None), ("flat",)),
    ]
    return Network(nodes, (1, 3, 3))


def _check_epsilon(net: Network, box: Box, delta: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The query runs its parameter splits (the input and ReLU splits before them are cut
    short), and sampling never beats it."""
    pert = perturbation.absolute(net, delta)
    assert splits_parameters(pert)
    joint_calls = []
    real_joint, real_inputs = epsilon_module._joint, epsilon_module._split_inputs

    def joint(q: Any, start: Any) -> Any:
        joint_calls.append(1)
        return real_joint(q, start)

    def few_inputs(q: Any, start: Any, max_boxes: int) -> Any:
        return real_inputs(q, start, max_boxes=16)

    with monkeypatch.context() as m:
        m.setattr(epsilon_module, "_joint", joint)
        m.setattr(epsilon_module, "_split_inputs", few_inputs)
        m.setattr(epsilon_module, "_split_relus", lambda q, lower: _NO_SPLIT)
        res = epsilon(net, pert, box, Budget(gap=1e-9, timeout=1.0)).overall
    assert joint_calls
    assert res.lower <= res.upper
    assert float(sampled_max(net, delta, box, n=4000).max()) <= res.upper


@pytest.mark.parametrize("local", [True, False])
def test_bias_free_mlp_under_parameter_splits(local: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    net = bias_free_mlp(0)
    x = torch.tensor([[0.5, -0.3]], dtype=DTYPE)
    one = torch.ones((1, 2), dtype=DTYPE)
    _check_epsilon(net, Box(x, x) if local else Box(-one, one), 0.3, monkeypatch)


@pytest.mark.parametrize("local", [True, False])
def test_bias_free_conv_under_parameter_splits(
    local: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = bias_free_conv(1)
    x = torch.linspace(-1, 1, 9, dtype=DTYPE).reshape(1, 1, 3, 3)
    one = torch.ones((1, 1, 3, 3), dtype=DTYPE)
    _check_epsilon(net, Box(x, x) if local else Box(-one, one), 0.2, monkeypatch)


def test_bias_free_ops_take_batched_weights() -> None:
    """A batched weight (B, out, in) gives a zero bias (B, out), in every transfer."""
    gen = torch.Generator().manual_seed(3)
    w = _rnd(gen, 5, 3, 2)
    op = Affine(w[0], None).with_params({"weight": w})
    assert isinstance(op, Affine)
    assert op.bias.shape == (5, 3)
    x = _rnd(gen, 5, 2)
    assert torch.allclose(op.forward([x], op.params), torch.einsum("boi,bi->bo", w, x))
    conv = Conv(_rnd(gen, 2, 1, 2, 2), None).with_params({"weight": _rnd(gen, 5, 2, 1, 2, 2)})
    assert isinstance(conv, Conv)
    assert conv.bias.shape == (5, 2)
    z = _rnd(gen, 5, 1, 3, 3)
    box = conv.interval([Box(z - 0.1, z + 0.1)], {})
    assert box.lo.shape == (5, 2, 2, 2)


SLOPES = st.one_of(st.sampled_from([-2.0, -1.0, 0.0, 0.01, 1.0, 1.5, 3.0]), st.floats(-2.0, 3.0))


def _leaky_samples(box: Box, n: int, gen: torch.Generator) -> torch.Tensor:
    """Points of the box: random ones, both end points, and the kink where it is inside."""
    u = torch.rand((n, *box.lo.shape[1:]), generator=gen, dtype=DTYPE)
    inside = box.lo + (box.hi - box.lo) * u
    kink = torch.clamp(torch.zeros_like(box.lo), box.lo, box.hi)
    return torch.cat([inside, box.lo, box.hi, kink])


@settings(max_examples=60, deadline=None)
@given(slope=SLOPES, seed=st.integers(0, 10_000), width=st.floats(0.0, 3.0))
def test_leaky_relu_any_slope_is_sound(slope: float, seed: int, width: float) -> None:
    """Interval and backward transfer (CROWN's free line, and any alpha-CROWN slope) hold at
    sampled inputs for slopes in [-2, 3]: convex, concave, non-monotone and the identity."""
    gen = torch.Generator().manual_seed(seed)
    op = LeakyReLU(slope)
    center = 2 * torch.randn((1, 40), generator=gen, dtype=DTYPE)
    box = Box(center - width * torch.rand((1, 40), generator=gen, dtype=DTYPE), center + width)
    z = _leaky_samples(box, 200, gen)
    out = op.forward([z], {})
    ibox = op.interval([box], {})
    assert bool((out >= ibox.lo).all()) and bool((out <= ibox.hi).all())
    A = torch.randn((6, 1, 40), generator=gen, dtype=DTYPE)
    free = 4 * torch.randn((6, 1, 40), generator=gen, dtype=DTYPE) - 1
    for relaxed in (op, op.with_lower_slope(free)):
        (a_in,), const, _ = relaxed.backward(A, [box], {})
        lhs = (A * out.unsqueeze(0)).sum(-1)  # (6, N)
        rhs = (a_in * z.unsqueeze(0)).sum(-1) + const
        assert bool((lhs <= rhs + 1e-12 * (1 + rhs.abs())).all()), float((lhs - rhs).max())


def _leaky_mlp(slope: float, seed: int) -> Network:
    gen = torch.Generator().manual_seed(seed)
    nodes, prev = [], INPUT
    sizes = [2, 6, 6, 2]
    for i in range(3):
        w = _rnd(gen, sizes[i + 1], sizes[i]) / sizes[i] ** 0.5
        nodes.append(Node(f"fc{i}", Affine(w, 0.5 * _rnd(gen, sizes[i + 1])), (prev,)))
        prev = f"fc{i}"
        if i < 2:
            nodes.append(Node(f"act{i}", LeakyReLU(slope), (prev,)))
            prev = f"act{i}"
    return Network(nodes, (2,))


@settings(max_examples=12, deadline=None)
@given(slope=st.sampled_from([-1.5, -0.5, 0.3, 1.0, 2.0, 3.0]), seed=st.integers(0, 1000))
def test_leaky_relu_networks_bound_soundly(slope: float, seed: int) -> None:
    """Whole networks: IBP, CROWN and alpha-CROWN (which moves the free slopes) bound every
    sampled output of a LeakyReLU(slope) MLP over an input box."""
    net = _leaky_mlp(slope, seed)
    gen = torch.Generator().manual_seed(seed)
    box = Box(-torch.ones((1, 2), dtype=DTYPE), torch.ones((1, 2), dtype=DTYPE))
    x = 2 * torch.rand((4000, 2), generator=gen, dtype=DTYPE) - 1
    with torch.no_grad():
        out = net(x)
    spec = torch.cat([torch.eye(2, dtype=DTYPE), -torch.eye(2, dtype=DTYPE)])
    sampled = torch.cat([out, -out], 1).max(0).values
    for method in ("ibp", "crown", "alpha"):
        upper, _ = bound_spec(net, box, {}, spec, method)  # type: ignore[arg-type]
        assert bool((sampled <= upper[0]).all()), (method, sampled, upper)


def test_onnx_leaky_relu_alpha_above_one_loads_and_bounds(tmp_path: Any) -> None:
    """ONNX LeakyRelu with alpha 2 (valid ONNX): loads, and a local epsilon query answers
    soundly."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from quantcert.intake import load

    gen = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(gen.standard_normal((2, 3)), "W1"),
        numpy_helper.from_array(gen.standard_normal(3), "B1"),
        numpy_helper.from_array(gen.standard_normal((3, 1)), "W2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"]),
            helper.make_node("Add", ["h", "B1"], ["hb"]),
            helper.make_node("LeakyRelu", ["hb"], ["a"], alpha=2.0),
            helper.make_node("MatMul", ["a", "W2"], ["y"]),
        ],
        "leaky2",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 1])],
        inits,
    )
    path = tmp_path / "leaky2.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    net = load(path)
    box = Box(-torch.ones((1, 2), dtype=DTYPE), torch.ones((1, 2), dtype=DTYPE))
    res = epsilon(net, perturbation.absolute(net, 0.05), box, Budget(timeout=1.0)).overall
    assert float(sampled_max(net, 0.05, box, n=4000).max()) <= res.upper


def _one_output_onnx(path: Any) -> None:
    """2-8-1 tanh network with a raw score output (no head), float32 as exported."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    gen = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(gen.standard_normal((8, 2)).astype(np.float32), "W1"),
        numpy_helper.from_array(gen.standard_normal(8).astype(np.float32), "B1"),
        numpy_helper.from_array(gen.standard_normal((1, 8)).astype(np.float32), "W2"),
        numpy_helper.from_array(np.array([0.1], np.float32), "B2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1),
            helper.make_node("Tanh", ["h"], ["a"]),
            helper.make_node("Gemm", ["a", "W2", "B2"], ["y"], transB=1),
        ],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


KAPPA_ARGS = [
    ["--method", "deepfool"],
    ["--method", "random"],
    ["--method", "analytic"],
    ["--method", "certified"],
    ["--method", "certified", "--radius", "0.3"],
]


@pytest.mark.parametrize("model", ["cat", "raw"])
def test_kappa_on_one_output_networks_answers(model: str, tmp_path: Any) -> None:
    """One output (the cat case's sigmoid head; a raw score): every kappa method answers
    (exit 0, JSON), DeepFool finds the boundary at logit 0, and measured <= certified."""
    import json

    import numpy as np
    from typer.testing import CliRunner

    from quantcert.cli import app

    path = "cat"
    if model == "raw":
        path = str(tmp_path / "one.onnx")
        _one_output_onnx(path)
    data = tmp_path / "images.npz"
    gen = np.random.default_rng(0)
    np.savez(data, images=gen.uniform(-1, 1, (6, 2)), labels=np.array([0, 1] * 3))
    for args in KAPPA_ARGS:
        res = CliRunner().invoke(app, ["kappa", path, "--data", str(data), *args, "--json", "-"])
        assert res.exit_code == 0, (args, res.output, res.exception)
        doc = json.loads(res.stdout[res.stdout.index("{") :])
        if args[1] != "analytic":
            assert doc["flipped"] > 0
        if args[1] == "certified":
            assert doc["lower"] <= doc["upper"]
