"""The activation quantizer of a QDQ graph: ``QuantizeLinear`` then ``DequantizeLinear``.

``FakeQuant(z) = (clip(round_half_even(z / s) + zp, qmin, qmax) - zp) * s`` with onnxruntime's
float32 semantics: ``z`` is rounded to float32, divided by ``s`` in float32, rounded half to
even, clipped, and dequantized by one float32 product. The result is a monotone staircase.

Relaxation: with ``y_min = (qmin - zp) s`` and ``y_max = (qmax - zp) s``, and ``c = s/2 + m``
where ``m`` covers the float32 roundings (three relative roundings of at most ``2**-24`` of
``|z|`` or ``|y| <= |z| + s``, charged as ``2**-20 (|z| + s)``, plus an absolute floor for
subnormals), every ``z`` satisfies

    min(y_max, z - c) <= FakeQuant(z) <= max(y_min, z + c).

The right side is convex and the left concave, so their chords on the input box ``[l, u]``
are a sound upper and lower line (exact lines ``z + c`` / ``z - c`` where the box cannot
reach the clip). Where the constant interval end is tighter on average than the chord, the
constant is used instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from quantcert.ops.base import DTYPE, REL_MARGIN, Box, Op

#: Relative charge for the float32 roundings of the quantizer (see the module docstring).
F32_MARGIN = 2.0**-20
#: Absolute floor for float32 underflow in the division and the product.
ABS_FLOOR = 1e-30


class FakeQuant(Op):
    """``scale`` and ``zero_point`` broadcast against the node's tensor (B, *shape): a scalar
    per tensor, or one value per channel along ``axis`` (of the ONNX tensor)."""

    nonlinear = True

    def __init__(
        self, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
    ) -> None:
        super().__init__()
        if not bool((scale > 0).all()):
            raise ValueError("quantizer scales must be positive")
        if qmin >= qmax:
            raise ValueError(f"empty quantizer range [{qmin}, {qmax}]")
        self.scale = scale.to(DTYPE)
        self.zero_point = zero_point.to(DTYPE)
        self.qmin, self.qmax, self.axis = int(qmin), int(qmax), axis

    def describe(self) -> str:
        where = "" if self.axis is None else f", axis={self.axis}"
        return f"FakeQuant([{self.qmin}, {self.qmax}]{where})"

    def quantize(self, z: Tensor) -> Tensor:
        """The staircase value (no gradient), float64 holding onnxruntime's float32 result."""
        s32 = self.scale.to(torch.float32)
        t = torch.round(z.detach().to(torch.float32) / s32).to(DTYPE)
        q = torch.clamp(t + self.zero_point, self.qmin, self.qmax)
        return ((q - self.zero_point).to(torch.float32) * s32).to(DTYPE)

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        z = xs[0]
        y = self.quantize(z)
        # Straight-through gradient: the value is the staircase, the slope that of z.
        return z + (y - z).detach() if z.requires_grad else y

    def _ends(self) -> tuple[Tensor, Tensor]:
        s = self.scale
        return (self.qmin - self.zero_point) * s, (self.qmax - self.zero_point) * s

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        box = boxes[0]
        lo, hi = self.quantize(box.lo), self.quantize(box.hi)  # monotone: exact ends
        pad = REL_MARGIN * torch.maximum(lo.abs(), hi.abs())
        return Box(lo - pad, hi + pad)

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        box = boxes[0]
        lz, u = box.lo, box.hi
        s = self.scale.expand_as(lz)
        y_min, y_max = (t.expand_as(lz) for t in self._ends())
        c = s / 2 + F32_MARGIN * (box.absmax + s) + ABS_FLOOR

        def upper_env(z: Tensor) -> Tensor:
            return torch.maximum(y_min, z + c)

        def lower_env(z: Tensor) -> Tensor:
            return torch.minimum(y_max, z - c)

        width = u - lz
        wide = width > 0
        safe = torch.where(wide, width, torch.ones_like(width))
        # Upper: the chord of the convex envelope max(y_min, z + c).
        gu_l, gu_u = upper_env(lz), upper_env(u)
        up_s = torch.where(wide, (gu_u - gu_l) / safe, torch.zeros_like(lz))
        up_c = torch.where(wide, gu_u - up_s * u, gu_u)
        # Lower: the chord of the concave envelope min(y_max, z - c).
        gl_l, gl_u = lower_env(lz), lower_env(u)
        lo_s = torch.where(wide, (gl_u - gl_l) / safe, torch.zeros_like(lz))
        lo_c = torch.where(wide, gl_l - lo_s * lz, gl_l)
        # Constants from the interval where they are tighter on average.
        iv = self.interval([box], {})
        up_const = (gu_l + gu_u) / 2 > iv.hi
        lo_const = (gl_l + gl_u) / 2 < iv.lo
        up_s = torch.where(up_const, torch.zeros_like(up_s), up_s)
        up_c = torch.where(up_const, iv.hi, up_c)
        lo_s = torch.where(lo_const, torch.zeros_like(lo_s), lo_s)
        lo_c = torch.where(lo_const, iv.lo, lo_c)
        # The chord's rounding: its offset is computed in float64; pad by the magnitudes.
        up_c = up_c + REL_MARGIN * (up_c.abs() + up_s.abs() * box.absmax)
        lo_c = lo_c - REL_MARGIN * (lo_c.abs() + lo_s.abs() * box.absmax)
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        a_in = pos * up_s + neg * lo_s
        const_terms = pos * up_c + neg * lo_c
        const = const_terms.flatten(2).sum(-1)
        return [a_in], const, const_terms.abs().flatten(2).sum(-1)
