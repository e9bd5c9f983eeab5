"""The elementwise product of two activations (ONNX Mul of two computed tensors), with numpy
broadcasting: squeeze-excite's gate ``(C, 1, 1)`` times its feature map ``(C, H, W)``, and
SiLU as exporters write it, ``Mul(x, Sigmoid(x))``.

Interval transfer: the product's extremes over the box ``[lx, ux] x [ly, uy]`` lie at its
four corners. Backward transfer: the McCormick planes, the tightest linear bounds of ``x y``
on the box (its convex and concave envelopes are the max / min of two planes each):

- upper ``x y <= uy x + lx y - lx uy`` (the gap ``(x - lx)(uy - y)`` is >= 0 on the box),
- lower ``x y >= ly x + lx y - lx ly`` (the gap ``(x - lx)(y - ly)`` is >= 0).

The two planes of each pair both miss the product by ``wx wy / 4`` at the box centre (``w``:
the widths), so neither is tighter there; this op takes the ones above. A coefficient ``A >= 0``
takes the upper plane, ``A < 0`` the lower one. The planes ignore that ``x`` and ``y`` may be
correlated (SiLU), which loses tightness, never soundness.

Rounding: the relaxation's own coefficients (box ends) are exact; the coefficients summed over
broadcast dimensions and the products with them are charged to the constant as in
``Affine.backward`` (``coef_rounding`` of the terms summed, times the box's magnitudes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from quantcert.ops.affine import coef_rounding
from quantcert.ops.base import REL_MARGIN, Box, Op


class Mul(Op):
    """``out = x * y``. ``shapes`` are the two inputs' sample shapes padded with leading 1s
    to the output's rank (numpy broadcasting aligns trailing dimensions); each input
    ``(B, *own_shape)`` is viewed with its padded shape before the product."""

    nonlinear = True

    def __init__(self, shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        super().__init__()
        a, b = (tuple(int(d) for d in s) for s in shapes)
        if len(a) != len(b):
            raise ValueError(f"Mul input shapes {a} and {b} must be padded to one rank")
        if any(p != q and 1 not in (p, q) for p, q in zip(a, b, strict=True)):
            raise ValueError(f"Mul input shapes {a} and {b} do not broadcast")
        self.shapes = (a, b)
        self.out_shape = tuple(q if p == 1 else p for p, q in zip(a, b, strict=True))

    def describe(self) -> str:
        return f"Mul{self.shapes[0]}x{self.shapes[1]}"

    def _view(self, t: Tensor, i: int) -> Tensor:
        return t.reshape(t.shape[0], *self.shapes[i])

    def _views(self, boxes: Sequence[Box]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, y = boxes
        return self._view(x.lo, 0), self._view(x.hi, 0), self._view(y.lo, 1), self._view(y.hi, 1)

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        return self._view(xs[0], 0) * self._view(xs[1], 1)

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        lx, ux, ly, uy = self._views(boxes)
        corners = torch.stack([lx * ly, lx * uy, ux * ly, ux * uy])  # each (B, *out_shape)
        lo, hi = corners.min(0).values, corners.max(0).values
        pad = REL_MARGIN * corners.abs().max(0).values
        return Box(lo - pad, hi + pad)

    def _reduce(self, coef: Tensor, i: int, like: Tensor) -> Tensor:
        """Sum ``coef`` (S, B, *out) over the dims input ``i`` broadcasts along; shaped like
        that input's coefficients (S, B, *own_shape)."""
        dims = [
            2 + d
            for d, (own, out) in enumerate(zip(self.shapes[i], self.out_shape, strict=True))
            if own == 1 and out != 1
        ]
        summed = coef.sum(dim=dims, keepdim=True) if dims else coef
        return summed.reshape(coef.shape[0], coef.shape[1], *like.shape[1:])

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        lx, ux, ly, uy = (t.unsqueeze(0) for t in self._views(boxes))
        # A >= 0: uy x + lx y - lx uy; A < 0: ly x + lx y - lx ly. The constant's terms are
        # -lx * coef_x either way.
        coef_x = A * torch.where(A >= 0, uy, ly)
        coef_y = A * lx
        abs_x = coef_x.abs()
        const = -(coef_x * lx).flatten(2).sum(-1)
        magnitude = (abs_x * lx.abs()).flatten(2).sum(-1)
        # Rounding of the coefficients (a product, then a sum over ``repeat`` broadcast
        # copies) times the largest |x|, |y| on the box.
        ax = torch.maximum(lx.abs(), ux.abs())
        ay = torch.maximum(ly.abs(), uy.abs())
        out_n = math.prod(self.out_shape)
        repeat = max(out_n // max(1, math.prod(s)) for s in self.shapes)
        coef_mag = (abs_x * ax).flatten(2).sum(-1) + (coef_y.abs() * ay).flatten(2).sum(-1)
        charge = coef_rounding(repeat) * coef_mag
        a_x = self._reduce(coef_x, 0, boxes[0].lo)
        a_y = self._reduce(coef_y, 1, boxes[1].lo)
        return [a_x, a_y], const + charge, magnitude + charge
