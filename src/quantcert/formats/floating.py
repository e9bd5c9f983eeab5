"""Floating-point formats: fp16, bf16, fp8 (e4m3fn, e5m2), fp6 (e3m2, e2m3), fp4 (e2m1),
cast with ``ml_dtypes``; fp8 optionally with a per-tensor scale as onnxruntime computes it.

Rules (checked against onnxruntime 1.32 and ``onnx.reference`` in ``tests/test_formats_float.py``):

- The input is the float32 tensor ``t32 = float32(t)`` a runtime holds (onnxruntime's ``Cast``
  and ``QuantizeLinear`` read float32); ``quantize`` is bit-exact with onnxruntime on it.
  ``radius`` adds ``|t32 - t|`` where ``t`` is not a float32 value, so it bounds the error
  against ``t`` itself, for any float64 ``t``.
- Round to nearest, ties to even. fp8 saturates as ONNX ``Cast``/``QuantizeLinear`` with
  ``saturate=1`` (the default): beyond the largest finite value, and for ``±inf``, the result
  is ``±max`` (``onnx.numpy_helper.saturate_cast``: clip, then cast; ``ml_dtypes`` alone gives
  NaN for e4m3fn and inf for e5m2). fp6 and fp4 have no inf or NaN and saturate too (the
  OCP MX element rule). fp16 and bf16 follow ONNX ``Cast`` (no ``saturate``): overflow gives
  ``±inf``, and ``radius`` is ``inf`` there, as an infinite value cannot be bounded.
- ``scaled`` (fp8 only): ``s = float32(std(t32) / std(F))`` with ``F`` the 254 finite
  float8 values in float32 and numpy's ``std`` in float32, exactly as onnxruntime's
  ``compute_data_quant_params``/``compute_scale_zp_float8`` (``quantization/quant_utils.py``)
  compute it for ``FLOAT8E4M3FN``; onnxruntime implements no scale for e5m2, and we use the
  same formula with the finite e5m2 values. Then ``quantize = float32(y) * s`` in float32
  with ``y = saturate_cast(float32(t32 / s))``: ``QuantizeLinear`` then ``DequantizeLinear``.
  A tensor whose ``std`` is 0 or not finite (where onnxruntime's quantizer fails) is cast
  with ``s = 1``.
- ``radius``: ``2^-(m+1) |t|`` (``m`` mantissa bits), at least ``2^(emin-m-1)`` (half the
  subnormal spacing), at least ``|t| - max`` where it saturates; with ``rounding="any"`` one
  full step (``2^-m |t|``, ``2^(emin-m)``). The scaled form adds the float32 rounding of the
  division and of the product. Every sum is rounded up, so the bound holds exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import ml_dtypes
import numpy as np

from quantcert.errors import InputError
from quantcert.formats.base import Rounding

FloatKind = Literal["fp16", "bf16", "fp8-e4m3", "fp8-e5m2", "fp6-e3m2", "fp6-e2m3", "fp4-e2m1"]

#: float32's unit roundoff and half its smallest subnormal: ``|fl32(x) - x| <= U32 |x| + T32``.
U32 = 2.0**-24
T32 = 2.0**-150


@dataclass(frozen=True)
class ElementSpec:
    """One floating element type: its ``ml_dtypes`` dtype, mantissa bits, the exponent of its
    smallest normal, its largest finite value, and whether a cast saturates (else overflows
    to inf)."""

    dtype: Any
    mant: int
    emin: int
    max: float
    saturates: bool


def _spec(dtype: Any, saturates: bool) -> ElementSpec:
    info = ml_dtypes.finfo(dtype)  # type: ignore[no-untyped-call]
    return ElementSpec(dtype, int(info.nmant), int(info.minexp), float(info.max), saturates)


SPECS: dict[str, ElementSpec] = {
    "fp16": _spec(np.float16, False),
    "bf16": _spec(ml_dtypes.bfloat16, False),
    "fp8-e4m3": _spec(ml_dtypes.float8_e4m3fn, True),
    "fp8-e5m2": _spec(ml_dtypes.float8_e5m2, True),
    "fp6-e3m2": _spec(ml_dtypes.float6_e3m2fn, True),
    "fp6-e2m3": _spec(ml_dtypes.float6_e2m3fn, True),
    "fp4-e2m1": _spec(ml_dtypes.float4_e2m1fn, True),
}


def up(x: np.ndarray) -> np.ndarray:
    """``x`` rounded up past the float64 error of a few additions and products before it."""
    return np.asarray(np.nextafter(x * (1.0 + 2.0**-48), np.inf), dtype=np.float64)


def cast(p: np.ndarray, spec: ElementSpec) -> np.ndarray:
    """``p`` (float32 or float64, any shape) cast to the element type, round to nearest even,
    saturating as ONNX ``saturate=1`` where ``spec.saturates``; float64 of the same shape.
    NaN stays NaN (``ml_dtypes`` turns NaN into -0 for fp6 and fp4, which have no NaN)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if spec.saturates:
            p = np.clip(p, -spec.max, spec.max)
        out = p.astype(spec.dtype).astype(np.float64)
    return np.where(np.isnan(p), np.nan, out)


