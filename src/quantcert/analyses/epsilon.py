"""Seed 000 Defs. 1-2: the largest change ``|f_theta(x) - f_theta0(x)|`` over the parameter
box, at a point (local) or over an input box (global), per output and overall."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from quantcert.engines.attack import (
    Objective,
    Witness,
    difference_objective,
    search,
    search_rows,
)
from quantcert.engines.bab import maximise
from quantcert.engines.bounds import Method, Radii, bound_spec, engine_threads
from quantcert.engines.pair import difference_network, pair_radii
from quantcert.engines.perturbation import Perturbation
from quantcert.engines.relu_split import SplitOutcome, maximise_over_splits, relu_inputs
from quantcert.network import Network
from quantcert.ops.base import DTYPE, Box
from quantcert.report.results import Certificate, QueryResult, WitnessRecord


@dataclass(frozen=True)
class Budget:
    """When to stop, how to bound, and where to report the running ``[lower, upper]``."""

    gap: float = 1e-4
    timeout: float = 60.0
    method: Method = "crown"
    progress: Callable[[float, float, int], None] | None = None


def input_box(net: Network, lo: np.ndarray, hi: np.ndarray) -> Box:
    """One box (batch 1) shaped like the network's input."""
    shape = (1, *net.input_shape)
    return Box(
        torch.as_tensor(lo, dtype=DTYPE).reshape(shape),
        torch.as_tensor(hi, dtype=DTYPE).reshape(shape),
    )


def _record(net: Network, w: Witness) -> WitnessRecord:
    offsets = {k: v.numpy() for k, v in w.offsets(net).items()}
    return WitnessRecord(w.x.numpy(), offsets, w.value)


def epsilon(net: Network, pert: Perturbation, box: Box, budget: Budget = Budget()) -> QueryResult:
    """Bound ``max |f_theta(x) - f_theta0(x)|`` for x in ``box`` (a point when lo == hi)."""
    with engine_threads(net):
        return _epsilon(net, pert, box, budget)


def _epsilon(net: Network, pert: Perturbation, box: Box, budget: Budget) -> QueryResult:
    start = time.perf_counter()
    deadline = start + budget.timeout
    pair = difference_network(net)
    radii = pair_radii(pert, pair)
    n_out = int(np.prod(net.shapes()[net.output_node]))
    eye = torch.eye(n_out, dtype=DTYPE)
    signs = torch.cat([eye, -eye])  # rows: +diff_k, -diff_k

    def bound_rows(boxes: Box) -> Tensor:
        upper, _ = bound_spec(pair, boxes, radii, signs, budget.method)
        return upper  # (B, 2K)

    objective = difference_objective(net, signs)
    root_rows = bound_rows(box)[0]
    per_output = []
    small = pert.count * n_out < 200_000  # large nets: one start per column, fewer steps
    witnesses = search(
        net, pert, box, objective, 2 * n_out, restarts=4 if small else 1, steps=30 if small else 6
    )
    for k in range(n_out):
        w = max(witnesses[k], witnesses[n_out + k], key=lambda v: v.value)
        up = float(torch.maximum(root_rows[k], root_rows[n_out + k]))
        cert = Certificate(
            max(w.value, 0.0), max(up, w.value), "bound", _record(net, w), 0.0, _engine(budget)
        )
        per_output.append(cert)
    point = bool(torch.equal(box.lo, box.hi))
    if point:
        best = max(witnesses, key=lambda v: v.value)
        lower, upper = best.value, max(c.upper for c in per_output)
        status = "optimal" if upper - lower <= budget.gap else "bounded"
        if status == "bounded" and relu_inputs(pair):
            split = _split_relus(pair, radii, signs, box, lower, budget, deadline)
            upper = max(min(upper, split.upper), lower)
            status = "optimal" if upper - lower <= budget.gap else split.status
        overall = Certificate(lower, upper, status, _record(net, best), 0.0, _engine(budget))
    else:
        start_witness = max(witnesses, key=lambda v: v.value)
        overall = _global(
            net, pert, box, bound_rows, objective, 2 * n_out, budget, deadline, start_witness
        )
    elapsed = time.perf_counter() - start
    overall = _with_time(overall, elapsed)
    # The overall upper bounds every output's change, and may be tighter after splitting.
    per_output = [
        _with_time(dataclasses.replace(c, upper=max(min(c.upper, overall.upper), c.lower)), elapsed)
        for c in per_output
    ]
    return QueryResult(
        "epsilon " + ("local" if point else "global"),
        overall,
        tuple(per_output),
        {
            "perturbation": pert.description,
            "gap": budget.gap,
            "timeout": budget.timeout,
            "lo": box.lo.flatten().tolist() if box.lo.numel() <= 64 else "(large)",
            "hi": box.hi.flatten().tolist() if box.hi.numel() <= 64 else "(large)",
        },
    )


