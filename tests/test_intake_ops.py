"""The ops that ONNX intake gained for exported CNNs (issue 11) are sound: sampled inputs
(and parameters within their radii) never leave the interval bounds, and never beat the
linear (CROWN) upper or lower bound of the backward transfer; the intake itself turns
exporter patterns (constant folding, Clip, Concat, pooling with ceil_mode, several outputs)
into networks that match onnxruntime."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from onnx import TensorProto, helper, numpy_helper

from quantcert.errors import InputError
from quantcert.intake.onnx_model import from_onnx
from quantcert.ops import (
    DTYPE,
    Box,
    Clip,
    Concat,
    Conv,
    Op,
    PaddedAvgPool,
    PaddedMaxPool,
    Reduce,
    Slice,
    Transpose,
)

Maker = Callable[[torch.Generator], tuple[Op, list[tuple[int, ...]]]]


def _rnd(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=DTYPE)


def _divisor(gen: torch.Generator) -> tuple[Op, list[tuple[int, ...]]]:
    # 2x2 windows, stride 2, on 5x5 padded (1, 0, 2, 1): 4x3 outputs, any positive divisor.
    div = torch.randint(1, 5, (4, 3), generator=gen).to(DTYPE)
    return PaddedAvgPool((2, 2), (2, 2), (1, 0, 2, 1), div), [(2, 5, 5)]


def _depthwise(gen: torch.Generator) -> tuple[Op, list[tuple[int, ...]]]:
    return Conv(_rnd(gen, 3, 1, 3, 3), _rnd(gen, 3), (1, 1), (1, 1), groups=3), [(3, 5, 5)]


def _grouped(gen: torch.Generator) -> tuple[Op, list[tuple[int, ...]]]:
    w = _rnd(gen, 4, 2, 2, 2)
    return Conv(w, _rnd(gen, 4), (2, 1), (0, 1), (1, 2), groups=2), [(4, 5, 6)]


MAKERS: dict[str, Maker] = {
    "relu6": lambda g: (Clip(0.0, 6.0), [(8,)]),
    "clip-narrow": lambda g: (Clip(-0.3, 0.2), [(8,)]),
    "clip-point": lambda g: (Clip(0.5, 0.5), [(8,)]),
    "clip-low-only": lambda g: (Clip(-0.5, math.inf), [(8,)]),
    "clip-high-only": lambda g: (Clip(-math.inf, 0.7), [(8,)]),
    "transpose": lambda g: (Transpose((2, 0, 1)), [(2, 3, 4)]),
    "slice": lambda g: (Slice(((1, 3, 1), (0, 4, 2))), [(3, 4, 2)]),
    "reduce-mean": lambda g: (Reduce((1, 2), True, True), [(3, 4, 5)]),
    "reduce-sum": lambda g: (Reduce((0,), False, False), [(3, 4)]),
    "reduce-mean-drop": lambda g: (Reduce((0, 2), False, True), [(3, 2, 5)]),
    "concat": lambda g: (Concat(0), [(2, 3), (1, 3), (4, 3)]),
    "concat-last": lambda g: (Concat(2), [(2, 3, 1), (2, 3, 2)]),
    "maxpool-padded": lambda g: (PaddedMaxPool((3, 3), (2, 2), (1, 0, 2, 1)), [(2, 6, 5)]),
    "maxpool-dilated": lambda g: (PaddedMaxPool((2, 2), (1, 2), (0, 1, 1, 0), (2, 1)), [(2, 5, 5)]),
    "avgpool-padded": _divisor,
    "conv-depthwise": _depthwise,
    "conv-grouped": _grouped,
}


def _points(lo: torch.Tensor, hi: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    z = lo + (hi - lo) * torch.rand((n, *lo.shape[1:]), generator=gen, dtype=DTYPE)
    corner = torch.rand((n // 3, *lo.shape[1:]), generator=gen) < 0.5
    z[: n // 3] = torch.where(corner, lo, hi)
    return z


def _params(op: Op, radius: dict[str, torch.Tensor], n: int, gen: torch.Generator) -> dict:  # type: ignore[type-arg]
    out = {}
    for name, value in op.params.items():
        r = radius[name]
        u = torch.rand((n, *value.shape), generator=gen, dtype=DTYPE) * 2 - 1
        ends = torch.randint(0, 2, (n, *value.shape), generator=gen).to(DTYPE) * 2 - 1
        out[name] = value + r * torch.where(torch.rand(u.shape, generator=gen) < 0.5, u, ends)
    return out


@pytest.mark.parametrize("kind", sorted(MAKERS))
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    width=st.sampled_from([0.0, 1e-3, 0.1, 0.5, 2.0, 5.0]),
    shift=st.sampled_from([0.0, 0.5, -0.5, 3.0, 6.0]),
    delta=st.sampled_from([0.0, 0.01, 0.2]),
)
def test_transfers_are_sound(
    kind: str, seed: int, width: float, shift: float, delta: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    op, shapes = MAKERS[kind](gen)
    boxes = []
    for shape in shapes:
        centre = _rnd(gen, 1, *shape) * 2 + shift
        w = width * torch.rand((1, *shape), generator=gen, dtype=DTYPE)
        boxes.append(Box(centre - w, centre + w))
    radius = {
        k: delta * torch.rand(v.shape, generator=gen, dtype=DTYPE) for k, v in op.params.items()
    }
    n = 96
    zs = [_points(b.lo, b.hi, n, gen) for b in boxes]
    out = op.forward(zs, _params(op, radius, n, gen))
    ibox = op.interval(boxes, radius)
    assert bool((out >= ibox.lo).all()), float((ibox.lo - out).max())
    assert bool((out <= ibox.hi).all()), float((out - ibox.hi).max())
    A = torch.randn((6, 1, *out.shape[1:]), generator=gen, dtype=DTYPE)
    for sign in (1.0, -1.0):  # upper bounds of A.out, and of -A.out (the lower bounds)
        res = op.backward(sign * A, boxes, radius)
        assert res is not None
        a_ins, const, _ = res
        lhs = (sign * A * out.unsqueeze(0)).flatten(2).sum(-1)
        rhs = const + sum(
            (a * z.unsqueeze(0)).flatten(2).sum(-1) for a, z in zip(a_ins, zs, strict=True)
        )
        # Only the float64 rounding of these two sums themselves is forgiven.
        scale = (A.abs() * out.abs().unsqueeze(0)).flatten(2).sum(-1) + const.abs()
        tol = 1e-12 * (1 + scale)
        assert bool((lhs <= rhs + tol).all()), float((lhs - rhs).max())


@pytest.mark.parametrize("kind", ["conv-depthwise", "conv-grouped"])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 100_000), width=st.floats(0.0, 2.0))
def test_batched_parameter_boxes_of_grouped_convs_are_sound(
    kind: str, seed: int, width: float
) -> None:
    """One parameter box per batch element (branch and bound over parameters): the batched
    transfers equal the per-element ones, and sampled parameters stay inside them."""
    gen = torch.Generator().manual_seed(seed)
    op, (shape,) = MAKERS[kind](gen)
    b = 3
    centres = {k: v + 0.2 * _rnd(gen, b, *v.shape) for k, v in op.params.items()}
    radii = {
        k: 0.3 * torch.rand((b, *v.shape), generator=gen, dtype=DTYPE) for k, v in op.params.items()
    }
    moved = op.with_params(centres)
    centre = _rnd(gen, b, *shape)
    box = Box(centre - width, centre + width)
    ibox = moved.interval([box], radii)
    A = _rnd(gen, 4, b, *ibox.lo.shape[1:])
    res = moved.backward(A, [box], radii)
    assert res is not None
    (a_in,), const, _ = res
    for i in range(b):
        one = op.with_params({k: v[i] for k, v in centres.items()})
        r_i = {k: v[i] for k, v in radii.items()}
        box_i = Box(box.lo[i : i + 1], box.hi[i : i + 1])
        ref = one.interval([box_i], r_i)
        torch.testing.assert_close(ibox.lo[i : i + 1], ref.lo)
        torch.testing.assert_close(ibox.hi[i : i + 1], ref.hi)
        ref_b = one.backward(A[:, i : i + 1], [box_i], r_i)
        assert ref_b is not None
        torch.testing.assert_close(a_in[:, i : i + 1], ref_b[0][0])
        torch.testing.assert_close(const[:, i : i + 1], ref_b[1])
        z = _points(box_i.lo, box_i.hi, 64, gen)
        out = one.forward([z], _params(one, r_i, 64, gen))
        assert bool((out >= ref.lo).all()) and bool((out <= ref.hi).all())
        lhs = (A[:, i : i + 1] * out.unsqueeze(0)).flatten(2).sum(-1)
        rhs = (a_in[:, i : i + 1] * z.unsqueeze(0)).flatten(2).sum(-1) + const[:, i : i + 1]
        assert bool((lhs <= rhs + 1e-12 * (1 + rhs.abs())).all())


@settings(max_examples=60, deadline=None)
@given(
    low=st.floats(-3, 3),
    span=st.floats(0, 4),
    lo=st.floats(-8, 8),
    width=st.floats(0, 10),
)
def test_clip_lines_bound_the_function_on_a_dense_grid(
    low: float, span: float, lo: float, width: float
) -> None:
    """Every relaxation case (constant, one kink, both kinks, identity) on one neuron."""
    op = Clip(low, low + span)
    box = Box(torch.tensor([[lo]], dtype=DTYPE), torch.tensor([[lo + width]], dtype=DTYPE))
    up_s, up_c, lo_s, lo_c = op.lines(box)
    z = torch.linspace(lo, lo + width, 1001, dtype=DTYPE).reshape(-1, 1)
    f = op.fn(z)
    assert bool((up_s * z + up_c >= f).all()) and bool((lo_s * z + lo_c <= f).all())
    assert bool((up_s >= 0).all()) and bool((lo_s >= 0).all())


def test_clip_relaxation_is_exact_where_stable() -> None:
    op = Clip(0.0, 6.0)
    box = Box(torch.tensor([[-3.0, 1.0, 7.0]], dtype=DTYPE), torch.tensor([[-1.0, 5.0, 9.0]]))
    up_s, up_c, lo_s, lo_c = op.lines(Box(box.lo, box.hi.to(DTYPE)))
    assert up_s.tolist() == lo_s.tolist() == [[0.0, 1.0, 0.0]]
    assert abs(float(up_c[0, 2]) - 6.0) < 1e-12 and abs(float(lo_c[0, 1])) < 1e-8


def test_clip_refuses_an_empty_interval() -> None:
    with pytest.raises(ValueError):
        Clip(1.0, 0.0)


# ---------------------------------------------------------------------- intake, end to end
class SmallCNN(torch.nn.Module):
    """What torchvision CNNs are made of: conv + batch norm + ReLU6, a depthwise conv, a
    channel concat, max pooling with ceil_mode, adaptive average pooling, flatten, and
    ``x.view(x.size(0), -1)`` (Shape/Gather/Unsqueeze/Concat shape arithmetic)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.c1 = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)
        self.dw = torch.nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.pool = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avg = torch.nn.AvgPool2d(2, 2, ceil_mode=True)
        self.gap = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(6, 2)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.relu6(self.bn(self.c1(x)) * 4)
        h = torch.cat([h, torch.clamp(self.dw(h), -1.0, 1.0)], 1)
        h = self.gap(self.avg(self.pool(h)))
        h = torch.flatten(h, 1)
        return self.fc(h.view(h.size(0), -1))


