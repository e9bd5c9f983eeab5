"""Quantization noise on an activation: ``out = z + z * rel + abs``, elementwise.

A quantizer whose error obeys ``|q(z) - z| <= u |z| + f`` is covered by the parameter box
``rel in [-u, u]``, ``abs in [-f, f]`` around the nominal ``rel = abs = 0`` (the float
network). Both parameters have the node's shape (without batch), or ``(B, *shape)`` under
parameter splits, so the witness search and branch and bound treat the noise values as
parameters like any weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from quantcert.ops.base import DTYPE, Box, Op, abs_upper_line, outward, spec_sum

#: Relative bound on the float64 rounding of the coefficients ``A (1 + rel) + |A| u slope``.
_COEF_ROUNDING = 2.0**-50


def _radius(radius: Mapping[str, Tensor], name: str, like: Tensor) -> Tensor:
    value = radius.get(name)
    return torch.zeros_like(like) if value is None else value


class QuantNoise(Op):
    """Parameters ``rel`` and ``abs`` of the activation's shape (nominal zeros)."""

    param_names = ("rel", "abs")

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.params = {
            "rel": torch.zeros(self.shape, dtype=DTYPE),
            "abs": torch.zeros(self.shape, dtype=DTYPE),
        }

    def describe(self) -> str:
        return f"QuantNoise({'x'.join(str(d) for d in self.shape)})"

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        z = xs[0]
        p = {**self.params, **params}
        return z + z * p["rel"] + p["abs"]

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        box = boxes[0]
        rel0, abs0 = self.params["rel"], self.params["abs"]
        ru, fa = _radius(radius, "rel", rel0), _radius(radius, "abs", abs0)
        m_lo, m_hi = 1 + rel0 - ru, 1 + rel0 + ru
        corners = torch.stack([box.lo * m_lo, box.lo * m_hi, box.hi * m_lo, box.hi * m_hi])
        lo = corners.min(0).values + (abs0 - fa)
        hi = corners.max(0).values + (abs0 + fa)
        magnitude = corners.abs().max(0).values * 2 + abs0.abs() + fa + box.absmax
        return outward(lo, hi, magnitude)

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        # out = (1 + rel0) z + (rel - rel0) z + abs, so
        # A out <= A (1 + rel0) z + A abs0 + |A| u |z| + |A| f, with |z| <= slope z + offset.
        box = boxes[0]
        rel0, abs0 = self.params["rel"], self.params["abs"]
        ru, fa = _radius(radius, "rel", rel0), _radius(radius, "abs", abs0)
        a_abs = A.abs()
        slope, offset = abs_upper_line(box)
        gain = a_abs * ru
        gain_slope = gain * slope
        a_in = A * (1 + rel0) + gain_slope
        zero = torch.zeros_like(box.lo)
        const = spec_sum(A, zero + abs0) + spec_sum(a_abs, zero + fa)
        const = const + (gain * offset).flatten(2).sum(-1)
        magnitude = spec_sum(a_abs, zero + abs0.abs() + fa) + (gain * offset).flatten(2).sum(-1)
        # The float64 coefficients differ from the exact ones by a few ulps: times |z|.
        coef_mag = (a_abs * (1 + rel0.abs()) + gain_slope.abs()) * box.absmax
        coef = _COEF_ROUNDING * coef_mag.flatten(2).sum(-1)
        return [a_in], const + coef, magnitude + coef
