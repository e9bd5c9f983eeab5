"""Parameter-free layout and reduction ops: transpose, slice, concatenation, and the sum or
mean over some axes (ONNX Transpose, Slice/Split, Concat, ReduceSum, ReduceMean,
GlobalAveragePool).

Axes and permutations are over the sample dimensions (the batch dimension excluded). All are
linear; the single-input ones reuse ``_Linear`` (the backward transfer is the exact adjoint,
by autograd's vector-Jacobian product). Transpose, Slice and Concat only move or select
values, so their coefficients are exact; the mean's coefficients ``A / n`` are rounded once
each, and that rounding is charged to the constant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from quantcert.ops.affine import coef_rounding
from quantcert.ops.base import Box, Op, spec_sum
from quantcert.ops.linear import _Linear


class Transpose(_Linear):
    """``perm`` permutes the sample dimensions (output dim ``i`` is input dim ``perm[i]``)."""

    def __init__(self, perm: tuple[int, ...]) -> None:
        super().__init__()
        if sorted(perm) != list(range(len(perm))):
            raise ValueError(f"Transpose perm {perm} is not a permutation")
        self.perm = tuple(int(p) for p in perm)

    def describe(self) -> str:
        return f"Transpose{self.perm}"

    def lin(self, z: Tensor) -> Tensor:
        return z.permute(0, *(1 + p for p in self.perm))


class Slice(_Linear):
    """``z[:, starts[0]:stops[0]:steps[0], ...]`` over the sample dimensions (steps >= 1);
    dimensions past the given ones are kept whole."""

    def __init__(self, bounds: tuple[tuple[int, int, int], ...]) -> None:
        super().__init__()
        if any(step < 1 for _, _, step in bounds):
            raise ValueError(f"Slice steps must be positive: {bounds}")
        self.bounds = tuple((int(a), int(b), int(c)) for a, b, c in bounds)

    def describe(self) -> str:
        return f"Slice{self.bounds}"

    def lin(self, z: Tensor) -> Tensor:
        index = (slice(None), *(slice(a, b, c) for a, b, c in self.bounds))
        return z[index]


class Reduce(_Linear):
    """Sum (``mean=False``) or mean of the sample dimensions ``axes``; ``keepdims`` keeps
    them with size 1."""

    def __init__(self, axes: tuple[int, ...], keepdims: bool, mean: bool) -> None:
        super().__init__()
        if not axes or len(set(axes)) != len(axes) or min(axes) < 0:
            raise ValueError(f"Reduce axes {axes} must be distinct sample dimensions")
        self.axes, self.keepdims, self.mean = tuple(sorted(axes)), bool(keepdims), bool(mean)

    def describe(self) -> str:
        kind = "Mean" if self.mean else "Sum"
        return f"Reduce{kind}(axes={self.axes}, keepdims={int(self.keepdims)})"

    def lin(self, z: Tensor) -> Tensor:
        dims = [1 + a for a in self.axes]
        if self.mean:
            return z.mean(dim=dims, keepdim=self.keepdims)
        return z.sum(dim=dims, keepdim=self.keepdims)

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        a_in, const, magnitude = super().backward(A, boxes, radius)
        if not self.mean:
            return a_in, const, magnitude
        # Each coefficient A_o / n is rounded once: at most 2**-53 of |A_o| / n per input, so
        # the linear form errs by at most that times sum_o |A_o| mean(|z|) on the box.
        charge = coef_rounding(1) * spec_sum(A.abs(), self.lin(boxes[0].absmax))
        return a_in, const + charge, magnitude + charge


class Concat(Op):
    """Concatenation of several nodes along sample dimension ``axis``."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        if axis < 0:
            raise ValueError(f"Concat axis {axis} must be a sample dimension")
        self.axis = int(axis)

    def describe(self) -> str:
        return f"Concat(axis={self.axis})"

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        return torch.cat(list(xs), dim=1 + self.axis)

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        lo = torch.cat([b.lo for b in boxes], dim=1 + self.axis)
        hi = torch.cat([b.hi for b in boxes], dim=1 + self.axis)
        return Box(lo, hi)

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        sizes = [int(b.lo.shape[1 + self.axis]) for b in boxes]
        parts = torch.split(A, sizes, dim=2 + self.axis)
        zero = A.new_zeros(A.shape[:2])
        return [p.contiguous() for p in parts], zero, zero