def _export(model: torch.nn.Module, shape: tuple[int, ...], opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter: still torch's default
        torch.onnx.export(
            model.eval(),
            (torch.randn(*shape),),
            buffer,
            opset_version=opset,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "N"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def _saved(model: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def _ort(model: onnx.ModelProto, x: np.ndarray, output: str | None = None) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None if output is None else [output], {"x": x})[0], np.float64)


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_a_torch_exported_cnn_loads_and_matches_onnxruntime(opset: int, tmp_path: Path) -> None:
    model = _export(SmallCNN(), (1, 2, 10, 10), opset)
    ops = {n.op_type for n in model.graph.node}
    assert {"Clip", "Concat", "Shape", "Gather", "GlobalAveragePool"} <= ops, ops
    kinds = {type(n.op).__name__ for n in from_onnx(_saved(model, tmp_path))}
    assert {"PaddedMaxPool", "PaddedAvgPool", "Clip", "Concat", "Reduce"} <= kinds, kinds
    path = tmp_path / "cnn.onnx"
    onnx.save(model, str(path))
    net = from_onnx(path)  # the self-check against onnxruntime runs here
    rng = np.random.default_rng(opset)
    for _ in range(4):
        x = rng.uniform(-2, 2, (1, 2, 10, 10)).astype(np.float32)
        ours = net(torch.as_tensor(x, dtype=DTYPE)).detach().numpy()
        assert np.abs(ours - _ort(model, x)).max() < 1e-5


def test_the_exported_cnn_bound_holds_against_onnxruntime(tmp_path: Path) -> None:
    """The certified upper bound of the exported CNN is never beaten by onnxruntime running
    the file itself with its initializers moved to random corners of the radius box."""
    from quantcert.analyses.epsilon import Budget, epsilon, input_box
    from quantcert.engines import perturbation

    model = _export(SmallCNN(), (1, 2, 10, 10), 13)
    path = tmp_path / "cnn.onnx"
    onnx.save(model, str(path))
    net = from_onnx(path)
    delta, n_in = 0.005, 2 * 10 * 10
    rng = np.random.default_rng(3)
    centre = rng.uniform(-1, 1, n_in)
    lo, hi = centre - 0.05, centre + 0.05
    pert = perturbation.absolute(net, delta)
    res = epsilon(net, pert, input_box(net, lo, hi), Budget(gap=1e-3, timeout=2))
    upper = res.overall.upper
    assert res.overall.lower <= upper
    moved_names = set(pert.description["tensors"])  # type: ignore[arg-type]
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert moved_names <= set(stored)
    worst = 0.0
    for _ in range(40):
        x = rng.uniform(lo, hi).reshape(1, 2, 10, 10).astype(np.float32)
        base = _ort(model, x)
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for t in m.graph.initializer:
            if t.name in moved_names:
                a = stored[t.name]
                step = delta * rng.choice([-1.0, 1.0], a.shape)
                t.CopyFrom(numpy_helper.from_array((a + step).astype(a.dtype), t.name))
        worst = max(worst, float(np.abs(_ort(m, x) - base).max()))
    assert 0 < worst <= upper + 1e-5, (worst, upper)


def _two_outputs(extra: str = "Relu") -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5, "w")
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["y1"], transB=1),
        helper.make_node(extra, ["y1"], ["y2"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 3]) for o in ("y1", "y2")],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_several_outputs_are_refused_with_their_names_unless_one_is_chosen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "two.onnx"
    model = _two_outputs()
    onnx.save(model, str(path))
    with pytest.raises(InputError, match=r"2 outputs \(y1, y2\)"):
        from_onnx(path)
    with pytest.raises(InputError, match="no output 'y3'"):
        from_onnx(path, output="y3")
    x = np.array([[0.3, -1.0, 2.0, 0.5]], dtype=np.float32)
    for name in ("y1", "y2"):
        net = from_onnx(path, output=name)
        ours = net(torch.as_tensor(x, dtype=DTYPE)).detach().numpy()
        assert np.abs(ours - _ort(model, x, name)).max() < 1e-6
    # Nodes that only feed the other output are not translated at all.
    onnx.save(_two_outputs("Sin"), str(path))
    assert len(from_onnx(path, output="y1")) == 1
    with pytest.raises(InputError, match="Sin"):
        from_onnx(path, output="y2")


def test_a_weight_read_through_identity_is_stated_on_the_stored_initializer(
    tmp_path: Path,
) -> None:
    from quantcert.engines import perturbation

    model = _two_outputs()
    del model.graph.output[0]
    model.graph.node[0].input[1] = "w_shared"
    model.graph.node.insert(0, helper.make_node("Identity", ["w"], ["w_shared"]))
    path = tmp_path / "shared.onnx"
    onnx.save(model, str(path))
    net = from_onnx(path)
    assert [s.initializer for s in net.sources.values()] == ["w"]
    assert perturbation.absolute(net, 0.1).description["tensors"] == ["w"]


def test_an_unsupported_attribute_value_exits_2_naming_op_and_node(tmp_path: Path) -> None:
    import subprocess
    import sys

    model = _two_outputs("ReduceMean")
    del model.graph.output[0]
    model.graph.node[1].name = "mean1"
    model.graph.node[1].attribute.append(helper.make_attribute("keepdims", 2))
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    res = subprocess.run(
        [sys.executable, "-c", "from quantcert.cli import main; main()", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr
    assert "ReduceMean" in res.stderr and "mean1" in res.stderr and "keepdims=2" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
