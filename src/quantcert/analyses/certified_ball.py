"""L2-ball bounds for certified kappa (``analyses.certified_kappa``): the bound engine on a
network whose input lies in a ball ``|x - x0|_2 <= r``, and an ascent that attains a lower
bound on ``max |f(x0 + dx) - f(x0)|_2`` over the same ball.

The engine bounds boxes. A first node ``_Ball`` (identity) is put in front of the network;
its backward transfer concretises each linear bound ``sum(A * x)`` over the ball,
``A . x0 + r |A|_2`` (and over the box, keeping the smaller), so every CROWN bound, the
intermediate ones included, holds over the ball and not only over the Linf box ``x0 +- r``
around it (a factor up to ``sqrt(784)`` on an MNIST net's first layer). With ``ibp`` (and
where CROWN would take more than ``MEMORY_BUDGET`` per image) the box is bounded by intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from quantcert.engines.bounds import Method, bound_spec
from quantcert.network import INPUT, Network, Node
from quantcert.ops.activations import Elementwise
from quantcert.ops.base import DTYPE, Box, Op, spec_sum

#: Bytes the CROWN pass may take per chunk of images (estimated by ``crown_bytes_per_image``).
MEMORY_BUDGET = 2**30
#: Tensors of the size of the largest coefficient tensor alive at once (A, |A|, A_in, ...).
_COPIES = 4
#: Relative widening of the radius bounded over.
RADIUS_PAD = 1e-12
BALL = "__l2_ball__"
Domain = tuple[float, float]


class _Ball(Op):
    """Identity on the input whose backward transfer concretises over the L2 ball
    ``|x - x0|_2 <= r`` intersected with the input box: ``x0`` (B, *shape), ``r`` (B,)."""

    def __init__(self, x0: Tensor, r: Tensor) -> None:
        super().__init__()
        self.x0, self.r = x0, r

    def describe(self) -> str:
        return "L2Ball"

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        return xs[0]

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        return boxes[0]

    def backward(
        self, A: Tensor, boxes: Sequence[Box], radius: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """``max sum(A * x)`` over the ball and the box, the smaller: A (S, B, *shape)."""
        box = boxes[0]
        norm = torch.linalg.vector_norm(A.flatten(2), dim=-1)  # (S, B)
        ball = spec_sum(A, self.x0) + self.r.unsqueeze(0) * norm
        in_box = spec_sum(A.clamp(min=0), box.hi) + spec_sum(A.clamp(max=0), box.lo)
        magnitude = torch.maximum(
            spec_sum(A.abs(), self.x0.abs()) + self.r.unsqueeze(0) * norm,
            spec_sum(A.abs(), box.absmax),
        )
        return [torch.zeros_like(A)], torch.minimum(ball, in_box), magnitude


def ball_network(net: Network, x0: Tensor, r: Tensor) -> Network:
    """``net`` with a ``_Ball`` node in front: bounds of it over the box ``x0 +- r`` hold over
    the ball ``|x - x0|_2 <= r`` (B balls: ``x0`` (B, *input_shape), ``r`` (B,))."""
    nodes = [Node(BALL, _Ball(x0, r), (INPUT,))]
    for node in net.nodes:
        inputs = tuple(BALL if src == INPUT else src for src in node.inputs)
        nodes.append(Node(node.name, node.op, inputs))
    return Network(nodes, net.input_shape, head=net.head, name=net.name)


def crown_bytes_per_image(net: Network) -> int:
    """Estimated peak memory of the CROWN pass per image: each node read by a nonlinear op is
    tightened with an identity spec (2 rows per neuron) pulled back through the nodes before
    it (not the outputs of elementwise activations, see ``bounds._rows_to_tighten``); the
    logits with 2 rows per class."""
    numel = {name: math.prod(shape) for name, shape in net.shapes().items()}
    users, by_name = net.consumers(), {n.name: n for n in net.nodes}
    widest, cost = numel[INPUT], 0
    for name in [INPUT, *(n.name for n in net.nodes)]:
        widest = max(widest, numel[name])
        tightened = name == INPUT or not isinstance(by_name[name].op, Elementwise)
        if tightened and any(by_name[u].op.nonlinear for u in users[name]):
            cost = max(cost, 2 * numel[name] * widest)
        if name == net.logits_node:
            cost = max(cost, 2 * numel[name] * widest)
            break
    return cost * 8 * _COPIES


def _flat_norm(t: Tensor) -> Tensor:
    out: Tensor = torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)
    return out


def _bcast(r: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) against ``like`` (B, *shape)."""
    return r.reshape(-1, *([1] * (like.dim() - 1)))


