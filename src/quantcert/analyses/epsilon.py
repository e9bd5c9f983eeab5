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
    polish,
    search,
    search_rows,
)
from quantcert.engines.bab import (
    BabOutcome,
    Memory,
    best_of,
    best_witness,
    default_memory_budget,
    lower_of,
    maximise,
    reached,
    tightest,
    upper_of,
)
from quantcert.engines.bounds import (
    Method,
    Radii,
    batch_bytes,
    bound_spec,
    engine_threads,
    memory_cap,
    require_finite,
)
from quantcert.engines.device import pick_device, placed
from quantcert.engines.pair import difference_network, pair_radii
from quantcert.engines.param_split import JointSearch, choose_parameters, splits_parameters
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
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N" (engines/device.py)
    memory: int | None = None  # bytes for the whole process; None: half the machine's

    def memory_limit(self) -> int:
        return self.memory if self.memory is not None else default_memory_budget()


#: The reason a certificate carries when the memory budget stopped its search.
MEMORY_REASON = "memory budget reached"


#: Why a search ended short of its gap: the certificate is then ``bounded`` with this reason.
STOP_REASONS = {
    "memory": MEMORY_REASON,
    "timeout": "budget: the time limit was reached",
    "interrupted": "interrupted: stopped by a signal; the bounds so far hold",
    "exhausted": "stalled: no split left",
}
#: The statuses a certificate carries (README, "Status words").
STATUSES = ("optimal", "bounded", "verified", "falsified", "unknown")


def certificate_status(bab_status: str) -> tuple[str, str | None]:
    """A branch and bound's end reason as a certificate's (status, reason): one vocabulary,
    ``optimal`` (gap met) or ``bounded`` with the reason it stopped short (``STOP_REASONS``)."""
    if bab_status in STOP_REASONS:
        return "bounded", STOP_REASONS[bab_status]
    return bab_status, None


def input_box(net: Network, lo: np.ndarray, hi: np.ndarray) -> Box:
    """One box (batch 1) shaped like the network's input."""
    shape = (1, *net.input_shape)
    return Box(
        torch.as_tensor(np.array(lo, dtype=np.float64)).reshape(shape),
        torch.as_tensor(np.array(hi, dtype=np.float64)).reshape(shape),
    )


def box_echo(box: Box) -> dict[str, object]:
    """The input box as results echo it: its bounds up to 64 values, else ``(large)``."""
    small = box.lo.numel() <= 64
    return {
        "lo": box.lo.flatten().tolist() if small else "(large)",
        "hi": box.hi.flatten().tolist() if small else "(large)",
    }


def _record(net: Network, w: Witness) -> WitnessRecord:
    offsets = {k: v.cpu().numpy() for k, v in w.offsets(net).items()}
    return WitnessRecord(w.x.cpu().numpy(), offsets, w.value, w.error, w.below_error_scale)


def epsilon(net: Network, pert: Perturbation, box: Box, budget: Budget = Budget()) -> QueryResult:
    """Bound ``max |f_theta(x) - f_theta0(x)|`` for x in ``box`` (a point when lo == hi)."""
    device = pick_device(budget.device, net.num_params())
    with engine_threads(net), placed(device), memory_cap(budget.memory_limit()):
        return _epsilon(net.to_device(device), pert.to(device), box.to(device), budget)


@dataclass(frozen=True)
class _Query:
    """One eps query on the difference network: rows ``signs`` are ``+diff_k`` and
    ``-diff_k``; ``objective`` has the same columns for witness searches."""

    net: Network
    pert: Perturbation
    box: Box
    pair: Network
    radii: Radii
    signs: Tensor
    objective: Objective
    budget: Budget
    deadline: float

    def bound_rows(self, boxes: Box) -> Tensor:
        upper, _ = bound_spec(self.pair, boxes, self.radii, self.signs, self.budget.method)
        return upper  # (B, 2K)

    def certificate(self, lower: float, upper: float, status: str, w: Witness) -> Certificate:
        """``status`` may be a branch and bound's (``memory``: ``bounded`` with a reason);
        ``optimal`` only where the gap is really reached."""
        status, reason = certificate_status(status)
        if status == "optimal" and not reached(lower, upper, self.budget.gap):
            status = "bounded"
        record = _record(self.net, w)
        return Certificate(lower, upper, status, record, 0.0, _engine(self.budget), reason)

    def memory(self, passes: int = 1) -> Memory:
        return Memory(self.budget.memory_limit(), batch_bytes(self.pair, passes))


