"""Seed 000 Defs. 3-4: can a parameter setting in the box change the label, at a point or
anywhere in an input box?

Work in logit space. A flip score ``g(x, theta)`` is positive exactly where the nominal and
perturbed labels differ: for a binary head with threshold ``t`` (``logit(level)`` after a
sigmoid), ``g = max(min(z_n - t, t - z_p), min(t - z_n, z_p - t))``; for ``K`` classes,
``g = max_c min(z_n[c] - max_j z_n[j], max_j z_p[j] - z_p[c])``. ``verified`` when a sound
upper bound of ``g`` is negative, ``falsified`` when a witness really changes the label.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import torch
from torch import Tensor

from quantcert.analyses.epsilon import MEMORY_REASON, Budget, _record
from quantcert.engines.attack import Objective, Witness, search
from quantcert.engines.bab import Memory, best_of, best_witness, maximise
from quantcert.engines.bounds import (
    Radii,
    batch_bytes,
    bound_spec,
    engine_threads,
    memory_cap,
    require_finite,
)
from quantcert.engines.device import pick_device, placed
from quantcert.engines.pair import NOMINAL, PERTURBED, difference_network, pair_radii
from quantcert.engines.param_split import JointSearch, choose_parameters, splits_parameters
from quantcert.engines.perturbation import Perturbation
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import DTYPE, Box
from quantcert.report.results import Certificate, QueryResult


def threshold(net: Network, level: float | None) -> float:
    """The logit threshold of a binary network: positive label iff logit >= threshold."""
    if net.head is not None and type(net.node(net.head).op).__name__ == "Sigmoid":
        lv = 0.5 if level is None else level
        if not 0.0 < lv < 1.0:
            raise InputError(f"--level must lie in (0, 1) for a sigmoid output, got {lv}")
        return math.log(lv / (1 - lv))
    if level is None:
        return 0.0
    if not math.isfinite(level):
        raise InputError(f"--level must be a finite number, got {level}")
    k = math.prod(net.shapes()[net.logits_node])
    if k > 1:  # argmax decides: a level would be ignored without a word
        raise InputError(f"--level needs a single-output network; this one has {k} (argmax)")
    return level


def output_level(net: Network, level: float | None) -> float:
    """The same decision level in the network's *output* space, for engines that encode the
    whole network (``--engine exact``): the probability level (default 0.5) after a sigmoid
    head, else the raw-score threshold ``threshold(net, level)`` (default 0)."""
    t = threshold(net, level)  # validates the level
    if net.head is not None and type(net.node(net.head).op).__name__ == "Sigmoid":
        return 0.5 if level is None else level
    return t


def level_spec(net: Network, level: float | None) -> dict[str, object]:
    """The decision rule every flip result echoes: ``level`` (output space; ``"argmax"`` for
    several classes) and ``threshold_logit`` (the logit it compares with)."""
    k = math.prod(net.shapes()[net.logits_node])
    if k > 1:
        return {"level": "argmax", "threshold_logit": threshold(net, level)}
    return {"level": output_level(net, level), "threshold_logit": threshold(net, level)}


def labels(logits: Tensor, t: float) -> Tensor:
    """Labels from logits (B, K): binary ``z >= t``, else argmax."""
    if logits.shape[1] == 1:
        return (logits[:, 0] >= t).long()
    return logits.argmax(1)


def _pair_specs(k: int) -> Tensor:
    """Rows ``e_c - e_j`` for all c != j (binary: rows +1 and -1)."""
    if k == 1:
        return torch.tensor([[1.0], [-1.0]], dtype=DTYPE)
    rows = [
        torch.eye(k, dtype=DTYPE)[c] - torch.eye(k, dtype=DTYPE)[j]
        for c in range(k)
        for j in range(k)
        if c != j
    ]
    return torch.stack(rows)


def _score_upper(u_n: Tensor, u_p: Tensor, k: int, t: float) -> Tensor:
    """Upper bound of the flip score per box from spec upper bounds (B, rows)."""
    if k == 1:
        pos_to_neg = torch.minimum(u_n[:, 0] - t, u_p[:, 1] + t)
        neg_to_pos = torch.minimum(u_n[:, 1] + t, u_p[:, 0] - t)
        return torch.maximum(pos_to_neg, neg_to_pos)
    b = u_n.shape[0]
    full_n = torch.full((b, k, k), torch.inf, dtype=DTYPE)
    full_p = torch.full((b, k, k), -torch.inf, dtype=DTYPE)
    idx = [(c, j) for c in range(k) for j in range(k) if c != j]
    for r, (c, j) in enumerate(idx):
        full_n[:, c, j] = u_n[:, r]
        full_p[:, c, j] = u_p[:, r]
    stays = full_n.min(2).values  # >= z_n[c] - max_j z_n[j]
    moves = full_p.max(1).values  # >= max_j z_p[j] - z_p[c]
    return torch.minimum(stays, moves).max(1).values


def score_objective(net: Network, t: float) -> Objective:
    def objective(x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        z_p, z_n = net.logits(x, params), net.logits(x)
        if z_n.shape[1] == 1:
            a = torch.minimum(z_n[:, 0] - t, t - z_p[:, 0])
            b = torch.minimum(t - z_n[:, 0], z_p[:, 0] - t)
            return torch.maximum(a, b).unsqueeze(1)
        k = z_n.shape[1]
        eye = torch.eye(k, dtype=torch.bool)
        n_other = z_n.unsqueeze(1).expand(-1, k, -1).masked_fill(eye, -torch.inf).max(2).values
        p_other = z_p.unsqueeze(1).expand(-1, k, -1).masked_fill(eye, -torch.inf).max(2).values
        score = torch.minimum(z_n - n_other, p_other - z_p)
        return score.max(1).values.unsqueeze(1)

    return objective


def search_objective(net: Network, t: float) -> Objective:
    """Two columns to ascend: the score itself, and the perturbed margin against the nominal
    label (``> 0`` iff the label changes). The score's max over classes ties at the nominal
    point, where a constant branch can carry the gradient; the margin has no such tie."""
    score = score_objective(net, t)

    def objective(x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        z_p, z_n = net.logits(x, params), net.logits(x)
        if z_n.shape[1] == 1:
            side = torch.where(z_n[:, 0] >= t, 1.0, -1.0).to(z_p)
            margin = side * (t - z_p[:, 0])
        else:
            label = z_n.argmax(1, keepdim=True)
            own = z_p.gather(1, label)[:, 0]
            margin = z_p.scatter(1, label, -torch.inf).max(1).values - own
        return torch.cat([score(x, params), margin.unsqueeze(1)], 1)

    return objective


def _rescore(net: Network, score: Objective, w: Witness) -> Witness:
    """The witness valued by the (sound) flip score, in float64."""
    params = {k: v.unsqueeze(0) for k, v in w.params.items()}
    with torch.no_grad():
        value = float(score(w.x.unsqueeze(0), params)[0, 0])
    return Witness(value, w.x, w.params)


def flip(
    net: Network,
    pert: Perturbation,
    box: Box,
    budget: Budget = Budget(),
    level: float | None = None,
) -> QueryResult:
    """Def. 3 at a point (``box.lo == box.hi``), Def. 4 over an input box."""
    device = pick_device(budget.device, net.num_params())
    with engine_threads(net), placed(device), memory_cap(budget.memory_limit()):
        return _flip(net.to_device(device), pert.to(device), box.to(device), budget, level)


def _flip(
    net: Network, pert: Perturbation, box: Box, budget: Budget, level: float | None
) -> QueryResult:
    start = time.perf_counter()
    t = threshold(net, level)
    pair = difference_network(net, logits=True)
    radii = pair_radii(pert, pair)
    require_finite(pair, box, radii, "flip")
    memory = Memory(budget.memory_limit(), batch_bytes(pair, passes=2))
    k = int(net.shapes()[net.logits_node][0]) if len(net.shapes()[net.logits_node]) == 1 else -1
    if k < 1:
        raise InputError("flip needs a network whose logits are a vector")
    spec = _pair_specs(k)
    nominal, perturbed = NOMINAL + net.logits_node, PERTURBED + net.logits_node

    def bound(boxes: Box) -> Tensor:
        u_n, _ = bound_spec(pair, boxes, radii, spec, budget.method, target=nominal)
        u_p, _ = bound_spec(pair, boxes, radii, spec, budget.method, target=perturbed)
        return _score_upper(u_n, u_p, k, t)

    score, objective = score_objective(net, t), search_objective(net, t)
    large = pert.count > 100_000  # large nets: one start, few steps (the first hits the corner)

    def attack(boxes: Box, steps: int) -> Witness:
        restarts, steps = (1, min(steps, 8)) if large else (4, steps)
        found = search(net, pert, boxes, objective, 2, restarts=restarts, steps=steps)
        return best_witness(_rescore(net, score, w) for w in found)

    def decided(lo: float, up: float) -> bool:
        return lo > 0 or up < 0

    deadline = start + budget.timeout
    joint_next = splits_parameters(pert)
    out = maximise(
        bound,
        attack,
        box,
        0.0,
        deadline,
        max_boxes=20_000 if joint_next else 200_000,
        decided=decided,
        progress=budget.progress,
        split_by_gradient=True,
        memory=memory,
    )
    if out.status == "exhausted" and joint_next and not decided(out.lower, out.upper):
        # Input splits ran out (always so at a point): split the parameters too.

        def bound_pair(moved: Network, boxes: Box, moved_radii: Radii) -> Tensor:
            u_n, _ = bound_spec(moved, boxes, moved_radii, spec, budget.method, target=nominal)
            u_p, _ = bound_spec(moved, boxes, moved_radii, spec, budget.method, target=perturbed)
            return _score_upper(u_n, u_p, k, t)

        space = JointSearch(
            choose_parameters(net, pert),
            pair,
            radii,
            bound_pair,
            objective,
            2,
            rescore=lambda w: _rescore(net, score, w),
        )
        out = best_of(
            out,
            space.maximise(box, out.witness, 0.0, deadline, decided, budget.progress, memory),
        )
    w = out.witness
    params = {name: v.unsqueeze(0) for name, v in w.params.items()}
    x = w.x.unsqueeze(0)
    z_p, z_n = net.logits(x, params), net.logits(x)
    finite = bool(torch.isfinite(z_p).all()) and bool(torch.isfinite(z_n).all())
    really = finite and bool(labels(z_p, t) != labels(z_n, t))
    status = "falsified" if really else ("verified" if out.upper < 0 else "unknown")
    reason = MEMORY_REASON if status == "unknown" and out.status == "memory" else None
    cert = Certificate(
        w.value,
        out.upper,
        status,
        _record(net, w),
        time.perf_counter() - start,
        f"quantcert-{budget.method}",
        reason,
    )
    point = bool(torch.equal(box.lo, box.hi))
    return QueryResult(
        "flip " + ("local" if point else "global"),
        cert,
        (),
        {
            "perturbation": pert.description,
            **level_spec(net, level),
            "timeout": budget.timeout,
            "score": "positive iff the label changes; upper < 0 proves no flip",
        },
    )
