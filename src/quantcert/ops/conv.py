"""2-D convolution (ONNX Conv), weights perturbable. Input (B, C, H, W)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from quantcert.ops.affine import _dot, _radius, _zero_bias, coef_rounding
from quantcert.ops.base import Box, Op, abs_upper_line, outward


def _channels(b: Tensor) -> Tensor:
    """A per-channel vector (O,) or (B, O) shaped to broadcast over (B, O, H, W)."""
    return b.reshape(*b.shape, 1, 1)


class Conv(Op):
    """``weight`` (O, I/groups, kh, kw), ``bias`` (O,); symmetric zero padding. Parameters and
    radii may be batched: (B, O, I/groups, kh, kw) and (B, O)."""

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
        """The bias, or zeros shaped like one: (O,), or (B, O) for batched kernels."""
        b = self.params.get("bias")
        return _zero_bias(self.params["weight"], 3) if b is None else b

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        """x (B, C, H, W); w unbatched or one kernel per batch element (B, O, ...)."""
        if w.dim() == 5:  # fold the batch into groups
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
            out = out.reshape(n, -1, *out.shape[2:])
            return out if b is None else out + _channels(b)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        w, b = params["weight"], params.get("bias")
        if b is None:
            return self._conv(xs[0], w)
        if w.dim() == 5 or b.dim() == 2:
            return self._conv(xs[0], w) + _channels(b)
        return self._conv(xs[0], w, b)

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        w, b = self.params["weight"], self.bias
        dw, db = _radius(radius, "weight", w), _radius(radius, "bias", b)
        box = boxes[0]
        center = self._conv(box.center, w) + _channels(b)
        spread = self._conv(box.radius, w.abs()) + self._conv(box.absmax, dw) + _channels(db)
        magnitude = self._conv(box.center.abs(), w.abs()) + _channels(b.abs()) + spread
        return outward(center - spread, center + spread, magnitude)

    def _transpose(self, A: Tensor, w: Tensor, in_shape: torch.Size) -> Tensor:
        """``A`` (S, B, O, H', W') -> adjoint applied: (S, B, *in_shape); ``w`` may be batched
        (B, O, ...): the batch then folds into groups."""
        s, n = A.shape[:2]
        groups = self.groups
        if w.dim() == 5:
            flat = A.reshape(s, n * A.shape[2], *A.shape[3:])
            w, groups = w.reshape(-1, *w.shape[2:]), groups * n
        else:
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
            flat, w, None, self.stride, self.padding, tuple(pads), groups, self.dilation
        )
        return res.reshape(s, n, -1, *res.shape[-2:])

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
        const = _dot(per_channel, b) + _dot(abs_channel, db)
        magnitude = _dot(abs_channel, b.abs() + db)
        absmax = box.absmax
        coef_mag = (a_abs * self._conv(absmax, w.abs()).unsqueeze(0)).flatten(2).sum(-1)
        if bool((dw != 0).any()):
            # Shared kernel entries: |sum_o A_o E_k z_o+k| <= D_k sum_o |A_o||z_o+k| (sound).
            gain = self._transpose(a_abs, dw, box.lo.shape)
            slope, offset = abs_upper_line(box)
            a_in = a_in + gain * slope
            extra = (gain * offset).flatten(2).sum(-1)
            const = const + extra
            magnitude = magnitude + extra
            coef_mag = coef_mag + (gain * (1 + slope.abs()) * absmax).flatten(2).sum(-1)
        # Rounding of the float64 coefficients, as in Affine.backward: each input coefficient
        # sums at most (output channels x kernel taps) products.
        terms = int(math.prod(A.shape[2:3])) * int(math.prod(w.shape[-2:]))
        coef = coef_rounding(terms) * coef_mag
        return [a_in], const + coef, magnitude + coef