def elem_radius(p: np.ndarray, spec: ElementSpec, rounding: Rounding) -> np.ndarray:
    """A bound on ``|cast(p) - p|`` for float64 ``p`` (any shape, same shape out); with
    ``rounding="any"`` for a cast to either neighbouring grid point. ``inf`` where ``p`` is
    not finite or the cast overflows to inf."""
    a = np.abs(np.asarray(p, dtype=np.float64))
    steps = spec.mant if rounding == "any" else spec.mant + 1
    r = np.maximum(a * 2.0**-steps, 2.0 ** (spec.emin - steps))
    with np.errstate(invalid="ignore", over="ignore"):
        if spec.saturates:
            r = np.maximum(r, np.where(a > spec.max, up(a - spec.max), 0.0))
        else:
            half_top = 2.0 ** (int(np.floor(np.log2(spec.max))) - spec.mant - 1)
            limit = spec.max if rounding == "any" else spec.max + half_top
            over = a > spec.max if rounding == "any" else a >= limit
            r = np.where(over, np.inf, r)
    return np.where(np.isfinite(a), r, np.inf)


def to_float32(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(float32(t), |float32(t) - t|)``: the tensor a runtime holds, and its distance to
    ``t`` (exact in float64 wherever ``float32(t)`` is finite; inf where it overflows)."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        t32 = t.astype(np.float32)
        gap = np.abs(t32.astype(np.float64) - t)
    return t32, np.where(np.isnan(t), 0.0, gap)


def finite_values(spec: ElementSpec) -> np.ndarray:
    """All finite values of a float8 type (both zeros included), float32, in code order, as
    onnxruntime's ``compute_scale_zp_float8`` lists them."""
    codes = np.arange(256, dtype=np.uint8).view(spec.dtype).astype(np.float32)
    return np.asarray(codes[np.isfinite(codes)], dtype=np.float32)


@dataclass(frozen=True)
class FloatFormat:
    """A floating-point element type, optionally (fp8) with onnxruntime's per-tensor scale.
    ``t`` of any shape; float64 in and out."""

    kind: FloatKind
    scaled: bool = False
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        if self.kind not in get_args(FloatKind):
            raise InputError(f"unknown floating format {self.kind!r}")
        if self.scaled and not self.kind.startswith("fp8"):
            raise InputError(f"format {self.kind!r}: :scaled is for fp8 only")
        if self.rounding not in ("nearest", "any"):
            raise InputError(f"format {self.kind!r}: rounding must be nearest or any")

    @property
    def spec(self) -> ElementSpec:
        return SPECS[self.kind]

    def scale(self, t: np.ndarray) -> np.float32:
        """The per-tensor float32 scale onnxruntime's quantizer gives ``float32(t)`` (1 when
        not ``scaled``)."""
        if not self.scaled:
            return np.float32(1.0)
        with np.errstate(over="ignore", invalid="ignore"):
            std = np.std(np.asarray(t, dtype=np.float64).astype(np.float32))
        std_f8 = np.std(finite_values(self.spec))
        s = np.float32(np.array(std / std_f8, dtype=np.float32))
        return s if np.isfinite(s) and s > 0 else np.float32(1.0)

    def quantize(self, t: np.ndarray) -> np.ndarray:
        """``float32(t)`` cast to the format (then scaled back), as float64 of ``t``'s shape."""
        t32, _ = to_float32(t)
        if not self.scaled:
            return cast(t32, self.spec)
        s = self.scale(t)
        with np.errstate(over="ignore", invalid="ignore"):
            y = cast(t32 / s, self.spec).astype(np.float32)
            return np.asarray((y * s).astype(np.float64))

    def radius(self, t: np.ndarray) -> np.ndarray:
        """An elementwise bound on ``|quantize(t) - t|``, float64 of ``t``'s shape."""
        t = np.asarray(t, dtype=np.float64)
        t32, gap = to_float32(t)
        spec = self.spec
        if not self.scaled:
            r32 = elem_radius(t32.astype(np.float64), spec, self.rounding)
            with np.errstate(over="ignore", invalid="ignore"):
                r = np.where(gap > 0, up(r32 + gap), r32)
            # Past float32's range, t32 is inf: bound the cast of t itself.
            return np.where(np.isinf(t32) & np.isfinite(t), elem_radius(t, spec, self.rounding), r)
        s = self.scale(t)
        sf = float(s)
        with np.errstate(over="ignore", invalid="ignore"):
            x = (t32 / s).astype(np.float64)
            y = cast(x, spec)
            a32 = np.abs(t32.astype(np.float64))
            # |fl32(y s) - y s| + |y - x| s + |fl32(t32/s) s - t32| + |t32 - t|
            r = sf * elem_radius(x, spec, self.rounding)
            r = r + U32 * (np.abs(y) * sf + a32) + T32 * (1.0 + sf) + gap
            return np.where(np.isfinite(t32), up(r), np.inf)

    def describe(self) -> str:
        return (
            self.kind
            + (":scaled" if self.scaled else "")
            + (":rounding=any" if self.rounding == "any" else "")
        )
