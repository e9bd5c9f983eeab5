"""Fixed point ``Qm.n``: ``m`` integer bits (sign included when signed), ``n`` fraction bits.

The grid is ``2^-n``. Signed ``Qm.n`` holds ``[-2^(m-1), 2^(m-1) - 2^-n]`` (``m`` counts the
sign bit, so ``q4.12`` is a 16-bit word), unsigned ``[0, 2^m - 2^-n]``. Values round half to
even. A value the format cannot hold is an ``InputError`` naming the tensor and the value,
never a silent clip: with ``rounding="nearest"`` that is a value whose rounding leaves the
range, with ``rounding="any"`` any value outside the range (a kernel may round either way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantcert.errors import InputError
from quantcert.formats.base import Rounding


@dataclass(frozen=True)
class FixedFormat:
    int_bits: int
    frac_bits: int
    signed: bool = True
    rounding: Rounding = "nearest"
    #: Names the tensor in the error raised for a value outside the range.
    tensor: str = "tensor"

    def bounds(self) -> tuple[float, float]:
        """The smallest and the largest representable value (exact in float64)."""
        step = 2.0**-self.frac_bits
        if self.signed:
            return -(2.0 ** (self.int_bits - 1)), 2.0 ** (self.int_bits - 1) - step
        return 0.0, 2.0**self.int_bits - step

    def _rounded(self, t: np.ndarray) -> np.ndarray:
        """Round ``t`` (any shape) to the grid and check the range; same shape, float64."""
        x = np.asarray(t, dtype=np.float64)
        lo, hi = self.bounds()
        # Scaling by a power of two is exact (it can only overflow, caught below as inf).
        with np.errstate(over="ignore", invalid="ignore"):
            q = np.rint(x * 2.0**self.frac_bits) * 2.0**-self.frac_bits
        checked = x if self.rounding == "any" else q
        bad = ~(np.isfinite(x) & (checked >= lo) & (checked <= hi))
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            value = float(x[index]) if x.ndim else float(x)
            raise InputError(
                f"{self.tensor}: value {value!r} at index {index} is outside the range "
                f"[{lo!r}, {hi!r}] of {self.describe()}"
            )
        return q

    def quantize(self, t: np.ndarray) -> np.ndarray:
        """``t`` (any shape) rounded half to even to the grid ``2^-n``; same shape, float64."""
        return self._rounded(t)

    def radius(self, t: np.ndarray) -> np.ndarray:
        """Half a grid step ``2^-(n+1)`` (a full step ``2^-n`` for ``rounding="any"``) for every
        element of ``t``; same shape, float64. Exact: a value out of range is an error."""
        x = self._rounded(t)
        half = 2.0 ** -(self.frac_bits + (0 if self.rounding == "any" else 1))
        return np.full(x.shape, half, dtype=np.float64)

    def describe(self) -> str:
        """``qM.N`` with ``:unsigned`` and ``:rounding=any`` as they apply."""
        out = f"q{self.int_bits}.{self.frac_bits}"
        if not self.signed:
            out += ":unsigned"
        if self.rounding == "any":
            out += ":rounding=any"
        return out
