"""The ops issue 11 adds for torchvision's newer CNNs are sound: Mul of two activations (with
broadcasting), HardSwish, Softplus, Elu and Erf. Sampled inputs never leave the interval
bounds and never beat the linear (CROWN) upper or lower bound of the backward transfer; the
relaxation lines of the elementwise ones hold on a dense grid, kinks included."""

from __future__ import annotations

from collections.abc import Callable

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from quantcert.engines import perturbation
from quantcert.engines.bounds import Method, bound_spec
from quantcert.network import INPUT, Network, Node
from quantcert.ops import (
    DTYPE,
    Affine,
    Box,
    Conv,
    Elu,
    Erf,
    HardSwish,
    Mul,
    Op,
    Reduce,
    Reshape,
    Sigmoid,
    Softplus,
)
from quantcert.ops.activations import Elementwise

Maker = Callable[[], tuple[Op, list[tuple[int, ...]]]]

MAKERS: dict[str, Maker] = {
    "mul-same": lambda: (Mul(((2, 3), (2, 3))), [(2, 3), (2, 3)]),
    "mul-gate": lambda: (Mul(((3, 1, 1), (3, 4, 2))), [(3, 1, 1), (3, 4, 2)]),
    "mul-gate-first": lambda: (Mul(((3, 4, 2), (3, 1, 1))), [(3, 4, 2), (3, 1, 1)]),
    "mul-both-broadcast": lambda: (Mul(((3, 1), (1, 4))), [(3, 1), (1, 4)]),
    "mul-rank-padded": lambda: (Mul(((1, 1, 4), (2, 3, 4))), [(4,), (2, 3, 4)]),
    "hardswish": lambda: (HardSwish(), [(12,)]),
    "softplus": lambda: (Softplus(), [(12,)]),
    "elu": lambda: (Elu(), [(12,)]),
    "elu-half": lambda: (Elu(0.5), [(12,)]),
    "elu-steep": lambda: (Elu(2.5), [(12,)]),
    "elu-negative": lambda: (Elu(-0.7), [(12,)]),
    "erf": lambda: (Erf(), [(12,)]),
}


