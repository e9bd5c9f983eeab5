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


def _matches(net: Network, name: str, pattern: str) -> bool:
    """``pattern`` names the IR parameter, its layer, or its initializer in the model file."""
    src = net.sources.get(name)
    return (
        name == pattern
        or name.split(".")[0] == pattern
        or (src is not None and src.initializer == pattern)
    )


def _selected(net: Network, select: Iterable[str] | None) -> dict[str, Tensor]:
    params = net.param_tensors()
    if select is None:
        return params
    chosen: dict[str, Tensor] = {}
    for pattern in select:
        hits = {k: v for k, v in params.items() if _matches(net, k, pattern)}
        if not hits:
            files = sorted({s.initializer for s in net.sources.values()})
            raise InputError(
                f"no parameter, layer or initializer named {pattern!r}; have {sorted(params)}"
                + (f" and initializers {files}" if files else "")
            )
        chosen.update(hits)
    return chosen


def _describe(
    net: Network, radius: Mapping[str, Tensor], how: dict[str, object]
) -> dict[str, object]:
    """The description echoed in results: how the radii were made, and which tensors of the
    model file they move (by initializer name) and which constants stay fixed."""
    out = dict(how)
    if net.sources:
        moved = {
            net.sources[k].initializer
            for k, r in radius.items()
            if k in net.sources and bool((r > 0).any())
        }
        out["tensors"] = sorted(moved)
        out["stated_on"] = "file initializers"
    else:
        out["tensors"] = sorted(k for k, r in radius.items() if bool((r > 0).any()))
        out["stated_on"] = "network parameters"
    if net.fixed:
        out["fixed_constants"] = list(net.fixed)
    return out


def _checked(net: Network, radius: dict[str, Tensor], how: dict[str, object]) -> Perturbation:
    """The perturbation, after every op confirmed its parameter box is inside its domain."""
    for node in net.nodes:
        prefix = node.name + "."
        mine = {k[len(prefix) :]: v for k, v in radius.items() if k.startswith(prefix)}
        problem = node.op.check_radius(mine) if mine else None
        if problem is not None:
            names = ", ".join(
                net.sources[prefix + p].initializer if prefix + p in net.sources else prefix + p
                for p in mine
            )
            raise InputError(
                f"perturbation of {node.name} ({names}): {problem}; leave it out with --select "
                "or use a smaller radius"
            )
    return Perturbation(radius, _describe(net, radius, how))


def _file_radius(net: Network, name: str, value: Tensor, delta: float) -> Tensor:
    """An absolute ``delta`` on the file's tensor, as the IR parameter's radius."""
    src = net.sources.get(name)
    if src is None:
        return torch.full_like(value, delta)
    return src.radius(torch.full(src.file_shape, delta, dtype=value.dtype), tuple(value.shape))


def _check_delta(value: float, flag: str) -> None:
    if not value >= 0 or value != value or value == float("inf"):
        raise InputError(f"{flag} must be a finite number >= 0, got {value}")


def absolute(net: Network, delta: float, select: Iterable[str] | None = None) -> Perturbation:
    """The seed's model: every selected parameter moves by at most ``delta``."""
    _check_delta(delta, "--delta")
    radius = {k: _file_radius(net, k, v, delta) for k, v in _selected(net, select).items()}
    return _checked(net, radius, {"kind": "absolute", "delta": delta})


def relative(net: Network, delta: float, select: Iterable[str] | None = None) -> Perturbation:
    """Each selected parameter moves by at most ``delta * |theta0|`` (the same whether stated
    on the file's tensor or on the IR parameter: ``|factor * t| = |factor| |t|``)."""
    _check_delta(delta, "--relative")
    radius = {k: delta * v.abs() for k, v in _selected(net, select).items()}
    return _checked(net, radius, {"kind": "relative", "delta": delta})


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
    return _checked(net, out, {"kind": "explicit"})
