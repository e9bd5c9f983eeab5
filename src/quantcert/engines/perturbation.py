"""Parameter perturbation sets: every selected parameter tensor gets an elementwise radius
``D`` and may take any value in ``[theta0 - D, theta0 + D]``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from quantcert.errors import InputError
from quantcert.network import Network


@dataclass(frozen=True)
class Perturbation:
    """``radius`` maps parameter names (``"<node>.<param>"``) to radius tensors; parameters
    not named are fixed. ``description`` echoes how the radii were made."""

    radius: Mapping[str, Tensor]
    description: dict[str, object] = field(default_factory=dict)

    def for_node(self, node: str) -> dict[str, Tensor]:
        """The radii of one node's parameters, keyed by the op's parameter name."""
        prefix = node + "."
        return {k[len(prefix) :]: v for k, v in self.radius.items() if k.startswith(prefix)}

    def to(self, device: torch.device) -> Perturbation:
        return Perturbation({k: v.to(device) for k, v in self.radius.items()}, self.description)

    @property
    def count(self) -> int:
        return sum(int((r > 0).sum()) for r in self.radius.values())


def inner_limits(t0: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Float limits strictly inside the real box ``|theta - t0| <= r``: the rounded end points
    moved one ulp towards ``t0``, so a witness never leaves the perturbation set by rounding."""
    lo = torch.minimum(torch.nextafter(t0 - r, t0), t0)
    hi = torch.maximum(torch.nextafter(t0 + r, t0), t0)
    return lo, hi


def _selected(net: Network, select: Iterable[str] | None) -> dict[str, Tensor]:
    params = net.param_tensors()
    if select is None:
        return params
    chosen: dict[str, Tensor] = {}
    for pattern in select:
        hits = {k: v for k, v in params.items() if k == pattern or k.split(".")[0] == pattern}
        if not hits:
            raise InputError(f"no parameter or layer named {pattern!r}; have {sorted(params)}")
        chosen.update(hits)
    return chosen


def _check_delta(value: float, flag: str) -> None:
    if not value >= 0 or value != value or value == float("inf"):
        raise InputError(f"{flag} must be a finite number >= 0, got {value}")


def absolute(net: Network, delta: float, select: Iterable[str] | None = None) -> Perturbation:
    """The seed's model: every selected parameter moves by at most ``delta``."""
    _check_delta(delta, "--delta")
    radius = {k: torch.full_like(v, delta) for k, v in _selected(net, select).items()}
    return Perturbation(radius, {"kind": "absolute", "delta": delta})


def relative(net: Network, delta: float, select: Iterable[str] | None = None) -> Perturbation:
    """Each selected parameter moves by at most ``delta * |theta0|``."""
    _check_delta(delta, "--relative")
    radius = {k: delta * v.abs() for k, v in _selected(net, select).items()}
    return Perturbation(radius, {"kind": "relative", "delta": delta})


def explicit(net: Network, radius: Mapping[str, Tensor]) -> Perturbation:
    """Per-tensor radius arrays (e.g. derived from a numeric format)."""
    params = net.param_tensors()
    out: dict[str, Tensor] = {}
    for name, r in radius.items():
        if name not in params:
            raise InputError(f"radius given for unknown parameter {name!r}")
        r = torch.as_tensor(r, dtype=params[name].dtype).expand_as(params[name]).clone()
        if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
            raise InputError(f"radius of {name!r} must be finite and >= 0")
        out[name] = r
    return Perturbation(out, {"kind": "explicit", "tensors": sorted(out)})
