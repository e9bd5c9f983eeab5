"""Elementwise activations: ReLU, LeakyReLU, Sigmoid, Tanh, Identity.

Each backward transfer relaxes ``act(z)`` on the pre-activation box ``[l, u]`` by two lines,
``lower(z) <= act(z) <= upper(z)``, and picks per coefficient sign: ``A >= 0`` takes the upper
line, ``A < 0`` the lower one.
"""

from __future__ import annotations

import copy
import math
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
    """``z`` for ``z >= 0``, ``slope * z`` below, for any finite ``slope`` (ONNX LeakyRelu's
    ``alpha``). ReLU is slope 0, the identity slope 1.

    The function is ``max(z, slope*z)`` for ``slope <= 1`` (convex) and ``min(z, slope*z)``
    for ``slope >= 1`` (concave); it is not monotone for ``slope < 0``. On an unstable neuron
    (``l < 0 < u``) one line is the chord and the other any line ``s*z`` through the kink with
    ``s`` between ``slope`` and 1: the chord lies above a convex function and below a concave
    one, and ``s*z`` the other way round.

    ``lower_slope`` (optional, from ``with_lower_slope``) replaces CROWN's choice of ``s``
    (the free line: the lower one when convex, the upper one when concave, the case the name
    is kept from); values outside ``[min(slope, 1), max(slope, 1)]`` are clipped, so any
    value is sound. It may carry a leading spec dimension (S, B, *shape): alpha-CROWN."""

    lower_slope: Tensor | None = None

    def __init__(self, slope: float = 0.01) -> None:
        super().__init__()
        if not math.isfinite(slope):
            raise ValueError(f"LeakyReLU slope {slope} is not finite")
        self.slope = float(slope)

    @property
    def convex(self) -> bool:
        return self.slope <= 1.0

    @property
    def lipschitz(self) -> float:
        """The Lipschitz constant ``max(1, |slope|)`` (1 only for slopes in [-1, 1])."""
        return max(1.0, abs(self.slope))

    def describe(self) -> str:
        return f"LeakyReLU({self.slope})"

    def with_lower_slope(self, lower_slope: Tensor) -> LeakyReLU:
        clone = copy.copy(self)
        clone.lower_slope = lower_slope
        return clone

    def fn(self, z: Tensor) -> Tensor:
        return torch.where(z >= 0, z, self.slope * z)

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        # Piecewise linear: the extremes lie at the end points or at the kink z = 0 (inside
        # the box only for unstable neurons; it matters when slope < 0).
        box = boxes[0]
        kink = self.fn(torch.clamp(torch.zeros_like(box.lo), box.lo, box.hi))
        ends = torch.stack([self.fn(box.lo), self.fn(box.hi), kink])
        lo, hi = ends.min(0).values, ends.max(0).values
        pad = REL_MARGIN * torch.maximum(lo.abs(), hi.abs())
        return Box(lo - pad, hi + pad)

    def crown_lower_slope(self, box: Box) -> Tensor:
        """CROWN's slope ``s`` of the free line ``s*z`` on an unstable neuron: 1 where
        ``u > -l``, else the leak. (It minimises the area between the line and the function
        on ``[l, u]``, for either curvature.)"""
        # float64 throughout: torch.where of two Python floats would round the leak to float32.
        one, leak = torch.ones_like(box.lo), torch.full_like(box.lo, self.slope)
        return torch.where(box.hi > -box.lo, one, leak)

    def lines(self, box: Box) -> Lines:
        lo, hi, a = box.lo, box.hi, self.slope
        active, inactive = lo >= 0, hi <= 0
        unstable = ~(active | inactive)
        zero = torch.zeros_like(lo)
        # Stable neurons: the linear piece itself, both lines.
        piece = torch.where(active, torch.ones_like(lo), torch.full_like(lo, a))
        width = torch.where(unstable, hi - lo, torch.ones_like(lo))
        chord = (hi - a * lo) / width
        chord_s = torch.where(unstable, chord, piece)
        # The chord through (u, u) and (l, a*l), widened for the rounding of its slope and
        # offset (each a few ulps of max(1, |a|) * max(|l|, |u|)).
        pad = REL_MARGIN * max(1.0, abs(a)) * torch.maximum(lo.abs(), hi.abs()) * unstable
        chord_c = torch.where(unstable, hi - chord * hi, zero)
        free = self.crown_lower_slope(box)
        if self.lower_slope is not None:
            free = self.lower_slope.clamp(min(a, 1.0), max(a, 1.0))
        free_s = torch.where(unstable, free, piece)
        if self.convex:
            return chord_s, chord_c + pad, free_s, zero
        return free_s, zero, chord_s, chord_c - pad


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