def _split_relus(
    pair: Network,
    radii: Radii,
    signs: Tensor,
    box: Box,
    lower: float,
    budget: Budget,
    deadline: float,
) -> SplitOutcome:
    """At a point, tighten the bound by branching on unstable ReLUs of the perturbed copy."""

    def bound(clamp: Mapping[str, Box], boxes: Box) -> tuple[Tensor, Mapping[str, Box]]:
        upper, bounds = bound_spec(pair, boxes, radii, signs, budget.method, clamp=clamp)
        return upper.max(1).values, bounds

    return maximise_over_splits(pair, bound, box, lower, budget.gap, deadline)


def _global(
    net: Network,
    pert: Perturbation,
    box: Box,
    bound_rows: Callable[[Box], Tensor],
    objective: Objective,
    columns: int,
    budget: Budget,
    deadline: float,
    start_witness: Witness,
) -> Certificate:
    def bound(boxes: Box) -> Tensor:
        upper: Tensor = bound_rows(boxes).max(1).values
        return upper

    best = [start_witness]

    def attack(boxes: Box, steps: int) -> Witness:
        # Warm start from the best parameters so far: the maximising corner of theta can
        # differ from the one the gradient at theta0 points to.
        found = search(
            net, pert, boxes, objective, columns, restarts=1, steps=steps, warm=best[0].params
        )
        top = max(found, key=lambda w: w.value)
        best[0] = top if top.value > best[0].value else best[0]
        return top

    out = maximise(
        bound, attack, box, budget.gap, deadline, initial=start_witness, progress=budget.progress
    )
    return Certificate(
        out.lower, out.upper, out.status, _record(net, out.witness), 0.0, _engine(budget)
    )


def _engine(budget: Budget) -> str:
    return f"quantcert-{budget.method}"


def _with_time(c: Certificate, t: float) -> Certificate:
    return Certificate(c.lower, c.upper, c.status, c.witness, t, c.engine)


@dataclass(frozen=True)
class LocalEpsilons:
    """Local eps at many points: ``lower`` attained by ``witness_offsets`` (theta - theta0 per
    point), ``upper`` sound; arrays of shape (N,) (max over outputs)."""

    lower: np.ndarray
    upper: np.ndarray
    points: np.ndarray
    witness_offsets: dict[str, np.ndarray]
    time_s: float


def local_epsilons(
    net: Network, pert: Perturbation, points: np.ndarray, method: Method = "crown", steps: int = 20
) -> LocalEpsilons:
    """Batched Def. 1 at each row of ``points`` (N, *input_shape): one bound pass for all
    points, and a per-point witness search over the parameter box."""
    with engine_threads(net):
        return _local_epsilons(net, pert, points, method, steps)


def _local_epsilons(
    net: Network, pert: Perturbation, points: np.ndarray, method: Method, steps: int
) -> LocalEpsilons:
    start = time.perf_counter()
    x = torch.as_tensor(points, dtype=DTYPE).reshape(-1, *net.input_shape)
    pair = difference_network(net)
    n_out = int(np.prod(net.shapes()[net.output_node]))
    eye = torch.eye(n_out, dtype=DTYPE)
    upper, _ = bound_spec(pair, Box(x, x), pair_radii(pert, pair), torch.cat([eye, -eye]), method)
    eps_upper = upper.max(1).values
    best, offsets = _point_witnesses(net, pert, x, steps)
    return LocalEpsilons(
        best.numpy(),
        np.maximum(eps_upper.numpy(), best.numpy()),
        x.numpy(),
        offsets,
        time.perf_counter() - start,
    )


def _point_witnesses(
    net: Network, pert: Perturbation, x: Tensor, steps: int
) -> tuple[Tensor, dict[str, np.ndarray]]:
    """Per point, the larger of the ascents on +max_k diff_k and -min_k diff_k."""
    n = x.shape[0]
    both = torch.cat([x, x])
    sign = torch.cat([torch.ones(n, dtype=DTYPE), -torch.ones(n, dtype=DTYPE)])

    def objective(xs: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        d = (net(xs, params) - net(xs)).flatten(1) * sign.unsqueeze(1)
        out: Tensor = d.max(1).values.unsqueeze(1)
        return out

    found = search_rows(net, pert, Box(both, both), objective, steps)
    values, params = found
    pick = torch.where(values[:n] >= values[n:], torch.arange(n), torch.arange(n) + n)
    nominal = net.param_tensors()
    offsets = {k: (v[pick] - nominal[k]).numpy() for k, v in params.items()}
    return values[pick], offsets
