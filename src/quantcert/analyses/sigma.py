"""Seed 000 Def. 5 (estimation Eq. 13, verification Eq. 10): sigma per side of the decision
level ``l``, with the bound engine and input-box branch and bound.

For a single-output network (a sigmoid head, or a raw score compared with ``level``):

- ``above``: ``max f_n(x) - l`` over inputs with ``f_n(x) >= l > f_p(x, theta)`` for some
  ``theta`` in the perturbation set (the label can flip down);
- ``below``: ``max l - f_n(x)`` over inputs with ``f_n(x) < l <= f_p(x, theta)`` (flip up).

Work in logit space, side sign ``s`` (+1 above, -1 below), threshold ``t`` (``logit(l)``). A
box is discarded when ``s z_n < t s`` on all of it (no input on that side) or
``s z_p >= s t`` on all of it and every ``theta`` (no flip). Otherwise, for a flipping ``x``,
``s (z_n - t) < s (z_n - z_p) <= max_theta s (z_n - z_p)``, so the side's logit slack is at most
``U = min(ub(s z_n) - s t, ub(s (z_n - z_p)))`` (the difference network keeps the correlation
through ``x``) and sigma at most ``s (sigmoid(t + s U) - l)``, widened by ``OUT_MARGIN``.
Softmax / multi-output heads are refused (``InputError``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from quantcert.analyses.epsilon import Budget, _record, box_echo, certificate_status
from quantcert.analyses.flip import threshold
from quantcert.analyses.sigma_search import Problem, side_search
from quantcert.engines.attack import Witness
from quantcert.engines.bab import Memory, lower_of, maximise, reached, upper_of
from quantcert.engines.bounds import (
    Method,
    batch_bytes,
    bound_spec,
    engine_threads,
    memory_cap,
    require_finite,
)
from quantcert.engines.pair import difference_network, pair_radii, plain_radii
from quantcert.engines.perturbation import Perturbation
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import DTYPE, Box
from quantcert.report.results import Certificate

SIDES = ("above", "below")
#: Outward margin on sigma's upper bound for float64 sigmoid and logit rounding.
OUT_MARGIN = 1e-12
_PM = torch.tensor([[1.0], [-1.0]], dtype=DTYPE)


@dataclass(frozen=True)
class SigmaResult:
    """Sigma per side: ``above`` (f_n >= l, can go below l) and ``below`` (f_n < l, can reach
    l). Each certificate's ``lower`` is ``|f_n(x*) - l|`` of a witness that really flips
    (float64), its ``upper`` sound; a side with no flippable input is 0, ``verified``."""

    above: Certificate
    below: Certificate
    level: float
    time_s: float
    engine: str
    spec: dict[str, Any] = field(default_factory=dict)

    def side(self, name: str) -> Certificate:
        return self.above if name == "above" else self.below

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": "sigma",
            "sides": {name: self.side(name).to_dict() for name in SIDES},
            "level": self.level,
            "time_s": self.time_s,
            "engine": self.engine,
            "spec": self.spec,
        }

    def to_text(self) -> str:
        lines = [f"sigma (level {self.level:g}): engine {self.engine}, {self.time_s:.3f} s"]
        lines.append(f"  {'side':<6} {'lower':>12} {'upper':>12} {'gap':>9}  status   witness x")
        for name in SIDES:
            c = self.side(name)
            x = "-" if c.witness is None else ", ".join(f"{v:.6g}" for v in c.witness.x.ravel())
            lines.append(
                f"  {name:<6} {c.lower:>12.8g} {c.upper:>12.8g} {c.gap:>9.2g}  "
                f"{c.status:<8} {x[:60]}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class SigmaVerdict:
    """Eq. 10: is every input with ``|f_n(x) - l| >= sigma`` safe from flips? ``status`` is
    ``verified`` (both sides' sound uppers < sigma), ``falsified`` (a side's witness flips
    at distance >= sigma) or ``unknown``; ``result`` holds the per-side bounds reached."""

    status: str
    sigma: float
    result: SigmaResult

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": "sigma verify",
            "status": self.status,
            "sigma": self.sigma,
            **{k: v for k, v in self.result.to_dict().items() if k != "query"},
        }

    def to_text(self) -> str:
        return f"sigma verify {self.sigma:g}: {self.status}\n" + self.result.to_text()


def make_problem(net: Network, pert: Perturbation, level: float | None) -> Problem:
    """Check that ``net`` has one output and a sigmoid head or none; set up the threshold."""
    shape = net.shapes()[net.output_node]
    if math.prod(shape) != 1:
        raise InputError(
            "sigma needs a single-output network (binary sigmoid head or a raw score); "
            f"this one has output shape {shape}"
        )
    head = None if net.head is None else type(net.node(net.head).op).__name__
    if head not in (None, "Sigmoid"):
        raise InputError(f"sigma supports a sigmoid head or none, not {head}")
    t = threshold(net, level)
    sig = head == "Sigmoid"
    lv = (0.5 if level is None else level) if sig else t
    pair = difference_network(net, logits=True)
    return Problem(net, pert, t, lv, sig, pair, pair_radii(pert, pair), plain_radii(pert, net))


def check_finite(p: Problem, box: Box) -> None:
    """Refuse a box whose interval bounds overflow on either network of the problem."""
    require_finite(p.net, box, p.plain_radii, "sigma")
    require_finite(p.pair, box, p.pair_radii, "sigma")


def side_upper(p: Problem, side: str, boxes: Box, method: Method = "crown") -> Tensor:
    """Sound upper bound (B,) of the side's sigma over each box; ``-inf`` where no input of
    the box can flip on that side."""
    s = 1.0 if side == "above" else -1.0
    target = p.net.logits_node
    z_n, _ = bound_spec(p.net, boxes, {}, _PM, method, target=target)  # ub z_n, ub -z_n
    z_p, _ = bound_spec(p.net, boxes, p.plain_radii, _PM, method, target=target)
    diff, _ = bound_spec(p.pair, boxes, p.pair_radii, _PM, method)  # ub (z_p - z_n), ub (z_n - z_p)
    i = 0 if side == "above" else 1
    n_up = z_n[:, i] - s * p.t  # >= s (z_n - t)
    p_low = -z_p[:, 1 - i] - s * p.t  # <= s (z_p - t)
    slack = torch.minimum(n_up, diff[:, 1 - i])
    tol = 1e-12 * (1.0 + abs(p.t))
    empty = (n_up < -tol) | (p_low >= tol)
    if p.sigmoid:
        value = s * (torch.sigmoid(p.t + s * slack.clamp(min=0)) - p.level)
    else:
        value = slack.clamp(min=0)
    value = value + OUT_MARGIN * (1.0 + abs(p.level))
    return torch.where(empty, torch.full_like(value, -torch.inf), value)


def sigma(
    net: Network,
    pert: Perturbation,
    box: Box,
    budget: Budget = Budget(),
    level: float | None = None,
) -> SigmaResult:
    """Eq. 13 per side over the input ``box`` (batch 1): ``SigmaResult`` with both sides."""
    with engine_threads(net), memory_cap(budget.memory_limit()):
        return _sigma(net, pert, box, budget, level, None)


def sigma_verify(
    net: Network,
    pert: Perturbation,
    box: Box,
    sigma_value: float,
    budget: Budget = Budget(),
    level: float | None = None,
) -> SigmaVerdict:
    """Eq. 10: each side's search stops once it is decided against ``sigma_value``."""
    with engine_threads(net), memory_cap(budget.memory_limit()):
        res = _sigma(net, pert, box, budget, level, sigma_value)
    sides = (res.above, res.below)
    if any(c.lower >= sigma_value and c.witness is not None for c in sides):
        status = "falsified"
    elif all(c.upper < sigma_value for c in sides):
        status = "verified"
    else:
        status = "unknown"
    return SigmaVerdict(status, sigma_value, res)


