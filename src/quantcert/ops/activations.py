"""Elementwise activations: ReLU, LeakyReLU, Sigmoid, Tanh, Identity.

Each backward transfer relaxes ``act(z)`` on the pre-activation box ``[l, u]`` by two lines,
``lower(z) <= act(z) <= upper(z)``, and picks per coefficient sign: ``A >= 0`` takes the upper
line, ``A < 0`` the lower one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from quantcert.ops.base import REL_MARGIN, Box, Op

Lines = tuple[
    Tensor, Tensor, Tensor, Tensor
]  # upper slope, upper offset, lower slope, lower offset


def _apply_lines(A: Tensor, lines: Lines) -> tuple[list[Tensor], Tensor, Tensor]:
    up_s, up_c, lo_s, lo_c = lines
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    a_in = pos * up_s + neg * lo_s
    const_terms = pos * up_c + neg * lo_c
    const = const_terms.flatten(2).sum(-1)
    magnitude = const_terms.abs().flatten(2).sum(-1)
    return [a_in], const, magnitude


class Elementwise(Op):
    nonlinear = True

    def fn(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def lines(self, box: Box) -> Lines:
        raise NotImplementedError

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        return self.fn(xs[0])

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        # All activations here are monotone non-decreasing.
        lo, hi = self.fn(boxes[0].lo), self.fn(boxes[0].hi)
        pad = REL_MARGIN * torch.maximum(lo.abs(), hi.abs())
        return Box(lo - pad, hi + pad)

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        return _apply_lines(A, self.lines(boxes[0]))


class Identity(Elementwise):
    """A linear hidden activation (seed 000's ATH-Linear)."""

    nonlinear = False

    def fn(self, z: Tensor) -> Tensor:
        return z

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        return boxes[0]

    def lines(self, box: Box) -> Lines:
        one, zero = torch.ones_like(box.lo), torch.zeros_like(box.lo)
        return one, zero, one, zero


class LeakyReLU(Elementwise):
    """``z`` for ``z >= 0``, ``slope * z`` below; ``slope`` in [0, 1]. ReLU is slope 0.

    ``lower_slope`` (optional, from ``with_lower_slope``) replaces CROWN's choice of the lower
    line on unstable neurons; any slope in ``[slope, 1]`` gives a sound lower line, so values
    outside are clipped. It may carry a leading spec dimension (S, B, *shape): alpha-CROWN."""

    lower_slope: Tensor | None = None

    def __init__(self, slope: float = 0.01) -> None:
        super().__init__()
        if not 0.0 <= slope <= 1.0:
            raise ValueError(f"LeakyReLU slope {slope} outside [0, 1]")
        self.slope = slope

    def describe(self) -> str:
        return f"LeakyReLU({self.slope})"

    def with_lower_slope(self, lower_slope: Tensor) -> LeakyReLU:
        clone = copy.copy(self)
        clone.lower_slope = lower_slope
        return clone

    def fn(self, z: Tensor) -> Tensor:
        return torch.where(z >= 0, z, self.slope * z)

    def crown_lower_slope(self, box: Box) -> Tensor:
        """CROWN's lower slope on an unstable neuron: 1 where ``u > -l``, else the leak."""
        return torch.where(box.hi > -box.lo, 1.0, self.slope).to(box.lo)

    def lines(self, box: Box) -> Lines:
        lo, hi, a = box.lo, box.hi, self.slope
        active, inactive = lo >= 0, hi <= 0
        unstable = ~(active | inactive)
        width = torch.where(unstable, hi - lo, torch.ones_like(lo))
        # Convex: the chord is the upper line; the lower line is z or a*z (CROWN's choice).
        chord = (hi - a * lo) / width
        up_s = torch.where(active, 1.0, torch.where(inactive, a, chord))
        up_c = torch.where(unstable, hi - chord * hi, torch.zeros_like(lo))
        up_c = up_c + REL_MARGIN * torch.maximum(lo.abs(), hi.abs()) * unstable
        lo_s = torch.where(active, 1.0, torch.where(unstable, self.crown_lower_slope(box), a))
        if self.lower_slope is not None:
            lo_s = torch.where(unstable, self.lower_slope.clamp(a, 1.0), lo_s)
        return up_s.to(lo), up_c, lo_s.to(lo), torch.zeros_like(lo)


class ReLU(LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.0)

    def describe(self) -> str:
        return "ReLU"

    def fn(self, z: Tensor) -> Tensor:
        return torch.relu(z)


def _offset_bound(
    fn: Callable[[Tensor], Tensor],
    slope: Tensor,
    box: Box,
    critical: Callable[[Tensor], list[Tensor]],
    upper: bool,
) -> Tensor:
    """``max`` (or ``min``) of ``fn(z) - slope*z`` over ``[lo, hi]``: the offset that makes
    ``slope*z + offset`` a sound upper (lower) line. The extremum is at an end point or where
    ``fn'(z) = slope``, which ``critical`` solves in closed form."""
    lo, hi = box.lo, box.hi
    candidates = [lo, hi]
    for z in critical(slope):
        inside = (z > lo) & (z < hi) & torch.isfinite(z)
        candidates.append(torch.where(inside, z, lo))
    values = torch.stack([fn(z) - slope * z for z in candidates])
    best = values.max(0).values if upper else values.min(0).values
    pad = REL_MARGIN * (1.0 + (slope * box.absmax).abs())
    return best + pad if upper else best - pad


class _SShaped(Elementwise):
    """Monotone, convex below 0 and concave above 0 (sigmoid, tanh)."""

    def deriv(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def critical(self, slope: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def lines(self, box: Box) -> Lines:
        lo, hi = box.lo, box.hi
        width = hi - lo
        flat = width <= 0
        safe = torch.where(flat, torch.ones_like(width), width)
        chord = torch.where(flat, self.deriv(lo), (self.fn(hi) - self.fn(lo)) / safe)
        tangent = self.deriv((lo + hi) / 2)
        # Convex part (hi <= 0): chord above, tangent below; concave part: the reverse.
        up_s = torch.where(lo >= 0, tangent, chord)
        lo_s = torch.where(hi <= 0, tangent, chord)
        up_c = _offset_bound(self.fn, up_s, box, self.critical, upper=True)
        lo_c = _offset_bound(self.fn, lo_s, box, self.critical, upper=False)
        return up_s, up_c, lo_s, lo_c


class Sigmoid(_SShaped):
    def fn(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    def deriv(self, z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s)

    def critical(self, slope: Tensor) -> list[Tensor]:
        # s(1-s) = k  <=>  s = (1 +- sqrt(1-4k))/2, z = logit(s).
        root = torch.sqrt((1 - 4 * slope).clamp(min=0))
        return [torch.logit((1 + sgn * root) / 2) for sgn in (1.0, -1.0)]


class Tanh(_SShaped):
    def fn(self, z: Tensor) -> Tensor:
        return torch.tanh(z)

    def deriv(self, z: Tensor) -> Tensor:
        return 1 - torch.tanh(z) ** 2

    def critical(self, slope: Tensor) -> list[Tensor]:
        root = torch.sqrt((1 - slope).clamp(min=0))
        return [torch.atanh(sgn * root) for sgn in (1.0, -1.0)]
