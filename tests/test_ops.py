"""Each op's transfers are sound: sampled inputs and parameters never escape the interval
bounds, and never beat the linear upper bound of the backward transfer."""

from __future__ import annotations

from collections.abc import Callable

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from quantcert.ops import (
    DTYPE,
    Affine,
    AvgPool,
    Box,
    Conv,
    Identity,
    LeakyReLU,
    MaxPool,
    Op,
    Pad,
    ReLU,
    Reshape,
    Scale,
    Sigmoid,
    Softmax,
    Tanh,
)


def _conv(gen: torch.Generator) -> tuple[Op, tuple[int, ...]]:
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=DTYPE)
    return Conv(w, torch.randn(3, generator=gen, dtype=DTYPE), (2, 1), (1, 0)), (2, 6, 5)


def _affine(gen: torch.Generator) -> tuple[Op, tuple[int, ...]]:
    return Affine(
        torch.randn(4, 5, generator=gen, dtype=DTYPE), torch.randn(4, generator=gen, dtype=DTYPE)
    ), (5,)


MAKERS: dict[str, Callable[[torch.Generator], tuple[Op, tuple[int, ...]]]] = {
    "affine": _affine,
    "conv": _conv,
    "relu": lambda g: (ReLU(), (6,)),
    "leaky": lambda g: (LeakyReLU(0.2), (6,)),
    "sigmoid": lambda g: (Sigmoid(), (6,)),
    "tanh": lambda g: (Tanh(), (6,)),
    "identity": lambda g: (Identity(), (6,)),
    "maxpool": lambda g: (MaxPool((3, 3), (2, 2), (1, 1)), (2, 6, 6)),
    "avgpool": lambda g: (AvgPool((2, 2), (2, 2)), (2, 6, 6)),
    "pad": lambda g: (Pad((1, 0, 2, 1)), (2, 3, 3)),
    "reshape": lambda g: (Reshape((12,)), (3, 4)),
    "scale": lambda g: (
        Scale(torch.tensor([-2.0, 0.5, 3.0], dtype=DTYPE), torch.tensor(0.3, dtype=DTYPE)),
        (3,),
    ),
    "softmax": lambda g: (Softmax(), (4,)),
}


def _samples(op: Op, box: Box, radius: dict[str, torch.Tensor], n: int, gen: torch.Generator):  # type: ignore[no-untyped-def]
    lo, hi = box.lo[0], box.hi[0]
    z = lo + (hi - lo) * torch.rand((n, *lo.shape), generator=gen, dtype=DTYPE)
    z[: n // 4] = torch.where(
        torch.rand((n // 4, *lo.shape), generator=gen) < 0.5, lo, hi
    )  # corners
    params = {}
    for name, value in op.params.items():
        r = radius.get(name, torch.zeros_like(value))
        sign = torch.randint(0, 3, (n, *value.shape), generator=gen).to(DTYPE) - 1
        params[name] = value + r * sign
    return z, params


@pytest.mark.parametrize("kind", sorted(MAKERS))
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000), width=st.floats(0.0, 3.0), delta=st.sampled_from([0.0, 0.05, 0.3])
)
def test_transfers_are_sound(kind: str, seed: int, width: float, delta: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    op, shape = MAKERS[kind](gen)
    center = torch.randn((1, *shape), generator=gen, dtype=DTYPE)
    box = Box(center - width, center + width)
    radius = {k: torch.full_like(v, delta) for k, v in op.params.items()}
    z, params = _samples(op, box, radius, 64, gen)
    out = op.forward([z], params)
    ibox = op.interval([box], radius)
    assert bool((out >= ibox.lo - 1e-12).all()) and bool((out <= ibox.hi + 1e-12).all())
    A = torch.randn((5, 1, *out.shape[1:]), generator=gen, dtype=DTYPE)
    res = op.backward(A, [box], radius)
    if res is None:
        return
    (a_in,), const, _ = res
    lhs = (A * out.unsqueeze(0)).flatten(2).sum(-1)  # (5, n)
    rhs = (a_in * z.unsqueeze(0)).flatten(2).sum(-1) + const
    assert bool((lhs <= rhs + 1e-9 * (1 + rhs.abs())).all()), float((lhs - rhs).max())


def test_relu_relaxation_is_exact_when_stable() -> None:
    box = Box(torch.tensor([[1.0, -3.0]], dtype=DTYPE), torch.tensor([[2.0, -1.0]], dtype=DTYPE))
    A = torch.tensor([[[1.0, 1.0]]], dtype=DTYPE)
    (a_in,), const, _ = ReLU().backward(A, [box], {})
    assert a_in.tolist() == [[[1.0, 0.0]]] and float(const) == 0.0


@pytest.mark.parametrize("kind", ["affine", "conv"])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.floats(0.0, 2.0))
def test_batched_parameter_boxes_are_sound(kind: str, seed: int, width: float) -> None:
    """One parameter box per batch element (centres moved, radii varied): sampled inputs and
    parameters of each element stay inside its interval and under its linear bound, and the
    batched transfer matches the per-element unbatched one."""
    gen = torch.Generator().manual_seed(seed)
    op, shape = MAKERS[kind](gen)
    b = 3
    centres = {
        k: v + 0.2 * torch.randn((b, *v.shape), generator=gen, dtype=DTYPE)
        for k, v in op.params.items()
    }
    radii = {
        k: 0.3 * torch.rand((b, *v.shape), generator=gen, dtype=DTYPE) for k, v in op.params.items()
    }
    moved = op.with_params(centres)
    centre = torch.randn((b, *shape), generator=gen, dtype=DTYPE)
    box = Box(centre - width, centre + width)
    ibox = moved.interval([box], radii)
    A = torch.randn((4, b, *ibox.lo.shape[1:]), generator=gen, dtype=DTYPE)
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
        z, params = _samples(one, box_i, r_i, 64, gen)
        out = one.forward([z], params)
        assert bool((out >= ref.lo - 1e-12).all()) and bool((out <= ref.hi + 1e-12).all())
        lhs = (A[:, i : i + 1] * out.unsqueeze(0)).flatten(2).sum(-1)
        rhs = (a_in[:, i : i + 1] * z.unsqueeze(0)).flatten(2).sum(-1) + const[:, i : i + 1]
        assert bool((lhs <= rhs + 1e-9 * (1 + rhs.abs())).all())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), leak=st.sampled_from([0.0, 0.1]))
def test_any_lower_slope_keeps_the_relu_relaxation_sound(seed: int, leak: float) -> None:
    """alpha-CROWN's free lower slopes, even outside [leak, 1] (they are clipped), per spec
    row: the backward transfer still bounds every sampled input."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn((1, 6), generator=gen, dtype=DTYPE)
    box = Box(centre - 1.0, centre + 1.0)
    slopes = 3 * torch.rand((5, 1, 6), generator=gen, dtype=DTYPE) - 1  # in [-1, 2]
    op = LeakyReLU(leak).with_lower_slope(slopes)
    A = torch.randn((5, 1, 6), generator=gen, dtype=DTYPE)
    (a_in,), const, _ = op.backward(A, [box], {})
    z = box.lo + (box.hi - box.lo) * torch.rand((200, 6), generator=gen, dtype=DTYPE)
    out = op.forward([z], {})
    lhs = (A * out.unsqueeze(0)).flatten(2).sum(-1)
    rhs = (a_in * z.unsqueeze(0)).flatten(2).sum(-1) + const
    assert bool((lhs <= rhs + 1e-12).all())
