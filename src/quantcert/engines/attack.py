"""Witness search: projected signed-gradient ascent jointly over the input box and the
parameter box, with random restarts and parameter-box corners. Every returned value is
re-evaluated in float64 at the returned (x, theta), which lies inside both boxes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from quantcert.engines.perturbation import Perturbation, inner_limits
from quantcert.network import Network
from quantcert.ops.base import DTYPE, Box

#: objective(x (B, *in), params {name: (B, *shape)}) -> (B, K) values to maximise, per column.
Objective = Callable[[Tensor, Mapping[str, Tensor]], Tensor]


@dataclass(frozen=True)
class Witness:
    """A concrete (x, theta) and the objective value it attains (float64)."""

    value: float
    x: Tensor  # (*input_shape)
    params: dict[str, Tensor]  # the perturbed tensors that differ from theta0

    def offsets(self, net: Network) -> dict[str, Tensor]:
        nominal = net.param_tensors()
        return {k: v - nominal[k] for k, v in self.params.items()}


def _param_limits(net: Network, pert: Perturbation) -> dict[str, tuple[Tensor, Tensor]]:
    """Per perturbed tensor, the float limits strictly inside its box (``inner_limits``)."""
    nominal = net.param_tensors()
    return {name: inner_limits(nominal[name], r) for name, r in pert.radius.items()}


def search(
    net: Network,
    pert: Perturbation,
    box: Box,
    objective: Objective,
    columns: int,
    restarts: int = 8,
    steps: int = 60,
    seed: int = 0,
    warm: Mapping[str, Tensor] | None = None,
    param_box: Mapping[str, tuple[Tensor, Tensor]] | None = None,
) -> list[Witness]:
    """Maximise each of the ``columns`` objective columns over x in any of the boxes
    (``box``: a batch of B boxes) and theta in the perturbation set. The first start in each
    box is its centre with the nominal parameters, or with ``warm`` (a parameter setting
    found before) when given. ``param_box`` narrows some tensors to one sub-box per input box
    (limits (B, *shape), inside the perturbation set). Returns the best witness per column."""
    gen = torch.Generator(device=box.lo.device).manual_seed(seed)
    b = box.lo.shape[0]
    n = b * columns * restarts
    which = torch.arange(n) // (columns * restarts)
    column = (torch.arange(n) // restarts) % columns
    lo, hi = box.lo[which], box.hi[which]
    limits = _param_limits(net, pert)
    if param_box is not None:
        limits.update({k: (v[0][which], v[1][which]) for k, v in param_box.items()})
    first = torch.arange(n) % restarts == 0
    x = lo + (hi - lo) * torch.rand(lo.shape, generator=gen, dtype=DTYPE)
    x[first] = ((lo + hi) / 2)[first]
    params = {}
    nominal = net.param_tensors()
    for name, (plo, phi) in limits.items():
        shape = nominal[name].shape
        ref = nominal[name] if warm is None else warm[name]
        start = torch.clamp(ref.expand(n, *shape), plo, phi)
        if restarts > 1:  # the other starts: random corners of the parameter box
            corner = torch.randint(0, 2, (n, *shape), generator=gen).to(DTYPE)
            start = torch.where(
                first.reshape(-1, *[1] * len(shape)), start, plo + (phi - plo) * corner
            )
        params[name] = start
    for step in range(steps):
        size = 0.5 * (1 - step / steps) ** 2 + 1e-3
        x, params = _ascent_step(objective, column, x, params, lo, hi, limits, size)
    with torch.no_grad():
        values = objective(x, params)[torch.arange(n), column]
    return [_best(values, x, params, column == k) for k in range(columns)]


def search_rows(
    net: Network, pert: Perturbation, box: Box, objective: Objective, steps: int = 20
) -> tuple[Tensor, dict[str, Tensor]]:
    """One ascent per box (row) from its centre and the nominal parameters, on objective
    column 0. Returns per row the final value (float64) and the parameters reached."""
    n = box.lo.shape[0]
    limits = _param_limits(net, pert)
    nominal = net.param_tensors()
    params = {k: nominal[k].expand(n, *nominal[k].shape).clone() for k in limits}
    x = box.center
    column = torch.zeros(n, dtype=torch.long)
    for step in range(steps):
        size = 0.5 * (1 - step / steps) ** 2 + 1e-3
        x, params = _ascent_step(objective, column, x, params, box.lo, box.hi, limits, size)
    with torch.no_grad():
        values = objective(x, params)[:, 0]
    return values, params


def _ascent_step(
    objective: Objective,
    column: Tensor,
    x: Tensor,
    params: dict[str, Tensor],
    lo: Tensor,
    hi: Tensor,
    limits: dict[str, tuple[Tensor, Tensor]],
    size: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    x = x.detach().requires_grad_(True)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    value = objective(x, leaves)[torch.arange(x.shape[0]), column].sum()
    grads = torch.autograd.grad(value, [x, *leaves.values()], allow_unused=True)
    with torch.no_grad():
        gx = grads[0] if grads[0] is not None else torch.zeros_like(x)
        x_new = torch.clamp(x + size * (hi - lo) * gx.sign(), lo, hi)
        new = {}
        for (name, leaf), g in zip(leaves.items(), grads[1:], strict=True):
            plo, phi = limits[name]
            moved = leaf.detach()  # shares memory with this step's start, not needed after
            if g is not None:  # in place: these tensors are batch x parameter count
                moved.add_(g.sign_().mul_(phi - plo).mul_(size))
                moved.clamp_(min=plo, max=phi)
            new[name] = moved
    return x_new, new


def polish(
    net: Network,
    pert: Perturbation,
    box: Box,
    objective: Objective,
    witness: Witness,
    column: int,
    rounds: int = 50,
) -> Witness:
    """Greedy corner moves from a witness of objective ``column``: each round tries every
    perturbed scalar at either end of its box (and every input coordinate at either end of
    ``box``, batch 1) in one batch, and keeps the single best improving move. Maxima over
    parameter boxes often sit at corners that signed-gradient ascent misses (a ReLU off at
    the start gives no gradient towards the corner that switches it on)."""
    limits = _param_limits(net, pert)
    names = list(limits)
    lo = torch.cat([box.lo.flatten()] + [limits[k][0].flatten() for k in names])
    hi = torch.cat([box.hi.flatten()] + [limits[k][1].flatten() for k in names])
    current = torch.cat([witness.x.flatten()] + [witness.params[k].flatten() for k in names])
    movable = (hi > lo).nonzero().flatten()
    value = witness.value
    for _ in range(rounds):
        if movable.numel() == 0:
            break
        cands = current.expand(2 * movable.numel(), -1).clone()
        rows = torch.arange(2 * movable.numel())
        cols = movable.repeat(2)
        cands[rows, cols] = torch.cat([lo[movable], hi[movable]])
        with torch.no_grad():
            x, params = _unflatten(net, names, cands, box)
            values = objective(x, params)[:, column]
        i = int(values.argmax())
        if not float(values[i]) > value:
            break
        value, current = float(values[i]), cands[i]
    x, params = _unflatten(net, names, current.unsqueeze(0), box)
    return (
        Witness(value, x[0], {k: v[0] for k, v in params.items()})
        if value > witness.value
        else witness
    )


def _unflatten(
    net: Network, names: list[str], flat: Tensor, box: Box
) -> tuple[Tensor, dict[str, Tensor]]:
    """Rows of ``[x, theta...]`` -> inputs (N, *in) and parameter tensors (N, *shape)."""
    nominal = net.param_tensors()
    n_x = box.lo[0].numel()
    x = flat[:, :n_x].reshape(-1, *box.lo.shape[1:])
    params, start = {}, n_x
    for k in names:
        size = nominal[k].numel()
        params[k] = flat[:, start : start + size].reshape(-1, *nominal[k].shape)
        start += size
    return x, params


def _best(values: Tensor, x: Tensor, params: dict[str, Tensor], mask: Tensor) -> Witness:
    masked = torch.where(mask, values, torch.full_like(values, -torch.inf))
    i = int(masked.argmax())
    return Witness(
        float(values[i]),
        x[i].detach().clone(),
        {k: v[i].detach().clone() for k, v in params.items()},
    )


def difference_objective(net: Network, signs: Tensor) -> Objective:
    """Columns ``signs[k] * (f_theta(x) - f_theta0(x))[out[k]]``; ``signs`` (K, n_out)."""

    def objective(x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        d = (net(x, params) - net(x)).flatten(1)
        out: Tensor = d @ signs.T
        return out

    return objective
