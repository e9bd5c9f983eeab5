"""Sound bounds on every node of a network over an input box and a parameter box.

Intervals (IBP) run forward through every node. Before each nonlinear op (and at the queried
node) the bounds are tightened by a backward linear pass (CROWN): the coefficients ``A`` start
at the node and flow back through each op's ``backward`` transfer to the input, where they are
concretised over the box. Each node keeps the intersection of both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor

from quantcert.network import INPUT, Network, Node
from quantcert.ops.activations import Elementwise, LeakyReLU
from quantcert.ops.base import DTYPE, REL_MARGIN, Box

Method = Literal["ibp", "crown", "alpha"]  # alpha: CROWN with optimised ReLU slopes
Radii = Mapping[str, Mapping[str, Tensor]]
_NO_RADIUS: dict[str, Tensor] = {}


@contextmanager
def engine_threads(net: Network) -> Iterator[None]:
    """Run the engine on one thread up to a few million parameters: on a 2-core machine with
    any other load, torch's thread pool costs more than it gains (measured: 55 s -> 2.5 s for
    a 2-3-1 net's global B&B; 7.3 s -> 0.58 s for mnist-net_256x6's local eps)."""
    before = torch.get_num_threads()
    if net.num_params() < 5_000_000:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def backward_upper(
    net: Network, bounds: Mapping[str, Box], radii: Radii, target: str, A0: Tensor
) -> Tensor:
    """Upper bound of ``sum(A0 * node_target)`` per row: ``A0`` (S, B, *shape) -> (S, B).

    ``bounds`` must hold every node before ``target`` (and the input).
    """
    coeffs: dict[str, Tensor] = {target: A0}
    s, b = A0.shape[:2]
    const = torch.zeros((s, b), dtype=DTYPE)
    magnitude = torch.zeros((s, b), dtype=DTYPE)
    for node in ancestors_reversed(net, target):
        a = coeffs.pop(node.name, None)
        if a is None:
            continue
        ins = [bounds[src] for src in node.inputs]
        res = node.op.backward(a, ins, radii.get(node.name, _NO_RADIUS))
        if res is None:  # no linear transfer: concretise over this node's own bounds
            c, m = _concretise(a, bounds[node.name])
            const, magnitude = const + c, magnitude + m
            continue
        a_ins, c, m = res
        const, magnitude = const + c, magnitude + m
        for src, a_in in zip(node.inputs, a_ins, strict=True):
            coeffs[src] = coeffs[src] + a_in if src in coeffs else a_in
    if INPUT in coeffs:
        c, m = _concretise(coeffs[INPUT], bounds[INPUT])
        const, magnitude = const + c, magnitude + m
    return const + REL_MARGIN * magnitude


def ancestors_reversed(net: Network, target: str) -> list[Node]:
    """The nodes up to and including ``target``, last first."""
    order: list[Node] = []
    for node in net.nodes:
        order.append(node)
        if node.name == target:
            break
    return order[::-1]


def _concretise(a: Tensor, box: Box) -> tuple[Tensor, Tensor]:
    """max of ``sum(a * z)`` over the box, and the magnitude of its terms."""
    lo, hi = box.lo.unsqueeze(0), box.hi.unsqueeze(0)
    value = (a.clamp(min=0) * hi + a.clamp(max=0) * lo).flatten(2).sum(-1)
    magnitude = (a.abs() * torch.maximum(lo.abs(), hi.abs())).flatten(2).sum(-1)
    return value, magnitude


def _rows_to_tighten(node: Node, consumers: list[Node], box: Box) -> Tensor | None:
    """Flat indices of the neurons of ``node`` whose bounds are worth a backward pass."""
    nonlinear = [c for c in consumers if c.op.nonlinear]
    if not nonlinear or isinstance(node.op, Elementwise):
        # The interval of a monotone elementwise activation on tightened inputs is exact per
        # neuron: a backward pass from its output cannot do better.
        return None
    lo, hi = box.lo.flatten(1), box.hi.flatten(1)
    if all(isinstance(c.op, LeakyReLU) for c in nonlinear):
        wanted = ((lo < 0) & (hi > 0)).any(0)  # only unstable neurons change the relaxation
    else:
        wanted = ((hi - lo) > 1e-12 * (1 + torch.maximum(lo.abs(), hi.abs()))).any(0)
    rows = wanted.nonzero().flatten()
    return rows if rows.numel() else None


def _upper(
    net: Network, bounds: Mapping[str, Box], radii: Radii, target: str, A0: Tensor, method: Method
) -> Tensor:
    if method == "alpha":
        from quantcert.engines.alpha import optimised_upper  # alpha builds on this module

        return optimised_upper(net, bounds, radii, target, A0)
    return backward_upper(net, bounds, radii, target, A0)


def tighten(
    net: Network,
    bounds: Mapping[str, Box],
    radii: Radii,
    name: str,
    rows: Tensor,
    method: Method = "crown",
) -> Box:
    """CROWN bounds of the chosen neurons of node ``name``, returned as a box of its shape."""
    box = bounds[name]
    b = box.lo.shape[0]
    numel = box.lo[0].numel()
    eye = torch.zeros((rows.numel(), numel), dtype=DTYPE)
    eye[torch.arange(rows.numel()), rows] = 1.0
    spec = torch.cat([eye, -eye]).unsqueeze(1).expand(-1, b, -1)
    spec = spec.reshape(2 * rows.numel(), b, *box.lo.shape[1:])
    upper = _upper(net, bounds, radii, name, spec, method)
    hi_rows, lo_rows = upper[: rows.numel()].T, -upper[rows.numel() :].T  # (B, R)
    lo, hi = box.lo.flatten(1).clone(), box.hi.flatten(1).clone()
    lo[:, rows] = torch.maximum(lo[:, rows], lo_rows)
    hi[:, rows] = torch.minimum(hi[:, rows], hi_rows)
    return Box(lo.reshape(box.lo.shape), hi.reshape(box.hi.shape))


def bound_nodes(
    net: Network,
    box: Box,
    radii: Radii,
    method: Method = "crown",
    upto: str | None = None,
    clamp: Mapping[str, Box] | None = None,
) -> dict[str, Box]:
    """Bounds of every node (up to ``upto``) for inputs in ``box`` (B, *input_shape).

    ``clamp`` restricts nodes to sub-domains (ReLU splits: a pre-activation ``>= 0`` or
    ``<= 0``); the bounds then hold on the part of the domain that satisfies the clamps."""
    bounds: dict[str, Box] = {INPUT: box}
    users = net.consumers()
    by_name = {n.name: n for n in net.nodes}
    for node in net.nodes:
        ins = [bounds[src] for src in node.inputs]
        bounds[node.name] = node.op.interval(ins, radii.get(node.name, _NO_RADIUS))
        if method != "ibp":
            rows = _rows_to_tighten(node, [by_name[u] for u in users[node.name]], bounds[node.name])
            if rows is not None:
                bounds[node.name] = tighten(net, bounds, radii, node.name, rows, method)
        if clamp is not None and node.name in clamp:
            bounds[node.name] = bounds[node.name].intersect(clamp[node.name])
        if node.name == upto:
            break
    return bounds


def bound_spec(
    net: Network,
    box: Box,
    radii: Radii,
    spec: Tensor,
    method: Method = "crown",
    target: str | None = None,
    clamp: Mapping[str, Box] | None = None,
) -> tuple[Tensor, dict[str, Box]]:
    """Upper bounds of ``spec @ flatten(node)`` for the target node (default: the output).

    ``spec`` (S, numel) -> upper bounds (B, S); also returns the node bounds used. With
    ``clamp``, a batch element whose clamped bounds are empty gets ``-inf`` (no point there).
    """
    target = target or net.output_node
    bounds = bound_nodes(net, box, radii, method, upto=target, clamp=clamp)
    upper = _spec_upper(net, bounds, radii, spec, method, target)
    if clamp is not None:
        empty = torch.zeros(upper.shape[0], dtype=torch.bool)
        for name in clamp:
            if name in bounds:
                empty |= (bounds[name].lo > bounds[name].hi).flatten(1).any(1)
        upper = upper.masked_fill(empty.unsqueeze(1), -torch.inf)
    return upper, bounds


def _spec_upper(
    net: Network,
    bounds: Mapping[str, Box],
    radii: Radii,
    spec: Tensor,
    method: Method,
    target: str,
) -> Tensor:
    out = bounds[target]
    b = out.lo.shape[0]
    lo, hi = out.lo.flatten(1), out.hi.flatten(1)
    interval_upper = (spec.clamp(min=0) @ hi.T + spec.clamp(max=0) @ lo.T).T  # (B, S)
    interval_upper = (
        interval_upper + REL_MARGIN * (spec.abs() @ torch.maximum(lo.abs(), hi.abs()).T).T
    )
    if method == "ibp":
        return interval_upper
    A0 = spec.unsqueeze(1).expand(-1, b, -1).reshape(spec.shape[0], b, *out.lo.shape[1:])
    crown = _upper(net, bounds, radii, target, A0, method).T
    return torch.minimum(crown, interval_upper)