def _sigma(
    net: Network,
    pert: Perturbation,
    box: Box,
    budget: Budget,
    level: float | None,
    target: float | None,
) -> SigmaResult:
    start = time.perf_counter()
    p = make_problem(net, pert, level)
    check_finite(p, box)
    engine = f"quantcert-{budget.method}"
    deadline = start + budget.timeout
    certs = [_side(p, side, box, budget, deadline, target, engine) for side in SIDES]
    elapsed = time.perf_counter() - start
    certs = [dataclasses.replace(c, time_s=elapsed) for c in certs]
    spec = {
        "perturbation": pert.description,
        "level": p.level,
        "threshold_logit": p.t,
        "gap": budget.gap,
        "timeout": budget.timeout,
        **box_echo(box),
    }
    if target is not None:
        spec["sigma"] = target
    return SigmaResult(certs[0], certs[1], p.level, elapsed, engine, spec)


def _side(
    p: Problem,
    side: str,
    box: Box,
    budget: Budget,
    deadline: float,
    target: float | None,
    engine: str,
) -> Certificate:
    """Branch and bound for one side; ``target`` (verification) stops it once decided."""

    def bound(boxes: Box) -> Tensor:
        return side_upper(p, side, boxes, budget.method)

    def attack(boxes: Box, steps: int) -> Witness:
        return side_search(p, side, boxes, steps, restarts=16 if steps > 20 else 4)

    def decided(lower: float, upper: float) -> bool:
        if upper == -math.inf or upper - max(lower, 0.0) <= budget.gap:  # sigma >= 0 always
            return True
        return target is not None and (lower >= target or upper < target)

    memory = Memory(budget.memory_limit(), batch_bytes(p.pair, passes=3))
    out = maximise(bound, attack, box, budget.gap, deadline, decided=decided, memory=memory)
    if out.upper == -math.inf:  # no input of the box can flip on this side
        return Certificate(0.0, 0.0, "verified", None, 0.0, engine)
    w = out.witness
    status, reason = _status(out.status)
    if w.value == -math.inf:  # none found: sigma >= 0 holds trivially
        upper = upper_of(out.upper, 0.0)
        if reached(0.0, upper, budget.gap):
            status, reason = "optimal", None
        return Certificate(0.0, upper, status, None, 0.0, engine, reason)
    lower = lower_of(w.value)
    if reached(lower, out.upper, budget.gap):
        status, reason = "optimal", None
    upper = upper_of(out.upper, lower)
    return Certificate(lower, upper, status, _record(p.net, w), 0.0, engine, reason)