def _epsilon(net: Network, pert: Perturbation, box: Box, budget: Budget) -> QueryResult:
    start = time.perf_counter()
    pair = difference_network(net)
    n_out = int(np.prod(net.shapes()[net.output_node]))
    eye = torch.eye(n_out, dtype=DTYPE)
    signs = torch.cat([eye, -eye])
    objective = difference_objective(net, signs)
    radii = pair_radii(pert, pair)
    require_finite(pair, box, radii, "epsilon")
    q = _Query(
        net, pert, box, pair, radii, signs, objective, budget, start + budget.timeout,
    )  # fmt: skip
    root_rows = q.bound_rows(box)[0]
    witnesses = _first_witnesses(q, n_out)
    per_output = []
    for k in range(n_out):
        w = best_witness([witnesses[k], witnesses[n_out + k]])
        up = upper_of(float(root_rows[k]), float(root_rows[n_out + k]))
        per_output.append(q.certificate(lower_of(w.value, 0.0), upper_of(up, w.value), "bound", w))
    best = best_witness(witnesses)
    point = bool(torch.equal(box.lo, box.hi))
    root_upper = upper_of(*[c.upper for c in per_output])
    overall = _local(q, best, root_upper) if point else _global(q, best)
    elapsed = time.perf_counter() - start
    overall = _with_time(overall, elapsed)
    # The overall upper bounds every output's change, and may be tighter after splitting.
    per_output = [
        _with_time(
            dataclasses.replace(c, upper=upper_of(tightest(c.upper, overall.upper), c.lower)),
            elapsed,
        )
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
            **box_echo(box),
        },
    )