def engine_dy_bound(
    net: Network,
    x0: Tensor,
    r: Tensor,
    y0: Tensor,
    method: Method = "crown",
    domain: Domain | None = None,
) -> Tensor:
    """Sound upper bound (B,) on ``|f(x) - y0|_2`` over ``|x - x0|_2 <= r`` (and ``x`` in the
    domain when given) from the bound engine: ``x0`` (B, *input_shape), ``r`` (B,), ``y0``
    (B, K). The radius is widened by ``RADIUS_PAD`` (a float64 ``dx`` of norm ``r`` may lie
    just outside the ball of radius ``r``)."""
    r = r * (1 + RADIUS_PAD)
    rr = _bcast(r, x0)
    lo, hi = x0 - rr, x0 + rr
    if domain is not None:
        lo, hi = lo.clamp(min=domain[0]), hi.clamp(max=domain[1])
    k = y0.shape[1]
    eye = torch.eye(k, dtype=DTYPE)
    upper, _ = bound_spec(
        ball_network(net, x0, r),
        Box(lo, hi),
        {},
        torch.cat([eye, -eye]),
        method,
        target=net.logits_node,
    )
    reach = torch.maximum(upper[:, :k] - y0, y0 + upper[:, k:]).clamp(min=0)  # (B, K)
    return _flat_norm(reach)


def _project(dx: Tensor, x0: Tensor, r: Tensor, domain: Domain | None) -> Tensor:
    """Into the ball (scale), then the domain (clip, then scale towards ``x0``: convex)."""
    rr = _bcast(r, dx)
    dx = dx * (rr / _bcast(_flat_norm(dx), dx).clamp(min=1e-300)).clamp(max=1.0)
    if domain is None:
        return dx
    clipped = (x0 + dx).clamp(domain[0], domain[1]) - x0
    return clipped


def _dy(net: Network, x0: Tensor, dx: Tensor, y0: Tensor) -> Tensor:
    return _flat_norm(net.logits(x0 + dx) - y0)


def _direction(net: Network, x0: Tensor, dx: Tensor, y0: Tensor) -> Tensor:
    """The unit gradient of ``|dy|`` at ``dx`` (zero where it vanishes or is undefined)."""
    dx = dx.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_dy(net, x0, dx, y0).sum(), dx)
    return torch.nan_to_num(grad / _bcast(_flat_norm(grad).clamp(min=1e-300), grad))


def ascent(
    net: Network,
    x0: Tensor,
    r: Tensor,
    y0: Tensor,
    steps: int = 30,
    start: Tensor | None = None,
    domain: Domain | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Monotone ascent on ``|f(x0 + dx) - y0|_2`` over ``|dx| <= r``: the best ``|dy|`` (B,)
    attained and its ``dx`` (B, *input_shape), a lower bound on the maximum. Each step tries
    the maximiser of the linearisation over the ball, ``r g`` (``g`` the unit gradient: power
    iteration on a linear map), and a projected step ``dx + s g``; the better is taken if it
    improves, else ``s`` halves. Starts at ``start`` (e.g. DeepFool's ``dx``) or at random."""
    if start is None:
        gen = torch.Generator().manual_seed(seed)
        start = torch.randn(x0.shape, generator=gen, dtype=DTYPE)
        start = start * _bcast(r / _flat_norm(start), start)
    dx = _project(start.to(DTYPE), x0, r, domain)
    size = r * 0.5
    with torch.no_grad():
        best = _dy(net, x0, dx, y0)
    for _ in range(steps):
        g = _direction(net, x0, dx, y0)
        power = _project(_bcast(r, g) * g, x0, r, domain)
        stepped = _project(dx + _bcast(size, g) * g, x0, r, domain)
        with torch.no_grad():
            values = _dy(net, torch.cat([x0, x0]), torch.cat([power, stepped]), torch.cat([y0, y0]))
        v_power, v_step = values[: len(x0)], values[len(x0) :]
        take_power = v_power >= v_step
        value = torch.where(take_power, v_power, v_step)
        better = value > best
        candidate = torch.where(_bcast(take_power, dx), power, stepped)
        dx = torch.where(_bcast(better, dx), candidate, dx)
        best = torch.where(better, value, best)
        size = torch.where(better, size, size / 2)
    return best, dx


def choose_engine(net: Network, method: Method) -> tuple[Method, str, int]:
    """The method that fits ``MEMORY_BUDGET``, its description and the images per chunk."""
    if method == "ibp":
        return "ibp", "ibp", 1000
    need = crown_bytes_per_image(net)
    if need > MEMORY_BUDGET:
        return "ibp", f"ibp (crown would need {need / 2**30:.1f} GiB per image)", 1000
    return "crown", "crown", max(1, min(1000, MEMORY_BUDGET // need))
