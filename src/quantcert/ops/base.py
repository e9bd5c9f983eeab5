"""The operator protocol: every IR operation is one class with the same three methods.

Shapes: a batch dimension ``B`` leads every activation tensor; linear coefficient tensors
carry a further leading spec dimension ``S``: ``A`` has shape ``(S, B, *node_shape)``.

- ``forward(xs, params)``: the concrete evaluation. ``params`` maps the op's parameter names
  to tensors; a parameter may carry a leading batch dimension ``B`` (one parameter set per
  input in the batch), which attacks use to search over many parameter settings at once.
- ``interval(boxes, radius)``: interval transfer. For every input in ``boxes`` and every
  parameter ``theta`` with ``|theta - theta0| <= radius`` (elementwise), the output lies in
  the returned box. ``theta0`` is ``self.params``; ``with_params`` gives a copy of the op
  centred elsewhere. Parametrised ops accept centres and radii with a leading batch
  dimension ``B`` (one parameter box per batch element: branch and bound over parameters).
- ``backward(A, boxes, radius)``: linear backward transfer (CROWN style) of an *upper* bound:
  for all inputs in ``boxes`` and parameters in the radius,
  ``sum(A * out) <= sum_i sum(A_i * in_i) + const`` per spec row and batch element.
  Lower bounds are upper bounds of ``-A``. Ops without a linear transfer return ``None``
  and the engine falls back to intervals there.

Everything is float64. Rounding is covered by an outward margin of ``REL_MARGIN`` times the
magnitude of the quantities summed (see ``outward``): float64 dot products of ``n`` terms err
by at most ``n * 2**-53`` of the sum of magnitudes, and ``2**-32`` covers fan-in times depth
up to about two million.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

DTYPE = torch.float64
REL_MARGIN = 2.0**-32


@dataclass(frozen=True)
class Box:
    """Elementwise bounds ``lo <= x <= hi``; both of shape ``(B, *shape)``."""

    lo: Tensor
    hi: Tensor

    @property
    def center(self) -> Tensor:
        return (self.lo + self.hi) / 2

    @property
    def radius(self) -> Tensor:
        return (self.hi - self.lo) / 2

    @property
    def absmax(self) -> Tensor:
        """Largest magnitude ``max(|lo|, |hi|)``, elementwise."""
        return torch.maximum(self.lo.abs(), self.hi.abs())

    def intersect(self, other: Box) -> Box:
        return Box(torch.maximum(self.lo, other.lo), torch.minimum(self.hi, other.hi))

    @staticmethod
    def point(x: Tensor) -> Box:
        return Box(x, x)

    def to(self, device: torch.device) -> Box:
        return Box(self.lo.to(device), self.hi.to(device))


def outward(lo: Tensor, hi: Tensor, magnitude: Tensor) -> Box:
    """Widen ``[lo, hi]`` by the stated float64 rounding margin of a sum of ``magnitude``."""
    pad = REL_MARGIN * magnitude
    return Box(lo - pad, hi + pad)


def abs_upper_line(box: Box) -> tuple[Tensor, Tensor]:
    """Tightest linear upper bound of ``|z|`` on ``[lo, hi]``: ``|z| <= a*z + c`` (the chord).

    Used to linearise ``max_E sum(A E z) = |A| D |z|``: the product of a perturbed weight
    ``E`` in ``[-D, D]`` and an activation ``z`` in a box.
    """
    lo, hi = box.lo, box.hi
    width = hi - lo
    safe = torch.where(width > 0, width, torch.ones_like(width))
    a = torch.where(width > 0, (hi.abs() - lo.abs()) / safe, torch.sign(lo))
    c = torch.where(width > 0, hi.abs() - a * hi, torch.zeros_like(lo))
    # Rounding: the chord must not dip below |z| at the end points.
    c = c + REL_MARGIN * box.absmax
    return a, c


def spec_sum(A: Tensor, z: Tensor) -> Tensor:
    """``sum(A * z)`` over node dims: ``A`` (S, B, *shape), ``z`` (B, *shape) -> (S, B)."""
    return (A * z.unsqueeze(0)).flatten(2).sum(-1)


class Op:
    """Base class of IR operations. Subclasses set ``param_names`` and implement the protocol."""

    param_names: tuple[str, ...] = ()
    #: True where the op is a piecewise/smooth nonlinearity whose input bounds matter.
    nonlinear: bool = False

    def __init__(self) -> None:
        self.params: dict[str, Tensor] = {}

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        raise NotImplementedError

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor] | None:
        """Return ``(A_in per input, const (S, B), magnitude (S, B))`` or ``None``.

        ``magnitude`` bounds the sum of absolute values that went into ``const``; the engine
        uses it for the rounding margin.
        """
        return None

    def check_radius(self, radius: Mapping[str, Tensor]) -> str | None:
        """Why these parameter radii leave the op's domain (e.g. a negative variance), or
        ``None`` when every parameter in the box is valid."""
        return None

    def with_params(self, params: Mapping[str, Tensor]) -> Op:
        """A shallow copy whose parameters (the centres ``theta0``) are replaced by ``params``;
        values may be batched ``(B, *shape)``."""
        clone = copy.copy(self)
        clone.params = {**self.params, **params}
        return clone

    def to(self, device: torch.device) -> Op:
        """The op with every tensor it holds (parameters and constants) on ``device``: itself
        when they all are already, else a shallow copy."""
        moved: dict[str, object] = {}
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.device != device:
                moved[name] = value.to(device)
            elif isinstance(value, dict) and any(
                isinstance(v, Tensor) and v.device != device for v in value.values()
            ):
                moved[name] = {k: v.to(device) for k, v in value.items()}
        if not moved:
            return self
        clone = copy.copy(self)
        for name, value in moved.items():
            setattr(clone, name, value)
        return clone

    def describe(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return self.describe()
