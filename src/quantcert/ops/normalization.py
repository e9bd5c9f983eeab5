"""Inference batch normalisation (ONNX BatchNormalization) with its four tensors perturbable.

``out = (x - mean) * gamma / sqrt(var + eps) + beta`` per channel (axis 1 of (B, C, ...) or
of (B, C)). Kept as its own op, not folded into the layer before it, so that perturbations
and witnesses are stated on the tensors the model file stores (issue 13).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from quantcert.ops.base import Box, Op, abs_upper_line, outward, spec_sum

_INF = float("inf")


def _down(t: Tensor) -> Tensor:
    return torch.nextafter(t, torch.full_like(t, -_INF))


def _up(t: Tensor) -> Tensor:
    return torch.nextafter(t, torch.full_like(t, _INF))


class BatchNorm(Op):
    """Parameters ``gamma``, ``beta``, ``mean``, ``var``: (C,), or batched (B, C) for
    branch and bound over parameter boxes. Input and output (B, C, *spatial)."""

    param_names = ("gamma", "beta", "mean", "var")

    def __init__(self, gamma: Tensor, beta: Tensor, mean: Tensor, var: Tensor, eps: float) -> None:
        super().__init__()
        self.params = {"gamma": gamma, "beta": beta, "mean": mean, "var": var}
        self.eps = float(eps)

    def describe(self) -> str:
        return f"BatchNorm({self.params['gamma'].shape[-1]})"

    @staticmethod
    def _channels(p: Tensor, rank: int) -> Tensor:
        """(C,) or (B, C) shaped to broadcast over an activation of ``rank`` dims."""
        return p.reshape(*p.shape, *([1] * (rank - 2)))

    def scale(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``gamma / sqrt(var + eps)``, (C,) or (B, C)."""
        p = self.params if params is None else params
        return p["gamma"] / torch.sqrt(p["var"] + self.eps)

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        x = xs[0]
        p = {**self.params, **params}
        s, m, b = (self._channels(t, x.dim()) for t in (self.scale(p), p["mean"], p["beta"]))
        return (x - m) * s + b

    def check_radius(self, radius: Mapping[str, Tensor]) -> str | None:
        r = radius.get("var")
        if r is not None and bool((self.params["var"] - r + self.eps <= 0).any()):
            return "the variance can reach -epsilon, where 1/sqrt(var + epsilon) is undefined"
        return None

    def _radii(self, radius: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: radius.get(k, torch.zeros_like(v)) for k, v in self.params.items()}

    def _scale_range(self, r: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Nominal scale ``s0`` and outward-rounded ``[s_lo, s_hi]`` over the parameter box."""
        g, v = self.params["gamma"], self.params["var"]
        v_lo = _down(_down(v - r["var"]) + self.eps)
        v_hi = _up(_up(v + r["var"]) + self.eps)
        safe = torch.where(v_lo > 0, v_lo, torch.ones_like(v_lo))
        inv_hi = torch.where(v_lo > 0, _up(1.0 / _down(torch.sqrt(safe))), _INF)
        inv_lo = _down(1.0 / _up(torch.sqrt(v_hi)))
        g_lo, g_hi = _down(g - r["gamma"]), _up(g + r["gamma"])
        corners = torch.stack([g_lo * inv_lo, g_lo * inv_hi, g_hi * inv_lo, g_hi * inv_hi])
        corners = torch.nan_to_num(corners, nan=0.0)  # 0 * inf: gamma is exactly 0 there
        s0 = self.scale()
        s_lo = torch.minimum(_down(corners.min(0).values), s0)
        s_hi = torch.maximum(_up(corners.max(0).values), s0)
        return s0, s_lo, s_hi

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        box, r = boxes[0], self._radii(radius)
        rank = box.lo.dim()
        _, s_lo, s_hi = (self._channels(t, rank) for t in self._scale_range(r))
        m, rm = self._channels(self.params["mean"], rank), self._channels(r["mean"], rank)
        b, rb = self._channels(self.params["beta"], rank), self._channels(r["beta"], rank)
        u_lo, u_hi = box.lo - (m + rm), box.hi - (m - rm)
        corners = torch.stack([u_lo * s_lo, u_lo * s_hi, u_hi * s_lo, u_hi * s_hi])
        lo, hi = corners.min(0).values + (b - rb), corners.max(0).values + (b + rb)
        magnitude = corners.abs().max(0).values + b.abs() + rb
        return outward(lo, hi, magnitude)

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        # out = s0 (x - m0) + (s - s0)(x - m0) - s (m - m0) + beta, so per element
        # A out <= A s0 x - A s0 m0 + A beta0 + |A| (Ds |x - m0| + Smax rm + rb).
        box, r = boxes[0], self._radii(radius)
        rank = box.lo.dim()
        s0, s_lo, s_hi = self._scale_range(r)
        # s0 itself is rounded: a few ulps of |s0| join the scale's radius.
        ds = torch.maximum(s_hi - s0, s0 - s_lo) + 2.0**-50 * s0.abs()
        s_max = torch.maximum(s_lo.abs(), s_hi.abs())
        s0, ds, s_max = (self._channels(t, rank) for t in (s0, ds, s_max))
        m, rm = self._channels(self.params["mean"], rank), self._channels(r["mean"], rank)
        b, rb = self._channels(self.params["beta"], rank), self._channels(r["beta"], rank)
        slope, offset = abs_upper_line(outward(box.lo - m, box.hi - m, box.absmax + m.abs()))
        a_abs = A.abs()
        gain = a_abs * ds  # (S, B, C, ...)
        a_in = A * s0 + gain * slope
        shift = b - s0 * m
        const = spec_sum(A, torch.zeros_like(box.lo) + shift)
        spread = torch.zeros_like(box.lo) + s_max * rm + rb
        const = const + spec_sum(a_abs, spread) + (gain * (offset - slope * m)).flatten(2).sum(-1)
        magnitude = spec_sum(a_abs, torch.zeros_like(box.lo) + shift.abs() + spread)
        magnitude = magnitude + (gain * (offset.abs() + (slope * m).abs())).flatten(2).sum(-1)
        return [a_in], const, magnitude
