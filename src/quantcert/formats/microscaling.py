"""Microscaling: OCP MX (blocks of 32 sharing an E8M0 scale; fp8, fp6, fp4 and int8
elements) and NVFP4 (blocks of 16 with an e4m3 scale and an fp32 per-tensor scale).

Both read the float32 tensor ``t32 = float32(t)`` and cut it into blocks of ``block``
consecutive elements along ``axis``. A last block shorter than ``block`` (axis length not a
multiple of it) is treated as padded with zeros: its scale comes from its own elements.
``radius`` adds ``|t32 - t|`` where ``t`` is not a float32 value.

**MX** (OCP Microscaling Formats spec v1.0, section 6.3, and Microsoft's ``microxcaling``
reference, ``mx/mx_ops.py:_quantize_mx``): per block, ``e = floor(log2(amax)) - emax_elem``
with ``emax_elem`` the exponent of the element's largest normal (e4m3 8, e5m2 15, e3m2 4,
e2m3 2, e2m1 2, int8 0), clamped below at -127 (an all-zero block gets -127); ``e > 127`` or a
NaN/inf in the block makes the scale NaN and the whole block NaN. ``X = 2^e`` (exact),
``P_i = cast(V_i / X)`` rounding to nearest even and clamping to the element's max (the
floor rule can put ``V_i / X`` above it, up to ``2^(emax_elem+1)``: that clamp is a real
error and the radius covers it), result ``X * P_i``. MXINT8 elements are ``k * 2^-6`` with
``k`` in ``[-127, 127]`` (symmetric, as ``microxcaling`` clamps), ``k = rint(64 * V_i / X)``.
``radius = X * radius_elem(V_i / X)``, exact since ``X`` is a power of two; with
``rounding="any"`` the element may round to either neighbour (the scale is as computed).

**NVFP4** (NVIDIA's two-level scaling: fp32 per tensor, e4m3 per block of 16, e2m1
elements): in float32, ``s_t = amax / 2688`` (``448 * 6``), ``s_b = e4m3(block_amax /
(6 s_t))`` (round to nearest even, saturating), ``p = V / (s_b s_t)``, element
``P = e2m1(p)`` saturating at ±6; ``quantize`` is the value the encoding represents,
``P * s_b * s_t`` exactly (float64 holds the product exactly). A block whose scale
``s_b s_t`` is 0 (all zeros, or below e4m3's range) quantizes to 0. The radius uses the
actual scales: the element's half step (or the clamp at 6, which the e4m3 rounding of
``s_b`` can cause) times ``s_b s_t``, plus the float32 rounding of ``s_b s_t`` and of the
division, plus a float32 rounding of the dequantized product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from quantcert.errors import InputError
from quantcert.formats.base import Rounding
from quantcert.formats.floating import SPECS, T32, U32, cast, elem_radius, to_float32, up

MXElement = Literal["fp8-e4m3", "fp8-e5m2", "fp6-e3m2", "fp6-e2m3", "fp4-e2m1", "int8"]

#: Exponent of the largest normal element value (OCP MX v1.0, table 1; ``microxcaling``).
EMAX_ELEM: dict[str, int] = {
    "fp8-e4m3": 8,
    "fp8-e5m2": 15,
    "fp6-e3m2": 4,
    "fp6-e2m3": 2,
    "fp4-e2m1": 2,
    "int8": 0,
}
E8M0_MIN, E8M0_MAX = -127, 127
INT8_STEP = 2.0**-6
INT8_MAX = 127
NVFP4_TENSOR_DIV = np.float32(448.0 * 6.0)

Back = Callable[[np.ndarray], np.ndarray]
A = np.ndarray


def _blocks(t32: np.ndarray, axis: int, block: int) -> tuple[np.ndarray, Back]:
    """``t32`` (any shape) as ``(..., n_blocks, block)`` blocks along ``axis``, zero-padded,
    and the function that takes such an array back to ``t32``'s shape."""
    shape = t32.shape
    t1 = np.atleast_1d(t32)
    if not -t1.ndim <= axis < t1.ndim:
        raise InputError(f"block format: axis {axis} is out of range for shape {shape}")
    moved = np.moveaxis(t1, axis, -1)
    n = moved.shape[-1]
    nb = -(-n // block)
    pad = [(0, 0)] * (moved.ndim - 1) + [(0, nb * block - n)]
    b = np.pad(moved, pad).reshape(*moved.shape[:-1], nb, block)

    def back(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(*moved.shape[:-1], nb * block)[..., :n]
        return np.moveaxis(flat, -1, axis).reshape(shape)

    return b, back


def _check(block: int, rounding: str) -> None:
    if block < 1:
        raise InputError(f"block format: block size must be positive, got {block}")
    if rounding not in ("nearest", "any"):
        raise InputError(f"block format: rounding must be nearest or any, got {rounding!r}")


@dataclass(frozen=True)
class MXFormat:
    """OCP MX: ``block`` elements along ``axis`` share a power-of-two E8M0 scale.
    ``t`` of any shape; float64 in and out."""

    element: MXElement
    block: int = 32
    axis: int = -1
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        if self.element not in get_args(MXElement):
            raise InputError(f"unknown MX element type {self.element!r}")
        _check(self.block, self.rounding)

    def _parts(self, t: np.ndarray) -> tuple[A, A, A, Back]:
        """Blocks of ``V / X``, ``X`` (``(..., n_blocks, 1)``; NaN for a NaN block), the gap
        ``|t32 - t|`` in blocks, and the way back to ``t``'s shape."""
        t32, gap = to_float32(t)
        v, back = _blocks(t32.astype(np.float64), self.axis, self.block)
        g, _ = _blocks(gap, self.axis, self.block)
        with np.errstate(invalid="ignore"):
            amax = np.max(np.abs(v), axis=-1, keepdims=True)
        exp = np.frexp(np.where(np.isfinite(amax), amax, 1.0))[1] - 1 - EMAX_ELEM[self.element]
        exp = np.where(amax == 0, E8M0_MIN, np.maximum(exp, E8M0_MIN))
        bad = ~np.isfinite(amax) | (exp > E8M0_MAX)
        x = np.where(bad, np.nan, np.ldexp(1.0, np.minimum(exp, E8M0_MAX)))
        with np.errstate(invalid="ignore"):
            return v / x, x, g, back

    def quantize(self, t: np.ndarray) -> np.ndarray:
        """The MX value of every element, float64 of ``t``'s shape."""
        p, x, _, back = self._parts(t)
        if self.element == "int8":
            with np.errstate(invalid="ignore"):
                q = np.clip(np.rint(p / INT8_STEP), -INT8_MAX, INT8_MAX) * INT8_STEP
        else:
            q = cast(p, SPECS[self.element])
        return back(q * x)

    def radius(self, t: np.ndarray) -> np.ndarray:
        """An elementwise bound on ``|quantize(t) - t|``, float64 of ``t``'s shape."""
        p, x, g, back = self._parts(t)
        if self.element == "int8":
            a = np.abs(p)
            step = INT8_STEP if self.rounding == "any" else INT8_STEP / 2
            top = INT8_MAX * INT8_STEP
            with np.errstate(invalid="ignore"):
                r = np.maximum(step, np.where(a > top, up(a - top), 0.0))
            r = np.where(np.isfinite(a), r, np.inf)
        else:
            r = elem_radius(p, SPECS[self.element], self.rounding)
        r = np.where(np.isnan(x), np.inf, r * np.where(np.isnan(x), 1.0, x))
        return back(np.where(g > 0, up(r + g), r))

    def describe(self) -> str:
        name = "mxfp4" if self.element == "fp4-e2m1" else f"mx{self.element}"
        extra = "" if self.axis == -1 else f":axis={self.axis}"
        return name + extra + (":rounding=any" if self.rounding == "any" else "")


@dataclass(frozen=True)
class NVFP4Format:
    """NVFP4: e2m1 elements, an e4m3 scale per ``block`` along ``axis``, an fp32 scale per
    tensor. ``t`` of any shape; float64 in and out."""

    block: int = 16
    axis: int = -1
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        _check(self.block, self.rounding)

    def scales(self, t: np.ndarray) -> tuple[np.float32, np.ndarray]:
        """``(s_t, s_b)``: the float32 tensor scale and the e4m3 block scales (float32,
        ``(..., n_blocks, 1)`` with ``axis`` moved last)."""
        t32, _ = to_float32(t)
        v, _ = _blocks(t32, self.axis, self.block)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            amax = np.float32(np.max(np.abs(t32))) if t32.size else np.float32(0.0)
            s_t = np.float32(amax / NVFP4_TENSOR_DIV)
            bamax = np.max(np.abs(v), axis=-1, keepdims=True)
            raw = np.where(bamax == 0, np.float32(0.0), bamax / (np.float32(6.0) * s_t))
            s_b = cast(raw.astype(np.float32), SPECS["fp8-e4m3"]).astype(np.float32)
        return s_t, s_b

    def _parts(self, t: np.ndarray) -> tuple[A, A, A, A, A, Back]:
        """Blocks of ``V``, ``p = fl32(V / S')``, the exact scale ``S = s_b s_t``, the float32
        ``S' = fl32(S)`` (both ``(..., n_blocks, 1)``), the gap ``|t32 - t|``, and the way
        back; ``S`` is NaN where the tensor has a NaN or inf."""
        t32, gap = to_float32(t)
        s_t, s_b = self.scales(t)
        v, back = _blocks(t32, self.axis, self.block)
        g, _ = _blocks(gap, self.axis, self.block)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            s32 = (s_b * s_t).astype(np.float32)
            exact = s_b.astype(np.float64) * float(s_t)
            if not np.isfinite(s_t):
                exact = np.full_like(exact, np.nan)
            p = np.where(s32 > 0, v / np.where(s32 > 0, s32, np.float32(1.0)), np.float32(0.0))
        return v.astype(np.float64), p.astype(np.float64), exact, s32.astype(np.float64), g, back

    def quantize(self, t: np.ndarray) -> np.ndarray:
        """The NVFP4 value of every element, float64 of ``t``'s shape."""
        _, p, s, _, _, back = self._parts(t)
        q = cast(p, SPECS["fp4-e2m1"])
        with np.errstate(invalid="ignore"):
            return back(np.where(np.isnan(s), np.nan, q * np.where(np.isnan(s), 0.0, s)))

    def radius(self, t: np.ndarray) -> np.ndarray:
        """An elementwise bound on ``|quantize(t) - t|``, float64 of ``t``'s shape."""
        v, p, s, s32, g, back = self._parts(t)
        spec = SPECS["fp4-e2m1"]
        q = cast(p, spec)
        with np.errstate(invalid="ignore", over="ignore"):
            a = np.abs(p)
            # |P - p| S + |p| |S - S'| + |p S' - V| + a float32 dequantization of P S.
            r = elem_radius(p, spec, self.rounding) * s
            r = r + a * (U32 * s + T32) + U32 * np.abs(v) + T32 * s32 + U32 * np.abs(q) * s
            r = np.where(s32 > 0, up(r), np.abs(v))
            r = np.where(np.isnan(s), np.inf, r)
            return back(np.where(g > 0, up(r + g), r))

    def describe(self) -> str:
        extra = "" if self.axis == -1 else f":axis={self.axis}"
        return "nvfp4" + extra + (":rounding=any" if self.rounding == "any" else "")
