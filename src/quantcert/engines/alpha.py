"""alpha-CROWN: optimised lower lines of unstable (leaky) ReLUs.

CROWN picks each unstable neuron's lower line by a fixed rule (slope 1 where ``u > -l``, else
the leak). Any slope in ``[leak, 1]`` gives a sound lower line, so the slopes are free
variables: here one per spec row and neuron, moved by Adam to lower the bound itself. Every
iterate's bound is sound; the smallest per row is returned. The first iterate is CROWN's own
choice, so the result is never looser than CROWN.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from quantcert.engines.bounds import Radii, ancestors_reversed, backward_upper
from quantcert.network import Network, Node
from quantcert.ops.activations import LeakyReLU
from quantcert.ops.base import Box

STEPS = 20
LEARNING_RATE = 0.1
#: Slopes cost S (spec rows) times the unstable layers' size; above this, plain CROWN.
MAX_ELEMENTS = 20_000_000


def _initial_slopes(
    net: Network, bounds: Mapping[str, Box], target: str, rows: int
) -> dict[str, Tensor]:
    """CROWN's lower slopes, one copy per spec row, for every ReLU before ``target`` that has
    unstable neurons."""
    slopes: dict[str, Tensor] = {}
    for node in ancestors_reversed(net, target):
        if not isinstance(node.op, LeakyReLU) or node.name == target:
            continue
        box = bounds[node.inputs[0]]
        if not bool(((box.lo < 0) & (box.hi > 0)).any()):
            continue
        init = node.op.crown_lower_slope(box)
        slopes[node.name] = init.expand(rows, *init.shape).clone().requires_grad_(True)
    return slopes


def _leaky(node: Node) -> LeakyReLU:
    assert isinstance(node.op, LeakyReLU)
    return node.op


def optimised_upper(
    net: Network,
    bounds: Mapping[str, Box],
    radii: Radii,
    target: str,
    A0: Tensor,
    steps: int = STEPS,
) -> Tensor:
    """Like ``backward_upper`` (``A0`` (S, B, *shape) -> (S, B)), with the lower slopes of
    unstable ReLUs optimised per row; never above ``backward_upper``."""
    slopes = _initial_slopes(net, bounds, target, A0.shape[0])
    if not slopes or sum(t.numel() for t in slopes.values()) > MAX_ELEMENTS:
        return backward_upper(net, bounds, radii, target, A0)
    leaks = {name: _leaky(net.node(name)).slope for name in slopes}
    moved = net.map_ops(
        lambda n: _leaky(n).with_lower_slope(slopes[n.name]) if n.name in slopes else n.op
    )
    optimiser = torch.optim.Adam(list(slopes.values()), lr=LEARNING_RATE)
    best: Tensor | None = None
    with torch.enable_grad():
        for step in range(steps + 1):
            upper = backward_upper(moved, bounds, radii, target, A0)
            best = upper.detach() if best is None else torch.minimum(best, upper.detach())
            if step == steps or not upper.requires_grad:  # done, or no slope is used
                break
            optimiser.zero_grad()
            grads = torch.autograd.grad(upper.sum(), list(slopes.values()), allow_unused=True)
            for t, g in zip(slopes.values(), grads, strict=True):
                t.grad = g
            optimiser.step()
            with torch.no_grad():  # projection back onto the sound slopes between leak and 1
                for name, t in slopes.items():
                    t.clamp_(min(leaks[name], 1.0), max(leaks[name], 1.0))
    assert best is not None
    return best
