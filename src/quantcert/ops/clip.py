"""Clipping (ONNX Clip; ReLU6 is ``Clip(0, 6)``): ``min(max(z, low), high)``, elementwise.

The function is monotone and piecewise linear with kinks at ``low`` and ``high``: convex on
``(-inf, high]``, concave on ``[low, inf)``. The backward transfer relaxes it on the
pre-activation box ``[l, u]`` by two lines:

- upper line: the chord when ``u <= high`` (the function is convex on the box); otherwise a
  line through the upper kink ``(high, high)`` with slope ``s`` in ``[0, s_max]``,
  ``s_max = (high - f(l)) / (high - l)`` (at most 1): it lies above ``f`` on ``[l, u]`` for any
  such ``s``. ``s`` is the end that minimises the area between line and function: ``s_max``
  when ``u - high < high - l``, else 0 (the area is linear in ``s``).
- lower line: the mirror image, the chord when ``l >= low``, else a line through
  ``(low, low)`` with slope ``t`` in ``[0, (f(u) - low) / (u - low)]``.

Constant pieces (``u <= low`` or ``l >= high``) are bounded exactly. Every line is widened by
``REL_MARGIN`` times the box's magnitude for the rounding of its slope and offset.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from quantcert.ops.activations import Elementwise, Lines
from quantcert.ops.base import REL_MARGIN, Box


class Clip(Elementwise):
    """``low`` may be ``-inf`` and ``high`` ``+inf`` (a one-sided clip); ``low <= high``."""

    def __init__(self, low: float = -math.inf, high: float = math.inf) -> None:
        super().__init__()
        low, high = float(low), float(high)
        if math.isnan(low) or math.isnan(high) or low > high:
            raise ValueError(f"Clip bounds [{low}, {high}] are not an interval")
        if low == math.inf or high == -math.inf:
            raise ValueError(f"Clip bounds [{low}, {high}] leave no finite value")
        self.low, self.high = low, high

    def describe(self) -> str:
        return f"Clip({self.low:g}, {self.high:g})"

    @property
    def lipschitz(self) -> float:
        return 1.0

    def fn(self, z: Tensor) -> Tensor:
        return torch.clamp(z, self.low, self.high)

    def lines(self, box: Box) -> Lines:
        lo, hi = box.lo, box.hi
        f_lo, f_hi = self.fn(lo), self.fn(hi)
        pad = REL_MARGIN * box.absmax
        zero = torch.zeros_like(lo)
        # The chord of f on [l, u] (the function itself where the box is a point).
        width = hi - lo
        flat = width <= 0
        safe = torch.where(flat, torch.ones_like(width), width)
        point_slope = ((lo > self.low) & (lo < self.high)).to(lo.dtype)
        chord_s = torch.where(flat, point_slope, (f_hi - f_lo) / safe)
        chord_c = f_hi - chord_s * hi
        # Upper line through the upper kink where it lies inside the box.
        up_kink = (hi > self.high) & (lo < self.high)
        high = torch.where(up_kink, torch.full_like(lo, self.high), zero)
        gap = torch.where(up_kink, high - lo, torch.ones_like(lo))
        s_max = torch.where(up_kink, ((high - f_lo) / gap).clamp(0.0, 1.0), zero)
        s = torch.where(hi - high < high - lo, s_max, zero)
        up_s = torch.where(up_kink, s, chord_s)
        up_c = torch.where(up_kink, high * (1 - s), chord_c) + pad
        # Lower line through the lower kink where it lies inside the box.
        lo_kink = (lo < self.low) & (hi > self.low)
        low = torch.where(lo_kink, torch.full_like(lo, self.low), zero)
        gap = torch.where(lo_kink, hi - low, torch.ones_like(lo))
        t_max = torch.where(lo_kink, ((f_hi - low) / gap).clamp(0.0, 1.0), zero)
        t = torch.where(low - lo < hi - low, t_max, zero)
        lo_s = torch.where(lo_kink, t, chord_s)
        lo_c = torch.where(lo_kink, low * (1 - t), chord_c) - pad
        # Constant pieces: exact.
        const = (hi <= self.low) | (lo >= self.high)
        up_s, lo_s = torch.where(const, zero, up_s), torch.where(const, zero, lo_s)
        up_c = torch.where(const, f_lo, up_c)
        lo_c = torch.where(const, f_lo, lo_c)
        return up_s, up_c, lo_s, lo_c