def _status(bab_status: str) -> tuple[str, str | None]:
    """B&B's end reason as a certificate status (``exhausted``: stopped short of the gap;
    ``memory``: ``bounded`` with a reason)."""
    if bab_status in ("exhausted", "optimal"):
        return "bounded", None
    return certificate_status(bab_status)


def sigma_run(
    net: Network,
    pert: Perturbation,
    box: Box,
    budget: Budget,
    level: float | None,
    engine: str,
    json_target: str | None,
) -> None:
    """``quantcert sigma`` on a prepared network and perturbation (``--weights``/
    ``--biases``/``--activations``/``--input``, set up as epsilon's and flip's): prints the
    table, or writes JSON to ``json_target`` (``-``: stdout). The exact engine takes the
    parameter formats; quantization noise on activations or the input is refused there."""
    from quantcert.ops import QuantNoise
    from quantcert.report.output import write_json

    if not budget.gap >= 0 or not budget.timeout > 0:
        raise InputError("--gap must be >= 0 and --timeout > 0")
    if engine == "exact":
        if any(isinstance(n.op, QuantNoise) for n in net.nodes):
            raise InputError("--engine exact does not take --activations or --input")
        from quantcert.analyses.paper_cli import sigma_exact

        result = sigma_exact(net, pert, box, budget, level)
    else:
        result = sigma(net, pert, box, budget, level)
    if json_target is None:
        print(result.to_text())
    else:
        write_json(result.to_dict(), json_target)
