"""Integer k-bit formats (k from 2 to 16), with scale and zero point exactly as
onnxruntime's quantizer computes them (or PyTorch's observers).

onnxruntime (``onnxruntime/quantization/quant_utils.py``), for a float32 weight:

- range (``get_qmin_qmax_for_qType``): full ``[-2^(b-1), 2^(b-1)-1]`` / ``[0, 2^b-1]``;
  symmetric int8 and int16 use ``[-(2^(b-1)-1), 2^(b-1)-1]`` (int4 keeps ``[-8, 7]``);
  ``reduce_range``: uint ``[0, 2^(b-1)-1]``, int8 ``[-64, 64]``, int16 ``[-16384, 16384]``,
  int4 ``[-4, 3]``. Other widths (no ONNX type) follow the same rules: signed symmetric
  uses the restricted range, signed reduced ``[-2^(b-2), 2^(b-2)]``.
- per tensor / per channel (``compute_scale_zp``, each channel on its own):
  ``rmin = min(rmin, 0)``, ``rmax = max(rmax, 0)`` in float32; symmetric: both ``±absmax``;
  ``scale64 = (f64(rmax) - f64(rmin)) / (qmax - qmin)``; if ``scale64 < float32 tiny`` then
  scale 1, zero point 0; else zero point ``round((qmin+qmax)/2)`` (symmetric) or
  ``round(qmin - rmin/scale64)`` (float64, half to even) and scale ``float32(scale64)``.
- blocks (``compute_scale_zp_blocked``): the same, except ``rmax - rmin`` is taken in
  float32, the degenerate test is on the float32 scale, the asymmetric zero point divides by
  the float32 scale and is clipped to ``[qmin, qmax]``, a degenerate symmetric block keeps the
  midpoint zero point, and ``reduce_range`` is never applied (we apply it when asked).
- quantize (``quantize_nparray``, the ONNX QuantizeLinear): ``q = clip(rint(x / s) + zp)`` in
  float32, clipped to the storage type's full range (``clip_range``), not to the range the
  scale was computed for: int4 ``reduce_range`` can store 4, int8 symmetric -128; dequantize
  (DequantizeLinear): ``y = float32((q - zp) * s)``.

PyTorch (``torch/ao/quantization/observer.py``, ``_calculate_qparams``): range full, halved
(floor) by ``reduce_range``; symmetric ``scale = max(amax / ((qmax-qmin)/2), eps)``, zero point
0 (uint8: 128, uint16: 2^15, other unsigned widths ``(qmin+qmax)//2``); asymmetric
``scale = max(float32(rmax - rmin) / (qmax-qmin), eps)``, ``zp = clamp(qmin - round(rmin/s))``;
``eps = 2^-23``. Quantize as ATen's ``quantize_per_tensor``: ``q = clip(rint(x * float32(1/s))
+ zp)``, clipped to the storage type's full range as well.

The input is cast to float32 first (the ONNX initializer holds float32); a value that is not
finite in float32 is an ``InputError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from quantcert.errors import InputError
from quantcert.formats.base import Rounding

Granularity = Literal["tensor", "channel", "group"]
Observer = Literal["onnxruntime", "torch"]

_TINY32 = float(np.finfo(np.float32).tiny)
_EPS32 = float(np.finfo(np.float32).eps)
_U23 = 2.0**-23  # bound on a float32 rounding's relative error, with room to spare
_SUB32 = 2.0**-149  # bound on a float32 rounding's absolute error in the subnormal range
_SAFE = 1.0 + 2.0**-50  # covers the float64 roundings of the radius's own arithmetic


@dataclass(frozen=True)
class _Params:
    """Per-element quantization parameters and intermediate values, all shaped like ``t``."""

    x32: np.ndarray  # float32 input
    scale: np.ndarray  # float32
    zp: np.ndarray  # float64 (integral)
    v: np.ndarray  # float32 quotient x / scale as the kernel computes it
    raw: np.ndarray  # float64 rint(v) + zp, before clipping
    q: np.ndarray  # float64 clipped integer
    deq: np.ndarray  # float32 dequantized value


@dataclass(frozen=True)
class IntFormat:
    """``bits``-bit integers, signed or not, symmetric or asymmetric, one scale per tensor,
    per slice along ``axis`` (``channel``), or per block of ``group_size`` along ``axis``."""

    bits: int
    signed: bool = True
    symmetric: bool = True
    granularity: Granularity = "tensor"
    axis: int = 0
    group_size: int | None = None
    reduce_range: bool = False
    observer: Observer = "onnxruntime"
    rounding: Rounding = "nearest"

    # -- ranges and parameters ------------------------------------------------------------

    def qrange(self) -> tuple[int, int]:
        """``(qmin, qmax)``, the integer range the scale and zero point are computed for."""
        b = self.bits
        if not 2 <= b <= 16:
            raise InputError(f"integer format: bits must be 2 to 16, got {b}")
        lo, hi = (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if self.signed else (0, 2**b - 1)
        if self.observer == "torch":
            return (lo // 2, hi // 2) if self.reduce_range else (lo, hi)
        if self.reduce_range:
            if not self.signed:
                return 0, 2 ** (b - 1) - 1
            return (-4, 3) if b == 4 else (-(2 ** (b - 2)), 2 ** (b - 2))
        if self.symmetric and self.signed and b != 4:
            return -(2 ** (b - 1) - 1), 2 ** (b - 1) - 1
        return lo, hi

    def clip_range(self) -> tuple[int, int]:
        """The storage type's full range, which QuantizeLinear (and ATen) saturate to, whatever
        range the scale was computed for (``qrange``)."""
        b = self.bits
        return (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if self.signed else (0, 2**b - 1)

    def _blocks(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], int]:
        """``x`` as rows that share one scale: ``(rows, shape after moving axis, axis)``."""
        if self.granularity == "tensor":
            return x.reshape(1, -1), x.shape, 0
        if x.ndim == 0:
            raise InputError(f"{self.describe()}: a scalar has no axis {self.axis}")
        if not -x.ndim <= self.axis < x.ndim:
            raise InputError(
                f"{self.describe()}: axis {self.axis} is out of range for shape {x.shape}"
            )
        axis = self.axis % x.ndim
        if self.granularity == "channel":
            moved = np.moveaxis(x, axis, 0)
            return moved.reshape(moved.shape[0], int(np.prod(moved.shape[1:]))), moved.shape, axis
        g = self.group_size
        if g is None or g < 1:
            raise InputError(f"{self.describe()}: a group format needs a positive group size")
        if x.shape[axis] % g:
            raise InputError(
                f"{self.describe()}: group size {g} does not divide axis {self.axis} "
                f"of length {x.shape[axis]} (shape {x.shape})"
            )
        moved = np.moveaxis(x, axis, -1)
        return moved.reshape(-1, g), moved.shape, axis

    def _unblock(self, rows: np.ndarray, moved: tuple[int, ...], axis: int) -> np.ndarray:
        out = rows.reshape(moved)
        if self.granularity == "channel":
            return np.moveaxis(out, 0, axis)
        if self.granularity == "group":
            return np.moveaxis(out, -1, axis)
        return out

    def scale_zero_point(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scale (float32) and zero point (float64, integral) for each row of ``rows``
        (float32, shape ``(R, K)``, K >= 1); both of shape ``(R,)``."""
        qmin, qmax = self.qrange()
        dq = float(qmax - qmin)
        rmin = np.minimum(rows.min(axis=1), np.float32(0))
        rmax = np.maximum(rows.max(axis=1), np.float32(0))
        if self.symmetric:
            rmax = np.maximum(np.abs(rmin), np.abs(rmax))
            rmin = -rmax
        if self.observer == "torch":
            return self._torch_params(rmin, rmax, qmin, qmax)
        with np.errstate(over="ignore"):
            if self.granularity == "group":
                dr = (rmax - rmin).astype(np.float64)  # float32 subtraction, as ORT does
            else:
                dr = rmax.astype(np.float64) - rmin.astype(np.float64)
            scale64 = dr / dq
            scale32 = scale64.astype(np.float32)
        mid = float(np.round((qmin + qmax) / 2.0))
        if self.granularity == "group":
            degenerate = scale32 < _TINY32
            scale = np.where(degenerate, np.float32(1.0), scale32)
            if self.symmetric:
                zp = np.full(rows.shape[0], mid)
            else:
                raw = np.round(qmin - rmin.astype(np.float64) / scale.astype(np.float64))
                zp = np.where(degenerate, 0.0, np.clip(raw, qmin, qmax))
            return scale, zp
        degenerate = scale64 < _TINY32
        safe = np.where(degenerate, 1.0, scale64)
        if self.symmetric:
            zp = np.full(rows.shape[0], mid)
        else:
            zp = np.round(qmin - rmin.astype(np.float64) / safe)
        return np.where(degenerate, np.float32(1.0), scale32), np.where(degenerate, 0.0, zp)

    def _torch_params(
        self, rmin: np.ndarray, rmax: np.ndarray, qmin: int, qmax: int
    ) -> tuple[np.ndarray, np.ndarray]:
        eps = np.float32(_EPS32)
        if self.symmetric:
            # float32 / float32 is the float64 quotient rounded once more (innocuous).
            scale = np.maximum(
                (rmax.astype(np.float64) / ((qmax - qmin) / 2)).astype(np.float32), eps
            )
            if self.signed:
                mid = 0
            elif self.bits == 8:
                mid = 128
            elif self.bits == 16:
                mid = 2**15
            else:
                mid = (qmin + qmax) // 2
            return scale, np.full(rmax.shape, float(mid))
        with np.errstate(over="ignore"):
            span = (rmax - rmin).astype(np.float64)  # float32 subtraction, as torch does
        scale = np.maximum((span / (qmax - qmin)).astype(np.float32), eps)
        zp = qmin - np.rint(rmin / scale).astype(np.float64)
        return scale, np.clip(zp, qmin, qmax)

    def _params(self, t: np.ndarray) -> _Params:
        x = np.asarray(t, dtype=np.float64)
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        if not np.isfinite(x32).all():
            bad = x[~np.isfinite(x32)].flat[0]
            raise InputError(f"{self.describe()}: value {float(bad)!r} is not finite in float32")
        rows, moved, axis = self._blocks(x32)
        if x32.size == 0:
            s_rows = np.ones(rows.shape, np.float32)
            z_rows = np.zeros(rows.shape)
        else:
            s1, z1 = self.scale_zero_point(rows)
            s_rows = np.broadcast_to(s1[:, None], rows.shape)
            z_rows = np.broadcast_to(z1[:, None], rows.shape)
        scale = self._unblock(np.ascontiguousarray(s_rows), moved, axis)
        zp = self._unblock(np.ascontiguousarray(z_rows), moved, axis)
        qmin, qmax = self.clip_range()
        with np.errstate(over="ignore"):
            v = x32 * (np.float32(1.0) / scale) if self.observer == "torch" else x32 / scale
        raw = np.rint(v).astype(np.float64) + zp
        q = np.clip(raw, qmin, qmax)
        deq = ((q - zp).astype(np.float32) * scale).astype(np.float32)
        return _Params(x32, scale, zp, v, raw, q, deq)

    # -- the protocol ---------------------------------------------------------------------

    def quantize(self, t: np.ndarray) -> np.ndarray:
        """``t`` (any shape; rank >= 1 per channel or group) quantized and dequantized as the
        reference does (QuantizeLinear -> DequantizeLinear in float32, or ATen for
        ``observer="torch"``); same shape, float64. For widths without an ONNX type (not
        4, 8, 16) the arithmetic is the same ONNX formulas in float32."""
        return self._params(t).deq.astype(np.float64)

    def radius(self, t: np.ndarray) -> np.ndarray:
        """A bound on ``|quantize(t) - t|`` for every element; same shape as ``t``, float64.

        In range: ``step * s`` (step 1/2, or 1 for ``rounding="any"``) plus the float32
        roundings of the cast of ``t``, of the quotient ``t / s`` and of the dequantization.
        Saturated (``rint(t/s) + zp`` outside ``[qmin, qmax]``): the exact distance from ``t``
        to the clip value, rounded up, plus the dequantization's rounding; every kernel that
        rounds to a neighbouring grid point saturates there too."""
        x = np.asarray(t, dtype=np.float64)
        p = self._params(x)
        s = p.scale.astype(np.float64)
        deq = p.deq.astype(np.float64)
        cast_err = np.abs(p.x32.astype(np.float64) - x)  # exact (Sterbenz)
        rel = 2 * _U23 if self.observer == "torch" else _U23  # two roundings for x * (1/s)
        div_err = s * (rel * np.abs(p.v.astype(np.float64)) + _SUB32)
        deq_err = _U23 * np.abs(deq) + _SUB32
        step = 1.0 if self.rounding == "any" else 0.5
        inside = (step * s + div_err + cast_err + deq_err) * _SAFE
        exact = (p.q - p.zp) * s  # exact in float64: |q - zp| < 2^17, s has 24 bits
        sat = (np.nextafter(np.abs(exact - x), np.inf) + deq_err) * _SAFE
        clipped = p.raw != p.q
        return np.where(clipped, sat, inside)

    def describe(self) -> str:
        """The format string, e.g. ``int4:group=128`` or ``uint8:per-channel:axis=1``."""
        parts = [f"{'' if self.signed else 'u'}int{self.bits}"]
        if self.granularity == "channel":
            parts.append("per-channel")
        elif self.granularity == "group":
            parts.append(f"group={self.group_size}")
        if self.axis != (-1 if self.granularity == "group" else 0):
            parts.append(f"axis={self.axis}")
        if self.signed and not self.symmetric:
            parts.append("asym")
        if not self.signed and self.symmetric:
            parts.append("sym")
        if self.reduce_range:
            parts.append("reduce-range")
        if self.observer == "torch":
            parts.append("observer=torch")
        if self.rounding == "any":
            parts.append("rounding=any")
        return ":".join(parts)
