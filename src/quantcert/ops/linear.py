"""Parameter-free linear ops: reshape, zero padding, average pooling, elementwise
normalisation (ONNX Sub/Div/Mul/Add by a constant), and the sum of several nodes (residual
Add, and the difference network's Sub).

Each is ``out = lin(z) + offset`` with ``lin`` linear per sample, so the backward transfer is
the adjoint of ``lin`` (computed with autograd's vector-Jacobian product) and is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from quantcert.ops.base import Box, Op, outward, spec_sum


class _Linear(Op):
    """Single-input ``lin(z) + offset``; ``lin`` maps (N, *in) -> (N, *out) for any N."""

    #: True when ``lin`` has only non-negative coefficients (then |lin|(r) = lin(r)).
    monotone = True

    def lin(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def offset(self, like: Tensor) -> Tensor:
        return torch.zeros_like(like)

    def abs_lin(self, r: Tensor) -> Tensor:
        return self.lin(r)

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        out = self.lin(xs[0])
        return out + self.offset(out)

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        box = boxes[0]
        center = self.forward([box.center], {})
        spread = self.abs_lin(box.radius)
        magnitude = self.abs_lin(box.center.abs()) + self.offset(center).abs() + spread
        return outward(center - spread, center + spread, magnitude)

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        s, n = A.shape[:2]
        z = torch.zeros((s * n, *boxes[0].lo.shape[1:]), dtype=A.dtype)
        vjp = torch.func.vjp(self.lin, z)[1]
        a_in = vjp(A.reshape(s * n, *A.shape[2:]))[0]
        off = self.offset(A[0])
        const = spec_sum(A, off)
        return [a_in.reshape(s, n, *a_in.shape[1:])], const, spec_sum(A.abs(), off.abs())


class Reshape(_Linear):
    """Flatten/Reshape: ``shape`` excludes the batch dimension."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def describe(self) -> str:
        return f"Reshape{self.shape}"

    def lin(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], *self.shape)


class Pad(_Linear):
    """Constant zero padding of the last two dims: ``pads`` = (left, right, top, bottom)."""

    def __init__(self, pads: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.pads = pads

    def describe(self) -> str:
        return f"Pad{self.pads}"

    def lin(self, z: Tensor) -> Tensor:
        return F.pad(z, self.pads)


class AvgPool(_Linear):
    def __init__(
        self,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int] = (0, 0),
        count_include_pad: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.count_include_pad = count_include_pad

    def describe(self) -> str:
        return f"AvgPool({self.kernel}, stride={self.stride})"

    def lin(self, z: Tensor) -> Tensor:
        return F.avg_pool2d(
            z, self.kernel, self.stride, self.padding, count_include_pad=self.count_include_pad
        )


class Scale(_Linear):
    """Elementwise ``z * scale + shift`` with constant, broadcastable tensors (input
    normalisation: ONNX Sub, Div, Mul and Add by a constant). Not perturbed."""

    monotone = False

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def describe(self) -> str:
        return "Scale"

    def lin(self, z: Tensor) -> Tensor:
        return z * self.scale

    def abs_lin(self, r: Tensor) -> Tensor:
        return r * self.scale.abs()

    def offset(self, like: Tensor) -> Tensor:
        return torch.zeros_like(like) + self.shift


class Sum(Op):
    """``out = sum_i coeffs[i] * in_i`` over several nodes (residual Add, difference Sub)."""

    def __init__(self, coeffs: tuple[float, ...]) -> None:
        super().__init__()
        self.coeffs = coeffs

    def describe(self) -> str:
        return f"Sum{self.coeffs}"

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        out = self.coeffs[0] * xs[0]
        for c, x in zip(self.coeffs[1:], xs[1:], strict=True):
            out = out + c * x
        return out

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        lo = sum(c * (b.lo if c >= 0 else b.hi) for c, b in zip(self.coeffs, boxes, strict=True))
        hi = sum(c * (b.hi if c >= 0 else b.lo) for c, b in zip(self.coeffs, boxes, strict=True))
        mag = sum(abs(c) * b.absmax for c, b in zip(self.coeffs, boxes, strict=True))
        assert isinstance(lo, Tensor) and isinstance(hi, Tensor) and isinstance(mag, Tensor)
        return outward(lo, hi, mag)

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        zero = A.new_zeros(A.shape[:2])
        return [c * A for c in self.coeffs], zero, zero
