"""Sound bounds on every node of a network over an input box and a parameter box.

Intervals (IBP) run forward through every node. Before each nonlinear op (and at the queried
node) the bounds are tightened by a backward linear pass (CROWN): the coefficients ``A`` start
at the node and flow back through each op's ``backward`` transfer to the input, where they are
concretised over the box. Each node keeps the intersection of both.

Non-finite values: a box whose node bounds hold a NaN (or an overflow: a lower bound of
``+inf``, an upper of ``-inf``) gets the spec upper bound ``+inf``, and so does any NaN spec
bound; ``require_finite`` refuses queries whose interval bounds overflow float64 up front.

Memory: a backward pass costs about ``A_COPIES`` float64 coefficient tensors of
``rows x batch x width`` (width: the largest node it flows through); ``tighten`` and the spec
bound run over chunks of rows so that this stays under ``pass_bytes`` (``memory_cap``).
Chunks change nothing but the peak memory: each row's bound is computed on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor

from quantcert.errors import InputError
from quantcert.network import INPUT, Network, Node
from quantcert.ops.activations import Elementwise, LeakyReLU
from quantcert.ops.affine import Affine
from quantcert.ops.base import DTYPE, REL_MARGIN, Box, Op
from quantcert.ops.conv import Conv

Method = Literal["ibp", "crown", "alpha", "crown-ibp"]
"""alpha: CROWN with optimised ReLU slopes; crown-ibp: interval bounds on every intermediate
node and CROWN only on the queried one (the field's cheap middle ground, Zhang et al. 2020)."""
Radii = Mapping[str, Mapping[str, Tensor]]
_NO_RADIUS: dict[str, Tensor] = {}

#: Float64 tensors of one backward pass's coefficient shape alive at its peak (measured on
#: verivital's Convnet_maxpool: one box, 2 x 1214 rows through a 32x27x27 conv, 1.5 GB).
A_COPIES = 4
#: Bytes a node's bounds cost per element and box at the peak of a bound pass: lo and hi of
#: the interval and of the tightened box, and the transfer's temporaries.
NODE_BYTES = 6 * 8
#: Interval bounds beyond this magnitude are refused (``require_finite``): products of two
#: such values (e.g. ReLU relaxation intercepts ``l u / (u - l)``) still fit in float64.
MAX_MAGNITUDE = 2.0**500
#: Default cap on one backward pass's coefficient memory (``memory_cap`` lowers it).
PASS_BYTES = 256 * 2**20
_pass_bytes = [PASS_BYTES]


@contextmanager
def memory_cap(budget: int | None) -> Iterator[None]:
    """Within a memory budget (bytes), a backward pass uses at most an eighth of it (and no
    more than ``PASS_BYTES``) for coefficients."""
    before = _pass_bytes[0]
    if budget is not None:
        _pass_bytes[0] = max(1, min(PASS_BYTES, budget // 8))
    try:
        yield
    finally:
        _pass_bytes[0] = before


def pass_bytes() -> int:
    """The current cap on one backward pass's coefficient memory."""
    return _pass_bytes[0]


def batch_bytes(net: Network, passes: int = 1) -> int:
    """Estimated bytes one box adds to a bound batch on ``net``: every node's bounds, and one
    pair of coefficient rows through the widest node (chunks never go below that), times the
    ``passes`` a bound makes one after another that stay alive together."""
    sizes = [math.prod(s) for s in net.shapes().values()]
    total = sum(sizes) + math.prod(net.input_shape)
    width = max([*sizes, math.prod(net.input_shape)])
    return passes * NODE_BYTES * total + 2 * A_COPIES * 8 * width


def require_finite(net: Network, box: Box, radii: Radii, what: str = "the query") -> None:
    """Refuse (``InputError``) an input box or a perturbation whose interval bounds overflow
    float64 anywhere in ``net``, or come within a square root of it (``MAX_MAGNITUDE``): the
    relaxations multiply bounds, so an answer computed from them could be meaningless."""
    if not (bool(torch.isfinite(box.lo).all()) and bool(torch.isfinite(box.hi).all())):
        raise InputError(f"{what}: the input box must be finite")
    for r in radii.values():
        for t in r.values():
            if not bool(torch.isfinite(t).all()):
                raise InputError(f"{what}: the perturbation radii must be finite")
    with torch.no_grad():
        bounds = bound_nodes(net, box, radii, "ibp")
    for node in net.nodes:
        b = bounds[node.name]
        size = torch.maximum(b.lo.abs(), b.hi.abs())
        if not bool((size <= MAX_MAGNITUDE).all()):  # also False for NaN
            top = float(torch.maximum(box.lo.abs(), box.hi.abs()).max())
            raise InputError(
                f"{what}: interval bounds of node {node.name!r} exceed {MAX_MAGNITUDE:.3g} "
                f"(|x| up to {top:.3g}), where float64 products of bounds overflow; "
                "scale the inputs or the domain down"
            )


def non_finite_boxes(bounds: Mapping[str, Box]) -> Tensor:
    """Per box (B,): whether any node's bounds hold a NaN, a lower of ``+inf`` or an upper of
    ``-inf`` (an overflow; no real value is there)."""
    bad: Tensor | None = None
    for b in bounds.values():
        lo, hi = b.lo.flatten(1), b.hi.flatten(1)
        row = (lo.isnan() | hi.isnan() | (lo == torch.inf) | (hi == -torch.inf)).any(1)
        bad = row if bad is None else bad | row
    assert bad is not None
    return bad


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
    points = _point_nodes(net, bounds, radii, target)
    for node in ancestors_reversed(net, target):
        a = coeffs.pop(node.name, None)
        if a is None:
            continue
        ins = [bounds[src] for src in node.inputs]
        own = radii.get(node.name, _NO_RADIUS)
        if all(src in points for src in node.inputs) and (not own or _own_box_exact(node.op)):
            c, m = _concretise(a, bounds[node.name])
            const, magnitude = const + c, magnitude + m
            continue
        res = node.op.backward(a, ins, own)
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


def _own_box_exact(op: Op) -> bool:
    """At a point input, concretising this layer over its own bounds gives the bound its
    backward transfer would: ``Affine`` outputs read disjoint weights (exact), and ``Conv``'s
    backward treats each output position's copy of a kernel as its own perturbation, which
    is what the interval does. (A tighter conv weight transfer must drop ``Conv`` here.)"""
    return isinstance(op, Affine | Conv)


def _point_nodes(net: Network, bounds: Mapping[str, Box], radii: Radii, target: str) -> set[str]:
    """The nodes that hold one point per batch element: the input when its box is a point,
    and every node without parameter radii that reads only such nodes.

    A node that reads only points and either has no radius or is an ``Affine`` layer has its
    reachable set exactly as its bounds (up to their outward margin): ``W x + b`` with
    ``|dW| <= D`` at a point ``x`` is the box ``W x + b +- (D |x| + db)``, each output reading
    its own weights (``Conv``: see ``_own_box_exact``). ``backward_upper`` concretises there,
    which loses nothing and skips the backward pass to the input, the cost of local
    queries."""
    if not bool(torch.equal(bounds[INPUT].lo, bounds[INPUT].hi)):
        return set()
    points = {INPUT}
    for node in ancestors_reversed(net, target)[::-1]:
        if not radii.get(node.name) and all(src in points for src in node.inputs):
            points.add(node.name)
    return points


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
    """CROWN bounds of the chosen neurons of node ``name``, returned as a box of its shape.
    The rows run in chunks whose coefficients fit ``pass_bytes()``."""
    box = bounds[name]
    b = box.lo.shape[0]
    numel = box.lo[0].numel()
    lo, hi = box.lo.flatten(1).clone(), box.hi.flatten(1).clone()
    chunk = _rows_per_pass(net, bounds, name, b, pairs=True)
    for start in range(0, rows.numel(), chunk):
        part = rows[start : start + chunk]
        eye = torch.zeros((part.numel(), numel), dtype=DTYPE)
        eye[torch.arange(part.numel()), part] = 1.0
        spec = torch.cat([eye, -eye]).unsqueeze(1).expand(-1, b, -1)
        spec = spec.reshape(2 * part.numel(), b, *box.lo.shape[1:])
        upper = _upper(net, bounds, radii, name, spec, method)
        hi_rows, lo_rows = upper[: part.numel()].T, -upper[part.numel() :].T  # (B, R)
        # fmax/fmin: a NaN on one side leaves the other (each is sound on its own).
        lo[:, part] = torch.fmax(lo[:, part], lo_rows)
        hi[:, part] = torch.fmin(hi[:, part], hi_rows)
    return Box(lo.reshape(box.lo.shape), hi.reshape(box.hi.shape))


def _rows_per_pass(
    net: Network, bounds: Mapping[str, Box], target: str, b: int, pairs: bool = False
) -> int:
    """How many spec rows (row pairs with ``pairs``) one backward pass from ``target`` may
    carry within ``pass_bytes()``; at least one."""
    width = max(
        bounds[n.name].lo[0].numel() for n in ancestors_reversed(net, target) if n.name in bounds
    )
    width = max(width, bounds[INPUT].lo[0].numel())
    per_row = A_COPIES * 8 * b * width * (2 if pairs else 1)
    return max(1, pass_bytes() // per_row)


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
        if method not in ("ibp", "crown-ibp"):
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
    A batch element whose bounds are not finite (``non_finite_boxes``), and any NaN or
    ``-inf`` (overflowed) spec bound, gets ``+inf``: no bound.
    """
    target = target or net.output_node
    bounds = bound_nodes(net, box, radii, method, upto=target, clamp=clamp)
    upper = _spec_upper(net, bounds, radii, spec, method, target)
    upper = torch.where(upper.isnan() | (upper == -torch.inf), torch.inf, upper)
    checked = {k: v for k, v in bounds.items() if clamp is None or k not in clamp}
    bad = non_finite_boxes(checked)
    if clamp is not None:
        empty = torch.zeros(upper.shape[0], dtype=torch.bool)
        for name in clamp:
            if name in bounds:
                c = bounds[name]
                empty |= (c.lo > c.hi).flatten(1).any(1)
                bad |= (c.lo.isnan() | c.hi.isnan()).flatten(1).any(1)
        upper = upper.masked_fill(empty.unsqueeze(1), -torch.inf)
    return upper.masked_fill(bad.unsqueeze(1), torch.inf), bounds


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
    chunk = _rows_per_pass(net, bounds, target, b)
    parts = []
    for start in range(0, spec.shape[0], chunk):
        rows = spec[start : start + chunk]
        A0 = rows.unsqueeze(1).expand(-1, b, -1).reshape(rows.shape[0], b, *out.lo.shape[1:])
        parts.append(_upper(net, bounds, radii, target, A0, method))
    crown = (parts[0] if len(parts) == 1 else torch.cat(parts)).T
    return torch.fmin(crown, interval_upper)  # a NaN on one side leaves the other
