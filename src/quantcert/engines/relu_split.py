"""Branch and bound over unstable ReLUs, for queries at a point (where the input box cannot
be split). A domain fixes some pre-activations to ``>= 0`` (active) or ``<= 0`` (inactive):
its bounds come from clamping those nodes' boxes, which is sound on the sub-domain, and the
two children of a split cover their parent. Each round splits the domains with the highest
upper bounds at the neuron whose ReLU relaxation is widest (``-l u / (u - l)``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from quantcert.engines.bab import Memory, reached, rss_bytes, sane_bound, upper_of
from quantcert.network import Network
from quantcert.ops.activations import LeakyReLU
from quantcert.ops.base import DTYPE, Box

#: (clamp per node (D domains), box repeated D times) -> (upper (D,), node bounds)
ClampedBound = Callable[[Mapping[str, Box], Box], tuple[Tensor, Mapping[str, Box]]]


@dataclass(frozen=True)
class SplitOutcome:
    upper: float
    domains: int
    rounds: int
    # "optimal", "timeout", "interrupted", "bounded" (no unstable ReLU left, or stalled),
    # "memory" (the budget stopped it)
    status: str


def relu_inputs(net: Network) -> list[str]:
    """Names of the nodes that feed a (leaky) ReLU."""
    return [n.inputs[0] for n in net.nodes if isinstance(n.op, LeakyReLU)]


def _clamps(
    decisions: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, Box]:
    """Decisions (D, numel) in {-1, 0, +1} -> clamp boxes (D, *node_shape)."""
    out = {}
    for name, d in decisions.items():
        lo = torch.where(d > 0, 0.0, -torch.inf).to(DTYPE).reshape(-1, *shapes[name])
        hi = torch.where(d < 0, 0.0, torch.inf).to(DTYPE).reshape(-1, *shapes[name])
        out[name] = Box(lo, hi)
    return out


def _choose(bounds: Mapping[str, Box], names: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Per domain: which node (index into names), which neuron, and its relaxation width."""
    best_score, best_node, best_idx = None, None, None
    for k, name in enumerate(names):
        lo, hi = bounds[name].lo.flatten(1), bounds[name].hi.flatten(1)
        unstable = (lo < 0) & (hi > 0)
        width = torch.where(unstable, -lo * hi / (hi - lo).clamp(min=1e-300), -1.0)
        score, idx = width.max(1)
        if best_score is None:
            best_score, best_node, best_idx = score, torch.zeros_like(idx), idx
            continue
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_node = torch.where(better, k, best_node)  # type: ignore[arg-type]
        best_idx = torch.where(better, idx, best_idx)  # type: ignore[arg-type]
    assert best_score is not None and best_node is not None and best_idx is not None
    return best_node, best_idx, best_score


def maximise_over_splits(
    net: Network,
    bound: ClampedBound,
    point: Box,
    lower: float,
    gap: float,
    deadline: float,
    batch: int = 32,
    memory: Memory | None = None,
) -> SplitOutcome:
    """Refine the upper bound of a maximisation at ``point`` (batch 1) by ReLU splits.
    A NaN bound is ``+inf`` (never pruned); ``memory`` caps the batch of domains bounded at
    once and stops the search (status ``memory``) once the process passes its limit."""
    if memory is not None and memory.per_box > 0:
        headroom = max(memory.limit - rss_bytes(), 0)
        batch = max(2, min(batch, headroom // (4 * memory.per_box)))
    names = relu_inputs(net)
    all_shapes = net.shapes()
    shapes = {n: all_shapes[n] for n in names}
    decisions = {
        n: torch.zeros((1, torch.Size(shapes[n]).numel()), dtype=torch.int8) for n in names
    }
    ub, bounds = bound(_clamps(decisions, shapes), point)
    ub = sane_bound(ub)
    node, idx, score = _choose(bounds, names)
    rounds, status, seen = 0, "bounded", 1
    history = [float(ub.max())]
    try:
        while ub.numel():
            if _stalled(history, lower):
                break
            if reached(lower, float(ub.max()), gap):
                status = "optimal"
                break
            if time.perf_counter() > deadline:
                status = "timeout"
                break
            if memory is not None and rss_bytes() > memory.limit:
                status = "memory"
                break
            splittable = score > 0
            order = torch.where(splittable, ub, -torch.inf).argsort(descending=True)
            pick = order[: batch // 2][splittable[order[: batch // 2]]]
            if pick.numel() == 0:
                break
            rounds += 1
            child = _children(decisions, names, pick, node, idx)
            n_child = 2 * pick.numel()
            c_ub, c_bounds = bound(_clamps(child, shapes), _repeat(point, n_child))
            c_ub = sane_bound(c_ub)
            # A child is a subset of its parent: the parent's bound holds for it too (CROWN's
            # slope choices can make a child's own bound looser).
            c_ub = torch.minimum(c_ub, ub[pick].repeat(2))
            c_node, c_idx, c_score = _choose(c_bounds, names)
            seen += n_child
            keep = torch.ones(ub.shape[0], dtype=torch.bool)
            keep[pick] = False
            decisions = {n: torch.cat([decisions[n][keep], child[n]]) for n in names}
            ub = torch.cat([ub[keep], c_ub])
            node, idx = torch.cat([node[keep], c_node]), torch.cat([idx[keep], c_idx])
            score = torch.cat([score[keep], c_score])
            alive = ub > lower
            history.append(float(ub.max()) if bool(alive.any()) else lower)
            decisions = {n: d[alive] for n, d in decisions.items()}
            ub, node, idx, score = ub[alive], node[alive], idx[alive], score[alive]
    except KeyboardInterrupt:
        status = "interrupted"
    upper = upper_of(float(ub.max()) if ub.numel() else lower, lower)
    if not ub.numel() and math.isfinite(lower):  # every domain pruned below the witness
        status = "optimal"
    return SplitOutcome(upper, seen, rounds, status)


def _stalled(history: list[float], lower: float, rounds: int = 2, share: float = 0.01) -> bool:
    """True when the last ``rounds`` rounds closed less than ``share`` of the gap: the gap is
    then not made by unstable ReLUs (e.g. products of perturbed weights across layers)."""
    if len(history) <= rounds:
        return False
    gap = history[-rounds - 1] - lower
    return history[-rounds - 1] - history[-1] < share * gap


def _children(
    decisions: Mapping[str, Tensor], names: list[str], pick: Tensor, node: Tensor, idx: Tensor
) -> dict[str, Tensor]:
    """Two children per picked domain: the chosen neuron active, then inactive."""
    out = {}
    for k, name in enumerate(names):
        base = decisions[name][pick]
        active, inactive = base.clone(), base.clone()
        rows = (node[pick] == k).nonzero().flatten()
        cols = idx[pick][rows]
        active[rows, cols] = 1
        inactive[rows, cols] = -1
        out[name] = torch.cat([active, inactive])
    return out


def _repeat(point: Box, n: int) -> Box:
    return Box(point.lo.expand(n, *point.lo.shape[1:]), point.hi.expand(n, *point.hi.shape[1:]))
