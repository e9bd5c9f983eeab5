"""Max pooling (ONNX MaxPool) over (B, C, H, W)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from quantcert.ops.base import Box, Op


class MaxPool(Op):
    nonlinear = True

    """Windows of ``kernel`` taps ``dilation`` apart, every ``stride``, over the input padded
    symmetrically by ``padding`` (padding never wins the max)."""

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

    def describe(self) -> str:
        extra = "" if self.dilation == (1, 1) else f", dilation={self.dilation}"
        return f"MaxPool({self.kernel}, stride={self.stride}{extra})"

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        return F.max_pool2d(xs[0], self.kernel, self.stride, self.padding, self.dilation)

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        box = boxes[0]
        return Box(self.forward([box.lo], {}), self.forward([box.hi], {}))

    def _windows(self, z: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, k*k, L): the pooling windows, padded with -inf."""
        ph, pw = self.padding
        padded = F.pad(z, (pw, pw, ph, ph), value=float("-inf"))
        n, c = z.shape[:2]
        cols = F.unfold(padded, self.kernel, dilation=self.dilation, stride=self.stride)
        return cols.reshape(n, c, self.kernel[0] * self.kernel[1], -1)

    def _scatter(self, coef: Tensor, onehot: Tensor, in_shape: torch.Size) -> Tensor:
        """Place per-window coefficients (N, C, L) on the chosen inputs: -> (N, C, H, W)."""
        n, _c = coef.shape[:2]
        ph, pw = self.padding
        h, w = in_shape[-2], in_shape[-1]
        cols = (onehot * coef.unsqueeze(2)).reshape(n, -1, coef.shape[-1])
        full = F.fold(
            cols, (h + 2 * ph, w + 2 * pw), self.kernel, dilation=self.dilation, stride=self.stride
        )
        return full[..., ph : ph + h, pw : pw + w]

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