def _points(lo: torch.Tensor, hi: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    z = lo + (hi - lo) * torch.rand((n, *lo.shape[1:]), generator=gen, dtype=DTYPE)
    corner = torch.rand((n // 3, *lo.shape[1:]), generator=gen) < 0.5
    z[: n // 3] = torch.where(corner, lo, hi)
    return z


@pytest.mark.parametrize("kind", sorted(MAKERS))
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    width=st.sampled_from([0.0, 1e-6, 1e-3, 0.1, 0.5, 2.0, 5.0]),
    shift=st.sampled_from([0.0, 0.5, -1.5, 3.0, -3.0, 6.0, -8.0]),
    spread=st.sampled_from([0.1, 1.0, 3.0]),
)
def test_transfers_are_sound(
    kind: str, seed: int, width: float, shift: float, spread: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    op, shapes = MAKERS[kind]()
    boxes = []
    for shape in shapes:
        centre = torch.randn((1, *shape), generator=gen, dtype=DTYPE) * spread + shift
        w = width * torch.rand((1, *shape), generator=gen, dtype=DTYPE)
        boxes.append(Box(centre - w, centre + w))
    n = 128
    zs = [_points(b.lo, b.hi, n, gen) for b in boxes]
    out = op.forward(zs, {})
    ibox = op.interval(boxes, {})
    assert ibox.lo.shape[1:] == out.shape[1:]
    assert bool((out >= ibox.lo).all()), float((ibox.lo - out).max())
    assert bool((out <= ibox.hi).all()), float((out - ibox.hi).max())
    A = torch.randn((6, 1, *out.shape[1:]), generator=gen, dtype=DTYPE)
    for sign in (1.0, -1.0):  # upper bounds of A.out, and of -A.out (the lower bounds)
        res = op.backward(sign * A, boxes, {})
        assert res is not None
        a_ins, const, _ = res
        assert [a.shape[2:] for a in a_ins] == [b.lo.shape[1:] for b in boxes]
        lhs = (sign * A * out.unsqueeze(0)).flatten(2).sum(-1)
        rhs = const + sum(
            (a * z.unsqueeze(0)).flatten(2).sum(-1) for a, z in zip(a_ins, zs, strict=True)
        )
        # Only the float64 rounding of these two sums themselves is forgiven.
        scale = (A.abs() * out.abs().unsqueeze(0)).flatten(2).sum(-1) + const.abs()
        tol = 1e-12 * (1 + scale)
        assert bool((lhs <= rhs + tol).all()), float((lhs - rhs).max())


ELEMENTWISE = [k for k in MAKERS if not k.startswith("mul")]


@pytest.mark.parametrize("kind", ELEMENTWISE)
@settings(max_examples=25, deadline=None)
@given(lo=st.floats(-9, 9), width=st.floats(0, 12))
def test_lines_bound_the_function_on_a_dense_grid(kind: str, lo: float, width: float) -> None:
    op, _ = MAKERS[kind]()
    assert isinstance(op, Elementwise)
    box = Box(torch.tensor([[lo]], dtype=DTYPE), torch.tensor([[lo + width]], dtype=DTYPE))
    up_s, up_c, lo_s, lo_c = op.lines(box)
    grid = torch.linspace(lo, lo + width, 2001, dtype=DTYPE)
    kinks = torch.tensor([-3.0, -1.5, 0.0, 3.0], dtype=DTYPE)
    inside = kinks[(kinks >= lo) & (kinks <= lo + width)]
    z = torch.cat([grid, inside]).reshape(-1, 1)
    f = op.fn(z)
    assert bool((up_s * z + up_c >= f).all()), float((f - up_s * z - up_c).max())
    assert bool((lo_s * z + lo_c <= f).all()), float((lo_s * z + lo_c - f).max())
    ibox = op.interval([box], {})
    assert bool((f >= ibox.lo).all()) and bool((f <= ibox.hi).all())


def test_hardswish_interval_finds_the_minimum_inside_the_box() -> None:
    box = Box(torch.tensor([[-2.0]], dtype=DTYPE), torch.tensor([[1.0]], dtype=DTYPE))
    ibox = HardSwish().interval([box], {})
    assert abs(float(ibox.lo) + 0.375) < 1e-9 and abs(float(ibox.hi) - 2 / 3) < 1e-9


def test_relaxations_are_exact_on_linear_pieces() -> None:
    box = Box(torch.tensor([[4.0, -9.0]], dtype=DTYPE), torch.tensor([[7.0, -4.0]], dtype=DTYPE))
    up_s, up_c, lo_s, lo_c = HardSwish().lines(box)
    assert up_s.tolist() == lo_s.tolist() == [[1.0, 0.0]]
    assert float((up_c - lo_c).abs().max()) < 1e-8


def test_mul_mccormick_is_tight_at_the_corners() -> None:
    """At a corner of the box the McCormick planes meet the product: the bound is exact."""
    op = Mul(((1,), (1,)))
    boxes = [Box(torch.tensor([[-1.0]], dtype=DTYPE), torch.tensor([[2.0]], dtype=DTYPE))] * 2
    A = torch.ones((1, 1, 1), dtype=DTYPE)
    res = op.backward(A, boxes, {})
    (ax, ay), const, _ = res
    # Upper plane uy x + lx y - lx uy at (2, 2): 4 + -2 + 2 = 4 = 2 * 2.
    value = float(ax[0, 0, 0] * 2 + ay[0, 0, 0] * 2 + const[0, 0])
    assert abs(value - 4.0) < 1e-9


def _se_network(seed: int) -> Network:
    """A squeeze-excite block with every new op: conv, HardSwish, global mean, sigmoid
    gate times the map, then Elu, Softplus and Erf channels, and a linear head."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=DTYPE)

    nodes = [
        Node("conv", Conv(rnd(4, 2, 3, 3), rnd(4), (1, 1), (1, 1)), (INPUT,)),
        Node("hswish", HardSwish(), ("conv",)),
        Node("gap", Reduce((1, 2), True, True), ("hswish",)),
        Node("gate", Sigmoid(), ("gap",)),
        Node("excite", Mul(((4, 5, 5), (4, 1, 1))), ("hswish", "gate")),
        Node("elu", Elu(0.8), ("excite",)),
        Node("soft", Softplus(), ("elu",)),
        Node("erf", Erf(), ("soft",)),
        Node("sq", Mul(((4, 5, 5), (4, 5, 5))), ("erf", "excite")),
        Node("flat", Reshape((100,)), ("sq",)),
        Node("fc", Affine(rnd(3, 100) / 5, rnd(3)), ("flat",)),
    ]
    return Network(nodes, (2, 5, 5))


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.sampled_from([0.0, 0.01, 0.2]))
def test_bounds_of_a_block_with_every_new_op_hold_on_samples(
    method: Method, seed: int, width: float
) -> None:
    net = _se_network(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((1, 2, 5, 5), generator=gen, dtype=DTYPE) * 2
    box = Box(x - width, x + width)
    pert = perturbation.relative(net, 0.01)
    radii = {n.name: pert.for_node(n.name) for n in net.nodes}
    spec = torch.cat([torch.eye(3), -torch.eye(3)]).to(DTYPE)
    upper, _ = bound_spec(net, box, radii, spec, method)
    n = 96
    xs = _points(box.lo, box.hi, n, gen)
    params = {}
    for k, v in net.param_tensors().items():
        u = torch.rand((n, *v.shape), generator=gen, dtype=DTYPE) * 2 - 1
        params[k] = v + pert.radius[k] * torch.where(u > 0, u.sign(), u)
    out = net(xs, params)
    assert bool((out <= upper[0, :3]).all()), float((out - upper[0, :3]).max())
    assert bool((-out <= upper[0, 3:]).all()), float((-out - upper[0, 3:]).max())