def _first_witnesses(q: _Query, n_out: int) -> list[Witness]:
    """The best witness per objective column from a search over the whole box."""
    columns = 2 * n_out
    small = q.pert.count * n_out < 200_000  # large nets: one start per column, fewer steps
    restarts, steps = (4, 30) if small else (1, 6)
    if splits_parameters(q.pert):
        # Few perturbed parameters: many cheap restarts (random corners of the parameter box),
        # no more than there are corners, and shorter ascents. (Measured on 2-4-4-1 nets: 32
        # restarts miss the best corner for some seeds, 128 do not.)
        restarts = max(4, min(128, 4096 // columns, 2 ** min(q.pert.count, 7)))
        steps = 20
    found = search(
        q.net, q.pert, q.box, q.objective, columns, restarts=restarts, steps=steps, thorough=True
    )
    if not splits_parameters(q.pert):
        return found
    return [polish(q.net, q.pert, q.box, q.objective, w, k) for k, w in enumerate(found)]


def _local(q: _Query, best: Witness, upper: float) -> Certificate:
    """At a point: the root bound, then ReLU splits, then splits of the parameter box."""
    lower, gap = best.value, q.budget.gap
    status = "optimal" if reached(lower, upper, gap) else "bounded"
    if status == "bounded" and relu_inputs(q.pair):
        split = _split_relus(q, lower)
        upper = upper_of(tightest(upper, split.upper), lower)
        status = "optimal" if reached(lower, upper, gap) else split.status
    if status == "bounded" and splits_parameters(q.pert):  # not after a timeout or Ctrl-C
        out = best_of(BabOutcome(lower, upper, best, status, 0, 0), _joint(q, best))
        lower, upper, best = out.lower, out.upper, out.witness
        status = "optimal" if reached(lower, upper, gap) else out.status
    return q.certificate(lower, upper, status, best)


def _global(q: _Query, best: Witness) -> Certificate:
    """Over an input box: split the input box; where that runs out of boxes and few
    parameters are perturbed, split inputs and parameters together (cross-layer products of
    perturbed weights leave a gap that input splits alone cannot close)."""
    joint_next = splits_parameters(q.pert)
    out = _split_inputs(q, best, max_boxes=20_000 if joint_next else 200_000)
    if out.status != "exhausted" or not joint_next:
        return q.certificate(out.lower, out.upper, out.status, out.witness)
    out = best_of(out, _joint(q, out.witness))
    status = "optimal" if reached(out.lower, out.upper, q.budget.gap) else out.status
    return q.certificate(out.lower, out.upper, status, out.witness)


def _split_relus(q: _Query, lower: float) -> SplitOutcome:
    """At a point, tighten the bound by branching on unstable ReLUs of the perturbed copy."""

    def bound(clamp: Mapping[str, Box], boxes: Box) -> tuple[Tensor, Mapping[str, Box]]:
        upper, bounds = bound_spec(q.pair, boxes, q.radii, q.signs, q.budget.method, clamp=clamp)
        return upper.max(1).values, bounds

    return maximise_over_splits(
        q.pair, bound, q.box, lower, q.budget.gap, q.deadline, memory=q.memory()
    )


def _joint(q: _Query, start: Witness) -> BabOutcome:
    """Branch and bound over the input box and every perturbed parameter."""

    def bound_pair(moved: Network, boxes: Box, moved_radii: Radii) -> Tensor:
        upper, _ = bound_spec(moved, boxes, moved_radii, q.signs, q.budget.method)
        return upper.max(1).values

    search_space = JointSearch(
        choose_parameters(q.net, q.pert),
        q.pair,
        q.radii,
        bound_pair,
        q.objective,
        q.signs.shape[0],
    )
    return search_space.maximise(
        q.box,
        start,
        q.budget.gap,
        q.deadline,
        progress=q.budget.progress,
        memory=Memory(q.budget.memory_limit(), batch_bytes(q.pair)),
    )


def _split_inputs(q: _Query, start: Witness, max_boxes: int) -> BabOutcome:
    """Branch and bound over the input box, the whole parameter box in every bound."""

    def bound(boxes: Box) -> Tensor:
        upper: Tensor = q.bound_rows(boxes).max(1).values
        return upper

    best = [start]

    def attack(boxes: Box, steps: int) -> Witness:
        # Warm start from the best parameters so far: the maximising corner of theta can
        # differ from the one the gradient at theta0 points to.
        found = search(
            q.net,
            q.pert,
            boxes,
            q.objective,
            q.signs.shape[0],
            restarts=1,
            steps=steps,
            warm=best[0].params,
        )
        top = best_witness(found)
        best[0] = top if top.value > best[0].value else best[0]
        return top

    return maximise(
        bound,
        attack,
        q.box,
        q.budget.gap,
        q.deadline,
        max_boxes=max_boxes,
        # ACAS Xu prop 3 box, 60 s: upper 0.080 with gradient-chosen sides, 0.103 without.
        split_by_gradient=True,
        initial=start,
        progress=q.budget.progress,
        memory=q.memory(),
    )


def _engine(budget: Budget) -> str:
    return f"quantcert-{budget.method}"


def _with_time(c: Certificate, t: float) -> Certificate:
    return dataclasses.replace(c, time_s=t)


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
    net: Network,
    pert: Perturbation,
    points: np.ndarray,
    method: Method = "crown",
    steps: int = 20,
    device: str = "auto",
) -> LocalEpsilons:
    """Batched Def. 1 at each row of ``points`` (N, *input_shape): one bound pass for all
    points, and a per-point witness search over the parameter box."""
    where = pick_device(device, net.num_params())
    with engine_threads(net), placed(where), memory_cap(default_memory_budget()):
        return _local_epsilons(net.to_device(where), pert.to(where), points, method, steps)


def _local_epsilons(
    net: Network, pert: Perturbation, points: np.ndarray, method: Method, steps: int
) -> LocalEpsilons:
    start = time.perf_counter()
    x = torch.as_tensor(points, dtype=DTYPE).reshape(-1, *net.input_shape)
    pair = difference_network(net)
    n_out = int(np.prod(net.shapes()[net.output_node]))
    eye = torch.eye(n_out, dtype=DTYPE)
    radii = pair_radii(pert, pair)
    require_finite(pair, Box(x, x), radii, "epsilon")
    upper, _ = bound_spec(pair, Box(x, x), radii, torch.cat([eye, -eye]), method)
    eps_upper = upper.max(1).values
    best, offsets = _point_witnesses(net, pert, x, steps)
    best, eps_upper = best.cpu(), eps_upper.cpu()
    return LocalEpsilons(
        best.numpy(),
        np.maximum(eps_upper.numpy(), best.numpy()),
        x.cpu().numpy(),
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
    offsets = {k: (v[pick] - nominal[k]).cpu().numpy() for k, v in params.items()}
    return values[pick], offsets
