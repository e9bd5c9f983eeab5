"""The numeric-format protocol: every format family is one small frozen dataclass with the
same three methods, as every IR op has the same transfer protocol.

- ``quantize(t)``: the value exactly as the reference quantizer computes it (onnxruntime's
  QuantizeLinear/DequantizeLinear for integers, ``ml_dtypes`` casts for floating formats),
  as float64 of the same shape.
- ``radius(t)``: an elementwise bound on ``|quantize(t) - t|``, sound for every element
  (ties, the largest element, subnormals, saturation). With ``rounding="any"`` it is one
  full grid step instead of half: the certificate then holds for every kernel that rounds
  to a neighbouring grid point (onnxruntime's fused kernels can differ from the QDQ
  reference by one step at ties, microsoft/onnxruntime#32132).
- ``describe()``: the format's name and parameters, as parsed back by ``parse_format``.

Arrays are numpy float64; ``t`` of any shape unless a family says otherwise (per-channel and
block formats need the axis they quantize along).
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np

Rounding = Literal["nearest", "any"]


@runtime_checkable
class Format(Protocol):
    """A numeric format: the exact quantizer and a sound bound on its error."""

    @property
    def rounding(self) -> Rounding: ...

    def quantize(self, t: np.ndarray) -> np.ndarray: ...

    def radius(self, t: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str: ...
