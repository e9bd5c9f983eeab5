"""Witness search: projected signed-gradient ascent jointly over the input box and the
parameter box, with random restarts and parameter-box corners. Every returned value is
re-evaluated in float64 at the returned (x, theta), which lies inside both boxes.

Honest values: an objective that states a bound on its own float64 evaluation error (the
difference objective does, ``evaluation_error``) reports each witness's value minus that
bound, rounded down, so the witness attains the reported value in exact arithmetic too."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from quantcert.engines.perturbation import Perturbation, inner_limits
from quantcert.network import INPUT, Network
from quantcert.ops import (
    Affine,
    AvgPool,
    Conv,
    Identity,
    LeakyReLU,
    MaxPool,
    Pad,
    Reshape,
    Scale,
    Sigmoid,
    Softmax,
    Sum,
    Tanh,
)
from quantcert.ops.base import DTYPE, Box, Op

#: objective(x (B, *in), params {name: (B, *shape)}) -> (B, K) values to maximise, per column.
Objective = Callable[[Tensor, Mapping[str, Tensor]], Tensor]

#: Unit of the stated float64 error bounds: 2**-52 = 2u (u = 2**-53, the unit roundoff).
#: A dot product of n terms plus a bias, in any summation order, errs by at most
#: gamma_(n+1) = (n+1)u / (1 - (n+1)u) times the sum of the terms' magnitudes; charging
#: (n+2) * 2u instead covers gamma's denominator, the rounding of the magnitude pass itself
#: (computed in float64, it may fall short of the exact magnitude by a factor 1 - gamma_n),
#: and the rounding of the bound's own sums, for every n below 2**40.
ULP2 = 2.0**-52
#: Elementary functions (torch's exp, tanh, sigmoid, softmax in float64: SLEEF or libm, at
#: most about 1 ulp each, a few for sigmoid and softmax, which compose them) are
#: charged this many units of 2u relative, plus TINY absolute (underflow to subnormals).
ELEMENTARY_ULPS = 4
TINY = 2.0**-1000


@dataclass(frozen=True)
class Witness:
    """A concrete (x, theta) and the objective value it attains (float64).

    ``error`` is the stated bound on the float64 evaluation error of the objective at this
    witness (0 when the objective states none); ``value`` is then already the certified value,
    the evaluated one minus ``error`` rounded down, so the witness attains it in exact
    arithmetic. ``below_error_scale``: the evaluated value was within ``error`` of 0, so the
    value says no more than that the witness exists (reported as 0 for absolute changes)."""

    value: float
    x: Tensor  # (*input_shape)
    params: dict[str, Tensor]  # the perturbed tensors that differ from theta0
    error: float = 0.0
    below_error_scale: bool = False

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
    thorough: bool = False,
) -> list[Witness]:
    """Maximise each of the ``columns`` objective columns over x in any of the boxes
    (``box``: a batch of B boxes) and theta in the perturbation set. The first start in each
    box is its centre with the nominal parameters, or with ``warm`` (a parameter setting
    found before) when given. ``param_box`` narrows some tensors to one sub-box per input box
    (limits (B, *shape), inside the perturbation set). ``thorough``: on smooth networks, add
    the longer momentum search (a query's first search). Returns the best witness per column."""
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
    found = [_best(values, x, params, column == k) for k in range(columns)]
    if thorough and warm is None and param_box is None and _smooth(net):
        found = _smooth_search(net, limits, box, objective, found, gen)
    return certified(objective, found, range(columns))


#: Smooth networks (sigmoid, tanh): the extra search's steps, and its batch in parameter
#: elements (restarts x parameter count), which bounds its memory and time. (Measured on
#: tanh and sigmoid MLPs of 7 x 60 units, 10 outputs: 1M elements and 60 steps find the same
#: witnesses, within 0.7%, as 4M and 100, in a fifth of the time: 1.3 s instead of 7 s.)
SMOOTH_STEPS = 60
SMOOTH_ELEMENTS = 1_000_000


def _smooth(net: Network) -> bool:
    """A sigmoid or tanh inside the network. Not a monotone head on the output alone (cat,
    ath-relu): the logit is then piecewise linear, and the first search with its corner
    polish already does as well (cat: 0.19 s -> 0.09 s)."""
    return any(isinstance(n.op, Sigmoid | Tanh) and n.name != net.output_node for n in net.nodes)


def _smooth_search(
    net: Network,
    limits: dict[str, tuple[Tensor, Tensor]],
    box: Box,
    objective: Objective,
    found: list[Witness],
    gen: torch.Generator,
) -> list[Witness]:
    """More restarts and longer ascents for the columns of smooth networks, whose maxima sit
    inside the input box and off the corners the short signed ascent jumps between: signed
    steps on a momentum of normalised gradients, a decaying step, starts at the best witness
    so far, at random points inside the boxes and at random corners; at the end every
    parameter is pushed to the end of its box that its gradient points to, kept where that
    is better. Input box batch 1 only (the first search of a query); networks with a hidden
    sigmoid or tanh only (``_smooth``)."""
    if box.lo.shape[0] != 1:
        return found
    size = sum(int(lo.numel()) for lo, _ in limits.values()) + int(box.lo[0].numel())
    columns = len(found)
    restarts = max(2, min(32, SMOOTH_ELEMENTS // max(1, size * columns)))
    n = columns * restarts
    # The work (rows x parameters x steps) stays within the budget's: huge nets take fewer
    # steps, and none where not even a short ascent fits.
    steps = min(SMOOTH_STEPS, SMOOTH_ELEMENTS * SMOOTH_STEPS // max(1, n * size))
    if steps < 10:
        return found
    column = torch.arange(n) // restarts
    lo, hi = box.lo.expand(n, *box.lo.shape[1:]), box.hi.expand(n, *box.hi.shape[1:])
    kind = torch.arange(n) % restarts
    x = lo + (hi - lo) * torch.rand(lo.shape, generator=gen, dtype=DTYPE)
    best_x = torch.stack([w.x for w in found])[column]
    x = torch.where(_rows(kind == 0, x), best_x, x)
    lims = {
        k: (v[0].expand(n, *v[0].shape), v[1].expand(n, *v[1].shape)) for k, v in limits.items()
    }
    params = {}
    for name, (plo, phi) in lims.items():
        u = torch.rand(plo.shape, generator=gen, dtype=DTYPE)
        corner = (u > 0.5).to(DTYPE)
        start = plo + (phi - plo) * torch.where(_rows(kind % 2 == 1, u), corner, u)
        best_p = torch.stack([w.params[name] for w in found])[column]
        params[name] = torch.where(_rows(kind == 0, start), best_p, start)
    momentum: dict[str, Tensor] = {}
    for step in range(steps):
        size_t = 0.25 * (1 - step / steps) ** 2 + 2e-3
        x, params, grads = _momentum_step(
            objective, column, x, params, lo, hi, lims, size_t, momentum
        )
    # Corners: each parameter at the end of its box that its last gradient points to.
    cornered = {
        k: torch.where(grads[k] > 0, lims[k][1], torch.where(grads[k] < 0, lims[k][0], v))
        for k, v in params.items()
    }
    out = list(found)
    with torch.no_grad():
        rows = torch.arange(n)
        for cand in (params, cornered):
            values = objective(x, cand)[rows, column]
            for k in range(columns):
                w = _best(values, x, cand, column == k)
                if w.value > out[k].value:
                    out[k] = w
    return out


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """A row mask (N,) shaped to broadcast over ``like`` (N, ...)."""
    return mask.reshape(-1, *[1] * (like.dim() - 1))


def _momentum_step(
    objective: Objective,
    column: Tensor,
    x: Tensor,
    params: dict[str, Tensor],
    lo: Tensor,
    hi: Tensor,
    limits: dict[str, tuple[Tensor, Tensor]],
    size: float,
    momentum: dict[str, Tensor],
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """One signed step along a momentum (0.75) of per-row normalised gradients."""
    x = x.detach().requires_grad_(True)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    value = objective(x, leaves)[torch.arange(x.shape[0]), column].sum()
    grads = torch.autograd.grad(value, [x, *leaves.values()], allow_unused=True)
    named = {"": grads[0] if grads[0] is not None else torch.zeros_like(x)}
    for name, g in zip(leaves, grads[1:], strict=True):
        named[name] = torch.zeros_like(leaves[name]) if g is None else g
    with torch.no_grad():
        for name, g in named.items():
            scale = g.flatten(1).abs().mean(1).clamp(min=1e-300)
            g = g / _rows(scale, g)
            momentum[name] = g if name not in momentum else 0.75 * momentum[name] + g
        x_new = torch.clamp(x + size * (hi - lo) * momentum[""].sign(), lo, hi)
        new = {}
        for name, leaf in leaves.items():
            plo, phi = limits[name]
            moved = leaf.detach() + size * (phi - plo) * momentum[name].sign()
            new[name] = torch.minimum(torch.maximum(moved, plo), phi)
    return x_new, new, {k: v for k, v in named.items() if k}


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
    value = witness.value + witness.error  # compare evaluated values, certify at the end
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
    if not value > witness.value + witness.error:
        return witness
    x, params = _unflatten(net, names, current.unsqueeze(0), box)
    moved = Witness(value, x[0], {k: v[0] for k, v in params.items()})
    (moved,) = certified(objective, [moved], [column])
    return moved if moved.value > witness.value else witness


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


def _gamma(n: int) -> float:
    """The charge per unit magnitude of a float64 sum of ``n`` products (see ``ULP2``)."""
    return (n + 2) * ULP2


def _abs_params(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.abs() for k, v in params.items()}


def _fan_in(op: Op) -> int | None:
    """Products summed per output of a linear op (None: no stated rule, use intervals)."""
    if isinstance(op, Affine):
        return int(op.params["weight"].shape[-1])
    if isinstance(op, Conv):
        return int(math.prod(op.params["weight"].shape[-3:]))
    if isinstance(op, Reshape | Pad):
        return 0
    if isinstance(op, AvgPool):
        return int(math.prod(op.kernel)) + 1  # the sum, then the division
    if isinstance(op, Scale):
        return 1  # one product, one addition
    return None


def _op_error(
    op: Op, xs: Sequence[Tensor], errs: Sequence[Tensor], params: Mapping[str, Tensor], y: Tensor
) -> Tensor:
    """A bound on ``|y - op_exact(inputs_exact)|`` elementwise, where ``y = op.forward(xs)``
    in float64 and each exact input lies within ``errs`` of ``xs``; the op's parameters are
    taken as exact (they are the float64 numbers the witness states)."""
    elementary = ELEMENTARY_ULPS * ULP2 * y.abs() + TINY
    if isinstance(op, Affine | Conv | Reshape | Pad | AvgPool | Scale):
        n = _fan_in(op)
        assert n is not None
        mags = _abs_params(params)
        if isinstance(op, Affine | Conv):
            # |W x + b| rounding: gamma * (|W| |x| + |b|); the input error through |W|.
            magnitude = op.forward([xs[0].abs()], mags)
            carried = op.forward([errs[0]], {"weight": mags["weight"]})
        else:
            magnitude = op.abs_lin(xs[0].abs()) + op.offset(y).abs()
            carried = op.abs_lin(errs[0])
        return carried * (1 + _gamma(n)) + _gamma(n) * magnitude
    if isinstance(op, Identity):
        return errs[0]
    if isinstance(op, LeakyReLU):
        # Lipschitz max(1, |a|), and one rounding of a * z.
        return max(1.0, abs(op.slope)) * errs[0] * (1 + ULP2) + ULP2 * y.abs()
    if isinstance(op, Sigmoid):
        return errs[0] / 4 + elementary
    if isinstance(op, Tanh):
        return errs[0] + elementary
    if isinstance(op, MaxPool):
        # Each output is a max over a window: 1-Lipschitz in the window's largest error.
        e = F.max_pool2d(errs[0], op.kernel, op.stride, op.padding, op.dilation)
        return e
    if isinstance(op, Softmax):
        # sum_j |d p_i / d z_j| = 2 p_i (1 - p_i) <= 1/2, and a few roundings per output.
        worst = errs[0].amax(-1, keepdim=True)
        return worst / 2 + (y.shape[-1] + ELEMENTARY_ULPS) * ULP2 * y.abs() + TINY
    if isinstance(op, Sum):
        total, magnitude = torch.zeros_like(y), torch.zeros_like(y)
        for c, x, e in zip(op.coeffs, xs, errs, strict=True):
            total, magnitude = total + abs(c) * e, magnitude + abs(c) * x.abs()
        k = len(op.coeffs)
        return total * (1 + _gamma(k)) + _gamma(k) * magnitude
    # No stated rule: the op's own interval transfer (sound in exact arithmetic, with its
    # outward margin) around the inputs, at the op's parameters.
    moved = op.with_params(params) if params else op
    box = moved.interval([Box(x - e, x + e) for x, e in zip(xs, errs, strict=True)], {})
    return torch.maximum(y - box.lo, box.hi - y).clamp(min=0)


def evaluation_error(
    net: Network, x: Tensor, params: Mapping[str, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """``net(x, params)`` in float64 and an elementwise bound on its distance to the exact
    (real-arithmetic) network at the same float64 input and parameters: a running error
    bound, propagated node by node (``_op_error``). Batched like ``net``."""
    with torch.no_grad():
        values: dict[str, Tensor] = {INPUT: x.to(DTYPE)}
        errors: dict[str, Tensor] = {INPUT: torch.zeros_like(values[INPUT])}
        for node in net.nodes:
            xs = [values[src] for src in node.inputs]
            own = net.node_params(node, params)
            y = node.op.forward(xs, own)
            errors[node.name] = _op_error(node.op, xs, [errors[s] for s in node.inputs], own, y)
            values[node.name] = y
    return values[net.output_node], errors[net.output_node]


class DifferenceObjective:
    """Columns ``signs[k] * (f_theta(x) - f_theta0(x))[out[k]]``; ``signs`` (K, n_out).

    ``error`` bounds the float64 evaluation error of each column. ``absolute``: the columns
    come in pairs ``+d`` and ``-d`` and the query is ``max |d|``, which no witness can make
    negative: a certified value below 0 is reported as 0."""

    def __init__(self, net: Network, signs: Tensor, absolute: bool = True) -> None:
        self.net, self.signs, self.absolute = net, signs, absolute

    def __call__(self, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        d = (self.net(x, params) - self.net(x)).flatten(1)
        out: Tensor = d @ self.signs.T
        return out

    def error(self, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """(B, K): ``|column - exact column| <= error`` at each (x, theta) of the batch."""
        perturbed, e_p = evaluation_error(self.net, x, params)
        nominal, e_n = evaluation_error(self.net, x)
        d = (perturbed - nominal).flatten(1)
        e_d = (e_p + e_n).flatten(1) * (1 + ULP2) + ULP2 * d.abs()
        s = self.signs.abs()
        k = int((self.signs != 0).sum(1).max()) if self.signs.numel() else 0
        out: Tensor = (e_d @ s.T) * (1 + _gamma(k)) + _gamma(k) * (d.abs() @ s.T)
        return out


def difference_objective(net: Network, signs: Tensor) -> DifferenceObjective:
    """Columns ``signs[k] * (f_theta(x) - f_theta0(x))[out[k]]``; ``signs`` (K, n_out)."""
    return DifferenceObjective(net, signs)


def certified(
    objective: Objective, witnesses: Sequence[Witness], columns: Sequence[int]
) -> list[Witness]:
    """The witnesses with certified values, when ``objective`` states its evaluation error
    (an ``error`` method like ``DifferenceObjective``'s); else unchanged. Each witness's
    value is re-evaluated at its own (x, theta) for its objective column."""
    error_of = getattr(objective, "error", None)
    if error_of is None or not witnesses:
        return list(witnesses)
    x = torch.stack([w.x for w in witnesses])
    names = list(witnesses[0].params)
    params = {k: torch.stack([w.params[k] for w in witnesses]) for k in names}
    cols = torch.as_tensor(list(columns), dtype=torch.long)
    rows = torch.arange(len(witnesses))
    with torch.no_grad():
        values = objective(x, params)[rows, cols]
        errors = error_of(x, params)[rows, cols]
    absolute = bool(getattr(objective, "absolute", False))
    out = []
    for w, v, e in zip(witnesses, values.tolist(), errors.tolist(), strict=True):
        if not math.isfinite(v):
            out.append(Witness(v, w.x, w.params, math.inf if math.isnan(v) else e))
            continue
        value = math.nextafter(v - e, -math.inf)
        low = abs(v) <= e
        if absolute and value < 0:
            value = 0.0
        out.append(Witness(value, w.x, w.params, e, low))
    return out
