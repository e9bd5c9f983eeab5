"""Witness search for sigma (seed 000 Eq. 13): maximise ``s (f_n(x) - l)`` over x in a box
subject to ``s (z_p(x, theta) - t) < 0`` for some theta (the label flips).

Coordinates are normalised to the box (``u`` in [0, 1]^d). Each step moves theta by a signed
step towards the flip (``theta`` does not enter the objective) and ``x`` by
- a normalised ascent step on ``s z_n`` while the constraint has slack, or
- near the constraint, a Newton step back onto ``c = s (z_p - t) = -eta`` plus the ascent
  direction projected onto the constraint's tangent (box faces that block it held fixed).
Every iterate is checked in float64 on the network's outputs (``f_n >= l > f_p`` above,
``f_n < l <= f_p`` below); the best flipping one is returned, re-evaluated on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from quantcert.engines.attack import Witness, _param_limits
from quantcert.engines.bounds import Radii
from quantcert.engines.perturbation import Perturbation
from quantcert.network import Network
from quantcert.ops.base import DTYPE, Box

Params = dict[str, Tensor]


@dataclass(frozen=True)
class Problem:
    """One sigma query: threshold ``t`` in logit space, ``level`` in output space."""

    net: Network
    pert: Perturbation
    t: float
    level: float
    sigmoid: bool
    pair: Network
    pair_radii: Radii
    plain_radii: Radii
    limits: dict[str, tuple[Tensor, Tensor]] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits", _param_limits(self.net, self.pert))


def flips(p: Problem, side: str, f_n: Tensor, f_p: Tensor) -> Tensor:
    """Whether the labels really differ on ``side`` (bool, shape of ``f_n``)."""
    if side == "above":
        return (f_n >= p.level) & (f_p < p.level)
    return (f_n < p.level) & (f_p >= p.level)


def side_value(p: Problem, side: str, f_n: Tensor) -> Tensor:
    """``|f_n - l|`` signed for the side: ``f_n - l`` above, ``l - f_n`` below."""
    return f_n - p.level if side == "above" else p.level - f_n


def evaluate(p: Problem, side: str, x: Tensor, params: Params) -> tuple[Tensor, Tensor]:
    """Float64 outputs at (x (n, *in), params (n, ...)): the side value (n,), ``-inf`` where
    the label does not flip, and the flip mask (n,)."""
    with torch.no_grad():
        f_n = p.net(x).flatten(1)[:, 0]
        f_p = p.net(x, params).flatten(1)[:, 0]
    ok = flips(p, side, f_n, f_p)
    value = torch.where(ok, side_value(p, side, f_n), torch.full_like(f_n, -torch.inf))
    return value, ok


def side_search(
    p: Problem, side: str, boxes: Box, steps: int, restarts: int = 4, seed: int = 0
) -> Witness:
    """Best flipping witness over the ``boxes`` (B, *in); ``value`` is ``-inf`` when none of
    the ``B * restarts`` ascents found a flip."""
    s = 1.0 if side == "above" else -1.0
    gen = torch.Generator().manual_seed(seed)
    b = boxes.lo.shape[0]
    which = torch.arange(b * restarts) // restarts
    lo, hi = boxes.lo[which].flatten(1), boxes.hi[which].flatten(1)
    width = hi - lo
    u = torch.rand(lo.shape, generator=gen, dtype=DTYPE)
    u[torch.arange(u.shape[0]) % restarts == 0] = 0.5
    params = _greedy_corner(p, s, _to_x(p, lo, width, u))
    best = _Best(u.shape[0])
    for step in range(steps):
        size = 0.3 * (1 - step / steps) ** 2 + 1e-3
        x = _to_x(p, lo, width, u)
        best.update(p, side, x, params)
        u, params = _step(p, s, lo, width, u, params, size)
    best.update(p, side, _to_x(p, lo, width, u), params)
    return best.witness(p, side, boxes.lo.shape[1:])


def _to_x(p: Problem, lo: Tensor, width: Tensor, u: Tensor) -> Tensor:
    x = torch.minimum(torch.maximum(lo + u * width, lo), lo + width)
    return x.reshape(-1, *p.net.input_shape)


def _greedy_corner(p: Problem, s: float, x: Tensor) -> Params:
    """Per row, the parameter-box corner that moves ``s z_p`` down to first order at x."""
    nominal = p.net.param_tensors()
    n = x.shape[0]
    leaves = {
        k: nominal[k].expand(n, *nominal[k].shape).clone().requires_grad_(True) for k in p.limits
    }
    z = p.net.logits(x, leaves).flatten(1)[:, 0].sum() * s
    grads = torch.autograd.grad(z, list(leaves.values()), allow_unused=True)
    out = {}
    for (k, leaf), g in zip(leaves.items(), grads, strict=True):
        plo, phi = p.limits[k]
        g = torch.zeros_like(leaf) if g is None else g
        out[k] = torch.where(g > 0, plo, torch.where(g < 0, phi, leaf.detach()))
    return out


def _step(
    p: Problem, s: float, lo: Tensor, width: Tensor, u: Tensor, params: Params, size: float
) -> tuple[Tensor, Params]:
    u = u.detach().requires_grad_(True)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    x = (lo + u * width).reshape(-1, *p.net.input_shape)
    z_n = s * p.net.logits(x).flatten(1)[:, 0]
    c = s * (p.net.logits(x, leaves).flatten(1)[:, 0] - p.t)
    (g_n,) = torch.autograd.grad(z_n.sum(), [u], retain_graph=True)
    g = torch.autograd.grad(c.sum(), [u, *leaves.values()], allow_unused=True)
    g_c = g[0] if g[0] is not None else torch.zeros_like(u)
    with torch.no_grad():
        new = {}
        for (k, leaf), gk in zip(leaves.items(), g[1:], strict=True):
            plo, phi = p.limits[k]
            gk = torch.zeros_like(leaf) if gk is None else gk
            new[k] = torch.clamp(leaf - size * (phi - plo) * gk.sign(), plo, phi)
        u_new = (u + _direction(u.detach(), g_n, g_c, c.detach(), size, p.t)).clamp(0, 1)
    return u_new, new


def _direction(u: Tensor, g_n: Tensor, g_c: Tensor, c: Tensor, size: float, t: float) -> Tensor:
    """The x step in box coordinates (n, d): see the module docstring."""
    eta = 1e-10 * (1.0 + abs(t))
    near = c > -size * g_c.abs().sum(1)
    tangent = _tangent(g_n, g_c)
    blocked = ((u <= 0) & (tangent < 0)) | ((u >= 1) & (tangent > 0))
    free = (~blocked).to(DTYPE)
    tangent = _tangent(g_n * free, g_c * free)
    gc2 = (g_c * free).pow(2).sum(1).clamp(min=1e-300)
    newton = -((c + eta) / gc2).unsqueeze(1) * g_c * free
    move = size * tangent / tangent.abs().amax(1, keepdim=True).clamp(min=1e-300)
    ascent = size * g_n / g_n.abs().amax(1, keepdim=True).clamp(min=1e-300)
    return torch.where(near.unsqueeze(1), newton.clamp(-1, 1) + move, ascent)


def _tangent(g_n: Tensor, g_c: Tensor) -> Tensor:
    gc2 = g_c.pow(2).sum(1).clamp(min=1e-300)
    return g_n - ((g_n * g_c).sum(1) / gc2).unsqueeze(1) * g_c


class _Best:
    """The best flipping iterate per row so far."""

    def __init__(self, n: int) -> None:
        self.value = torch.full((n,), -torch.inf, dtype=DTYPE)
        self.x: Tensor | None = None
        self.params: Params = {}

    def update(self, p: Problem, side: str, x: Tensor, params: Params) -> None:
        value, _ = evaluate(p, side, x, params)
        better = value > self.value
        if self.x is None:
            self.x, self.params = x.clone(), {k: v.clone() for k, v in params.items()}
        self.value = torch.where(better, value, self.value)
        self.x = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x, self.x)
        for k, v in params.items():
            mask = better.view(-1, *[1] * (v.dim() - 1))
            self.params[k] = torch.where(mask, v, self.params[k])

    def witness(self, p: Problem, side: str, shape: tuple[int, ...]) -> Witness:
        """The best row, re-evaluated alone (batch 1) so its value is what a user gets."""
        assert self.x is not None
        i = int(self.value.argmax())
        x = self.x[i].reshape(shape).clone()
        params = {k: v[i].clone() for k, v in self.params.items()}
        value, _ = evaluate(p, side, x.unsqueeze(0), {k: v.unsqueeze(0) for k, v in params.items()})
        v = float(value[0])
        return Witness(v if math.isfinite(v) else -math.inf, x, params)
