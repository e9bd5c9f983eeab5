"""Max pooling (ONNX MaxPool) over (B, C, H, W): ``MaxPool`` with symmetric padding, and
``PaddedMaxPool`` with any (top, left, bottom, right) padding, which also covers ONNX's
``ceil_mode`` (the extra windows at the end are windows over more -inf padding)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from quantcert.ops.affine import coef_rounding
from quantcert.ops.base import Box, Op, spec_sum
from quantcert.ops.linear import _Linear


class _WindowMax(Op):
    """Max over windows of ``kernel`` taps ``dilation`` apart, every ``stride``, over the
    input padded by ``pads4`` = (top, left, bottom, right) with -inf (padding never wins)."""

    nonlinear = True
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads4: tuple[int, int, int, int]

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        t, left, b, r = self.pads4
        padded = F.pad(xs[0], (left, r, t, b), value=float("-inf"))
        return F.max_pool2d(padded, self.kernel, self.stride, 0, self.dilation)

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        box = boxes[0]
        return Box(self.forward([box.lo], {}), self.forward([box.hi], {}))

    def _windows(self, z: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, k*k, L): the pooling windows, padded with -inf."""
        t, left, b, r = self.pads4
        padded = F.pad(z, (left, r, t, b), value=float("-inf"))
        n, c = z.shape[:2]
        cols = F.unfold(padded, self.kernel, dilation=self.dilation, stride=self.stride)
        return cols.reshape(n, c, self.kernel[0] * self.kernel[1], -1)

    def _scatter(self, coef: Tensor, onehot: Tensor, in_shape: torch.Size) -> Tensor:
        """Place per-window coefficients (N, C, L) on the chosen inputs: -> (N, C, H, W)."""
        n, _c = coef.shape[:2]
        t, left, b, r = self.pads4
        h, w = in_shape[-2], in_shape[-1]
        cols = (onehot * coef.unsqueeze(2)).reshape(n, -1, coef.shape[-1])
        full = F.fold(
            cols, (h + t + b, w + left + r), self.kernel, dilation=self.dilation, stride=self.stride
        )
        return full[..., t : t + h, left : left + w]

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        box = boxes[0]
        lo_w, hi_w = self._windows(box.lo), self._windows(box.hi)  # (B, C, K, L)
        best = lo_w.argmax(2, keepdim=True)
        onehot = torch.zeros_like(lo_w).scatter(2, best, 1.0)
        best_lo = lo_w.gather(2, best).squeeze(2)
        others_hi = hi_w.masked_fill(onehot.bool(), float("-inf")).max(2).values
        dominant = best_lo >= others_hi  # then max = z_best exactly
        top = hi_w.max(2).values  # max <= max of the upper bounds (a constant)
        s, n = A.shape[:2]
        a_flat = A.reshape(s, n, A.shape[2], -1)  # (S, B, C, L)
        pos, neg = a_flat.clamp(min=0), a_flat.clamp(max=0)
        # Upper line: z_best when dominant, else the constant `top`; lower line: z_best.
        linear_coef = neg + pos * dominant
        const_terms = pos * (~dominant) * top
        a_in = self._scatter(
            linear_coef.reshape(s * n, *linear_coef.shape[2:]),
            onehot.repeat(s, 1, 1, 1),
            box.lo.shape,
        )
        const = const_terms.flatten(2).sum(-1)
        return [a_in.reshape(s, n, *box.lo.shape[1:])], const, const_terms.abs().flatten(2).sum(-1)


class MaxPool(_WindowMax):
    """Symmetric ``padding`` (top/bottom, left/right), as ``F.max_pool2d`` takes it."""

    def __init__(
        self,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.dilation = dilation
        self.pads4 = (padding[0], padding[1], padding[0], padding[1])

    def describe(self) -> str:
        extra = "" if self.dilation == (1, 1) else f", dilation={self.dilation}"
        return f"MaxPool({self.kernel}, stride={self.stride}{extra})"

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        return F.max_pool2d(xs[0], self.kernel, self.stride, self.padding, self.dilation)


class PaddedMaxPool(_WindowMax):
    """``pads4`` = (top, left, bottom, right) of -inf padding; every window must hold at
    least one input value (the intake checks)."""

    def __init__(
        self,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        pads4: tuple[int, int, int, int],
        dilation: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        if min(pads4) < 0:
            raise ValueError(f"pads {pads4} must be non-negative")
        self.kernel, self.stride, self.pads4, self.dilation = kernel, stride, pads4, dilation

    def describe(self) -> str:
        return f"PaddedMaxPool({self.kernel}, stride={self.stride}, pads={self.pads4})"


class PaddedAvgPool(_Linear):
    """Average pooling as ONNX AveragePool computes it: window sums over the input zero
    padded by ``pads4`` = (top, left, bottom, right) (which includes the extra end padding of
    ``ceil_mode``), each divided by its own ``divisor`` (out_h, out_w) (the intake computes
    it: the window's size within the stated padding, or its count of input values when
    ``count_include_pad=0``)."""

    def __init__(
        self,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        pads4: tuple[int, int, int, int],
        divisor: Tensor,
    ) -> None:
        super().__init__()
        if min(pads4) < 0 or bool((divisor <= 0).any()):
            raise ValueError(f"pads {pads4} and divisors must be positive")
        self.kernel, self.stride, self.pads4, self.divisor = kernel, stride, pads4, divisor

    def describe(self) -> str:
        return f"PaddedAvgPool({self.kernel}, stride={self.stride}, pads={self.pads4})"

    def lin(self, z: Tensor) -> Tensor:
        t, left, b, r = self.pads4
        padded = F.pad(z, (left, r, t, b))
        sums = F.avg_pool2d(padded, self.kernel, self.stride, 0, divisor_override=1)
        return sums / self.divisor

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        a_in, const, magnitude = super().backward(A, boxes, radius)
        # Each input coefficient sums at most kh*kw terms A_o / d_o: their rounding errs by at
        # most gamma of sum_o |A_o| (window mean of |z|) over the box.
        terms = self.kernel[0] * self.kernel[1]
        charge = coef_rounding(terms) * spec_sum(A.abs(), self.lin(boxes[0].absmax))
        return a_in, const + charge, magnitude + charge
