"""Fully connected layer ``y = x W^T + b`` (ONNX Gemm, MatMul+Add), weights perturbable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from quantcert.ops.base import DTYPE, Box, Op, abs_upper_line, outward


def _radius(radius: Mapping[str, Tensor], name: str, like: Tensor) -> Tensor:
    value = radius.get(name)
    return torch.zeros_like(like) if value is None else value


def _apply(x: Tensor, w: Tensor) -> Tensor:
    """``x w^T``: x (B, in), w (out, in) or one matrix per batch element (B, out, in)."""
    return torch.einsum("boi,bi->bo", w, x) if w.dim() == 3 else x @ w.T


def _pull(A: Tensor, w: Tensor) -> Tensor:
    """``A w``: A (S, B, out), w (out, in) or (B, out, in) -> (S, B, in)."""
    return torch.einsum("sbo,boi->sbi", A, w) if w.dim() == 3 else A @ w


def _dot(A: Tensor, b: Tensor) -> Tensor:
    """``sum_o A_o b_o``: A (S, B, out), b (out,) or (B, out) -> (S, B)."""
    return (A * b).sum(-1) if b.dim() == 2 else A @ b


def coef_rounding(terms: int) -> float:
    """Relative error bound of float64 coefficients summed from ``terms`` products and one
    more addition: ``(terms + 2) * 2**-52`` exceeds ``gamma_(terms+2)`` (unit roundoff
    ``2**-53``) with room for the rounding of the bound itself."""
    return (terms + 2) * 2.0**-52


def _zero_bias(w: Tensor, kernel_dims: int) -> Tensor:
    """Zeros shaped like the bias of weight ``w``: its leading dims up to the output channels
    (a batched weight (B, out, ...) gives (B, out)); ``kernel_dims`` trailing dims follow."""
    return torch.zeros(w.shape[: w.dim() - kernel_dims], dtype=DTYPE, device=w.device)


class Affine(Op):
    """``weight`` (out, in), ``bias`` (out,); input (B, in), output (B, out). Parameters and
    radii may be batched: (B, out, in) and (B, out)."""

    param_names = ("weight", "bias")

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if weight.dim() != 2 or (bias is not None and bias.shape != weight.shape[:1]):
            shapes = (tuple(weight.shape), None if bias is None else tuple(bias.shape))
            raise ValueError(f"affine weight / bias shapes {shapes}")
        # A source model without a bias gets no (perturbable) bias here either.
        self.params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}

    @property
    def bias(self) -> Tensor:
        """The bias, or zeros shaped like one: (out,), or (B, out) for batched weights."""
        b = self.params.get("bias")
        return _zero_bias(self.params["weight"], 1) if b is None else b

    def describe(self) -> str:
        out_f, in_f = self.params["weight"].shape
        return f"Affine({in_f}->{out_f})"

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        w, b = params["weight"], params.get("bias")
        return _apply(xs[0], w) if b is None else _apply(xs[0], w) + b

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        w, b = self.params["weight"], self.bias
        dw, db = _radius(radius, "weight", w), _radius(radius, "bias", b)
        box = boxes[0]
        center = _apply(box.center, w) + b
        # (W0 + E)(c + e) - W0 c = W0 e + E (c + e), |E| <= D, |e| <= r.
        spread = _apply(box.radius, w.abs()) + _apply(box.absmax, dw) + db
        magnitude = _apply(box.center.abs(), w.abs()) + b.abs() + spread
        return outward(center - spread, center + spread, magnitude)

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        w, b = self.params["weight"], self.bias
        dw, db = _radius(radius, "weight", w), _radius(radius, "bias", b)
        a_abs = A.abs()
        a_in = _pull(A, w)
        const = _dot(A, b) + _dot(a_abs, db)
        magnitude = _dot(a_abs, b.abs() + db)
        absmax = boxes[0].absmax
        coef_mag = _dot(a_abs, _apply(absmax, w.abs()))
        if bool((dw != 0).any()):
            # max over |E| <= D of A E z = (|A| D) |z|, and |z| <= slope*z + offset on the box.
            gain = _pull(a_abs, dw)
            slope, offset = abs_upper_line(boxes[0])
            a_in = a_in + gain * slope
            extra = (gain * offset).sum(-1)
            const = const + extra
            magnitude = magnitude + extra
            coef_mag = coef_mag + (gain * (1 + slope.abs()) * absmax).sum(-1)
        # The float64 coefficients ``a_in`` differ from the exact ``A W (+ gain * slope)`` by
        # at most gamma_(out+2) of the magnitudes summed; that error times |z| on the box is
        # charged here (the difference network cancels large coefficients across its copies,
        # so the engine's margin on the concretised sum would not cover it).
        coef = coef_rounding(A.shape[-1]) * coef_mag
        return [a_in], const + coef, magnitude + coef
