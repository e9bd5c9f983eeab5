"""More elementwise activations of exported CNNs: HardSwish (MobileNetV3), Softplus, Elu and
Erf (GELU as opset-17 exporters write it: ``x * (1 + Erf(x / sqrt 2)) / 2``).

HardSwish, Softplus and Elu are ``_Piecewise``: smooth between finitely many kinks, with the
points where a piece's derivative equals a given slope ``s`` in closed form (``stationary``).
For any slope ``s``, ``f(z) - s z`` then takes its extremes over ``[l, u]`` at an end point, a
kink or such a point; evaluating it there gives the offset that makes ``s z + c`` an upper
(lower) line that holds on the whole box, whatever ``s`` is. The slopes are chosen among the
chord and the tangents at the ends and the centre, keeping per neuron the line closest to the
function at the centre (the least area between line and function over the box). The interval
transfer is the same search with ``s = 0``, exact per neuron (HardSwish is not monotone).

Rounding: each candidate value ``f(z) - s z`` is a few roundings of ``|f(z)| + |s z|``, and a
computed stationary point misses the real one by a few ulps, which moves ``f - s z`` by the
square of that (it is stationary there); the offsets are widened by ``REL_MARGIN`` of those
magnitudes plus ``TINY``.

Erf is S-shaped (convex below 0, concave above) and reuses sigmoid's ``_SShaped``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from quantcert.ops.activations import Elementwise, Lines, _SShaped
from quantcert.ops.base import REL_MARGIN, Box

#: Absolute widening of every offset: covers the second-order error of stationary points.
TINY = 2.0**-200


class _Piecewise(Elementwise):
    """Continuous, smooth between the points ``kinks``."""

    kinks: tuple[float, ...] = ()

    def deriv(self, z: Tensor) -> Tensor:
        """A derivative of ``fn`` (either side at a kink)."""
        raise NotImplementedError

    def stationary(self, slope: Tensor) -> list[Tensor]:
        """Every point of a smooth piece where ``fn' = slope`` (NaN or out of the piece's
        range where there is none; extra points are harmless)."""
        raise NotImplementedError

    def _candidates(self, box: Box, slope: Tensor) -> list[Tensor]:
        lo, hi = box.lo, box.hi
        points = [lo, hi]
        extra = [torch.full_like(lo, k) for k in self.kinks] + self.stationary(slope)
        for z in extra:
            inside = (z > lo) & (z < hi) & torch.isfinite(z)
            points.append(torch.where(inside, z, lo))
        return points

    def _offset(self, box: Box, slope: Tensor, upper: bool) -> Tensor:
        """``max`` (``upper``) or ``min`` of ``fn(z) - slope z`` over the box, widened."""
        points = self._candidates(box, slope)
        values = [self.fn(z) for z in points]
        gaps = torch.stack([v - slope * z for v, z in zip(values, points, strict=True)])
        size = torch.stack(
            [v.abs() + (slope * z).abs() for v, z in zip(values, points, strict=True)]
        )
        pad = REL_MARGIN * size.max(0).values + TINY
        return gaps.max(0).values + pad if upper else gaps.min(0).values - pad

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        box = boxes[0]
        zero = torch.zeros_like(box.lo)
        return Box(self._offset(box, zero, upper=False), self._offset(box, zero, upper=True))

    def lines(self, box: Box) -> Lines:
        lo, hi = box.lo, box.hi
        width = hi - lo
        flat = width <= 0
        safe = torch.where(flat, torch.ones_like(width), width)
        mid = (lo + hi) / 2
        chord = torch.where(flat, self.deriv(lo), (self.fn(hi) - self.fn(lo)) / safe)
        slopes = [chord, self.deriv(mid), self.deriv(lo), self.deriv(hi)]
        best: list[tuple[Tensor, Tensor]] = []
        for upper in (True, False):
            pick_s, pick_c = slopes[0], self._offset(box, slopes[0], upper)
            for s in slopes[1:]:
                c = self._offset(box, s, upper)
                # The line's height at the centre: lower is tighter above, higher below.
                height, picked = s * mid + c, pick_s * mid + pick_c
                better = height < picked if upper else height > picked
                pick_s, pick_c = torch.where(better, s, pick_s), torch.where(better, c, pick_c)
            best.append((pick_s, pick_c))
        (up_s, up_c), (lo_s, lo_c) = best
        return up_s, up_c, lo_s, lo_c


class HardSwish(_Piecewise):
    """ONNX HardSwish: ``z * max(0, min(1, z/6 + 1/2))``: 0 up to -3, ``z (z + 3) / 6`` on
    [-3, 3], ``z`` from 3 on."""

    kinks = (-3.0, 3.0)

    def fn(self, z: Tensor) -> Tensor:
        middle = z * (z + 3) / 6
        return torch.where(z <= -3, torch.zeros_like(z), torch.where(z >= 3, z, middle))

    def deriv(self, z: Tensor) -> Tensor:
        middle = (2 * z + 3) / 6
        return torch.where(
            z < -3, torch.zeros_like(z), torch.where(z > 3, torch.ones_like(z), middle)
        )

    def stationary(self, slope: Tensor) -> list[Tensor]:
        return [3 * slope - 1.5]  # (2z + 3) / 6 = s on the middle piece


class Softplus(_Piecewise):
    """ONNX Softplus: ``log(1 + exp(z))``, computed as ``logaddexp(z, 0)`` (no overflow)."""

    def fn(self, z: Tensor) -> Tensor:
        return torch.logaddexp(z, torch.zeros_like(z))

    def deriv(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    def stationary(self, slope: Tensor) -> list[Tensor]:
        return [torch.logit(slope)]  # sigmoid(z) = s; NaN outside (0, 1)


class Elu(_Piecewise):
    """ONNX Elu: ``z`` for ``z >= 0``, ``alpha (exp(z) - 1)`` below (any finite ``alpha``)."""

    kinks = (0.0,)

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        if not math.isfinite(alpha):
            raise ValueError(f"Elu alpha {alpha} is not finite")
        self.alpha = float(alpha)

    def describe(self) -> str:
        return f"Elu({self.alpha})"

    def fn(self, z: Tensor) -> Tensor:
        return torch.where(z >= 0, z, self.alpha * torch.expm1(z.clamp(max=0)))

    def deriv(self, z: Tensor) -> Tensor:
        return torch.where(z >= 0, torch.ones_like(z), self.alpha * torch.exp(z.clamp(max=0)))

    def stationary(self, slope: Tensor) -> list[Tensor]:
        if self.alpha == 0:
            return []
        return [torch.log(slope / self.alpha)]  # alpha exp(z) = s on the negative piece


class Erf(_SShaped):
    def fn(self, z: Tensor) -> Tensor:
        return torch.erf(z)

    def deriv(self, z: Tensor) -> Tensor:
        return 2 / math.sqrt(math.pi) * torch.exp(-(z**2))

    def critical(self, slope: Tensor) -> list[Tensor]:
        # (2 / sqrt(pi)) exp(-z^2) = k  <=>  z = +-sqrt(-log(k sqrt(pi) / 2)); NaN if none.
        root = torch.sqrt(-torch.log(slope * (math.sqrt(math.pi) / 2)))
        return [root, -root]
