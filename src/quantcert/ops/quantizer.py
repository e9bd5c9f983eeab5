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
constant is used instead. ``y_min`` and ``y_max`` are the float32 products onnxruntime
returns in saturation (not the exact ones, which can lie one float32 rounding away).

Float grids (``grid="float8e4m3fn"`` / ``"float8e5m2"``, QuantizeLinear to float8 with
``saturate=1``, zero point 0): ``FakeQuant(z) = float32(fp8(clip(z / s, -M, M))) * s``,
``fp8`` rounding to nearest even. The grid is relative: ``c(z) = r |z| + a`` with ``r`` the
half spacing (``2**-4`` for e4m3, ``2**-3`` for e5m2) plus the float32 charge and ``a`` half
the subnormal spacing times ``s`` plus the floors. ``z + r |z| + a`` is convex and
``z - r |z| - a`` concave, so the same chords stay sound.
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
#: Float grids: (torch dtype, largest value, half spacing relative, half subnormal spacing).
FLOAT_GRIDS = {
    "float8e4m3fn": (torch.float8_e4m3fn, 448.0, 2.0**-4, 2.0**-10),
    "float8e5m2": (torch.float8_e5m2, 57344.0, 2.0**-3, 2.0**-17),
}


class FakeQuant(Op):
    """``scale`` and ``zero_point`` broadcast against the node's tensor (B, *shape): a scalar
    per tensor, or one value per channel along ``axis`` (of the ONNX tensor). ``grid``:
    ``"int"`` (``[qmin, qmax]``) or a key of ``FLOAT_GRIDS`` (zero point 0; ``qmin``/``qmax``
    are then -M and M)."""

    nonlinear = True

    def __init__(
        self,
        scale: Tensor,
        zero_point: Tensor,
        qmin: int,
        qmax: int,
        axis: int | None = None,
        grid: str = "int",
    ) -> None:
        super().__init__()
        if not bool((scale > 0).all()):
            raise ValueError("quantizer scales must be positive")
        if qmin >= qmax:
            raise ValueError(f"empty quantizer range [{qmin}, {qmax}]")
        if grid != "int":
            if grid not in FLOAT_GRIDS:
                raise ValueError(f"unknown quantizer grid {grid!r}")
            if bool((zero_point != 0).any()):
                raise ValueError("a float8 quantizer's zero point must be 0")
            qmax = int(FLOAT_GRIDS[grid][1])
            qmin = -qmax
        self.scale = scale.to(DTYPE)
        self.zero_point = zero_point.to(DTYPE)
        self.qmin, self.qmax, self.axis, self.grid = int(qmin), int(qmax), axis, grid

    def describe(self) -> str:
        where = "" if self.axis is None else f", axis={self.axis}"
        kind = "" if self.grid == "int" else f"{self.grid} "
        return f"FakeQuant({kind}[{self.qmin}, {self.qmax}]{where})"

    def quantize(self, z: Tensor) -> Tensor:
        """The staircase value (no gradient), float64 holding onnxruntime's float32 result."""
        s32 = self.scale.to(torch.float32)
        if self.grid != "int":
            dtype, top = FLOAT_GRIDS[self.grid][:2]
            t = torch.clamp(z.detach().to(torch.float32) / s32, -top, top)
            return (t.to(dtype).to(torch.float32) * s32).to(DTYPE)
        t = torch.round(z.detach().to(torch.float32) / s32).to(DTYPE)
        q = torch.clamp(t + self.zero_point, self.qmin, self.qmax)
        return ((q - self.zero_point).to(torch.float32) * s32).to(DTYPE)

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        z = xs[0]
        y = self.quantize(z)
        # Straight-through gradient: the value is the staircase, the slope that of z.
        return z + (y - z).detach() if z.requires_grad else y

    def _ends(self) -> tuple[Tensor, Tensor]:
        """The saturated outputs as onnxruntime computes them (float32 products)."""
        s32 = self.scale.to(torch.float32)
        lo = (self.qmin - self.zero_point).to(torch.float32) * s32
        hi = (self.qmax - self.zero_point).to(torch.float32) * s32
        return lo.to(DTYPE), hi.to(DTYPE)

    def _slack(self, box: Box) -> tuple[Tensor, Tensor]:
        """``(r, a)``: ``|FakeQuant(z) - z| <= r |z| + a`` wherever it does not saturate."""
        s = self.scale.expand_as(box.lo)
        if self.grid == "int":
            a = s / 2 + F32_MARGIN * (box.absmax + s) + ABS_FLOOR
            return torch.zeros_like(a), a
        _, _, rel, sub = FLOAT_GRIDS[self.grid]
        r = torch.full_like(box.lo, rel + 2 * F32_MARGIN)
        return r, (sub + F32_MARGIN) * s + ABS_FLOOR

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
        y_min, y_max = (t.expand_as(lz) for t in self._ends())
        r, a = self._slack(box)

        def upper_env(z: Tensor) -> Tensor:
            return torch.maximum(y_min, z + r * z.abs() + a)

        def lower_env(z: Tensor) -> Tensor:
            return torch.minimum(y_max, z - r * z.abs() - a)

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
