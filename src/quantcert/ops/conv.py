"""2-D convolution (ONNX Conv), weights perturbable. Input (B, C, H, W)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from quantcert.ops.affine import _radius
from quantcert.ops.base import DTYPE, Box, Op, abs_upper_line, outward


class Conv(Op):
    """``weight`` (O, I/groups, kh, kw), ``bias`` (O,); symmetric zero padding."""

    param_names = ("weight", "bias")

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def describe(self) -> str:
        o, i, kh, kw = self.params["weight"].shape
        return f"Conv({i * self.groups}->{o}, {kh}x{kw}, stride={self.stride})"

    @property
    def bias(self) -> Tensor:
        b = self.params.get("bias")
        return torch.zeros(self.params["weight"].shape[0], dtype=DTYPE) if b is None else b

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        w, b = params["weight"], params.get("bias", self.bias)
        x = xs[0]
        if w.dim() == 5:  # one kernel per batch element: fold the batch into groups
            n = x.shape[0]
            out = F.conv2d(
                x.reshape(1, -1, *x.shape[2:]),
                w.reshape(-1, *w.shape[2:]),
                None,
                self.stride,
                self.padding,
                self.dilation,
                self.groups * n,
            )
            return out.reshape(n, -1, *out.shape[2:]) + b.reshape(n, -1, 1, 1)
        return self._conv(x, w, b)

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        w, b = self.params["weight"], self.bias
        dw, db = _radius(radius, "weight", w), _radius(radius, "bias", b)
        box = boxes[0]
        center = self._conv(box.center, w, b)
        spread = self._conv(box.radius, w.abs()) + self._conv(box.absmax, dw)
        spread = spread + db.reshape(-1, 1, 1)
        magnitude = self._conv(box.center.abs(), w.abs(), b.abs()) + spread
        return outward(center - spread, center + spread, magnitude)

    def _transpose(self, A: Tensor, w: Tensor, in_shape: torch.Size) -> Tensor:
        """``A`` (S, B, O, H', W') -> adjoint applied: (S, B, *in_shape)."""
        s, n = A.shape[:2]
        flat = A.reshape(s * n, *A.shape[2:])
        h_in, w_in = in_shape[-2:]
        kh, kw = w.shape[-2:]
        pads = []
        for size, out, k, st, p, d in zip(
            (h_in, w_in),
            flat.shape[-2:],
            (kh, kw),
            self.stride,
            self.padding,
            self.dilation,
            strict=True,
        ):
            pads.append(size - ((out - 1) * st - 2 * p + d * (k - 1) + 1))
        res = F.conv_transpose2d(
            flat, w, None, self.stride, self.padding, tuple(pads), self.groups, self.dilation
        )
        return res.reshape(s, n, *res.shape[1:])

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        w, b = self.params["weight"], self.bias
        dw, db = _radius(radius, "weight", w), _radius(radius, "bias", b)
        box = boxes[0]
        a_abs = A.abs()
        per_channel = A.sum((-1, -2))  # (S, B, O)
        abs_channel = a_abs.sum((-1, -2))
        a_in = self._transpose(A, w, box.lo.shape)
        const = per_channel @ b + abs_channel @ db
        magnitude = abs_channel @ (b.abs() + db)
        if bool((dw != 0).any()):
            # Shared kernel entries: |sum_o A_o E_k z_o+k| <= D_k sum_o |A_o||z_o+k| (sound).
            gain = self._transpose(a_abs, dw, box.lo.shape)
            slope, offset = abs_upper_line(box)
            a_in = a_in + gain * slope
            extra = (gain * offset).flatten(2).sum(-1)
            const = const + extra
            magnitude = magnitude + extra
        return [a_in], const, magnitude
