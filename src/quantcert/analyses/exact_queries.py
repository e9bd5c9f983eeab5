"""``--engine exact``: the seed's queries answered by the SCIP backend, as the same typed
results our engine returns (a cross-check, and a fallback for small networks).

The same rules as the default engine: the decision level is ``flip.output_level`` (0 on a raw
score, 0.5 on a sigmoid's probability) and is echoed in the spec; ``optimal`` is said only
when ``upper - lower <= --gap`` (SCIP's own tolerances, and the stated margin added to its dual
bound, can leave a wider gap: that is ``bounded``); inputs whose bounds overflow are refused.
"""

from __future__ import annotations

import numpy as np

from quantcert.analyses.epsilon import Budget
from quantcert.analyses.flip import level_spec, output_level
from quantcert.engines import exact
from quantcert.engines.bab import reached
from quantcert.engines.bounds import require_finite
from quantcert.engines.pair import plain_radii
from quantcert.engines.perturbation import Perturbation
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import Box
from quantcert.report.results import Certificate, QueryResult, WitnessRecord


def _radius(pert: Perturbation) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in pert.radius.items()}


def exact_certificate(
    net: Network, res: exact.ExactResult, gap: float | None = None
) -> Certificate:
    """An exact-backend answer as a certificate; witness offsets shaped like the tensors.
    With the requested ``gap``, ``optimal`` becomes ``bounded`` where ``upper - lower``
    exceeds it."""
    witness = None
    if res.witness_x is not None:
        nominal = net.param_tensors()
        offsets = {
            k: np.asarray(v).reshape(nominal[k].shape) - nominal[k].numpy()
            for k, v in res.witness_params.items()
        }
        witness = WitnessRecord(np.asarray(res.witness_x), offsets, res.lower)
    from quantcert.analyses.epsilon import STATUSES, certificate_status

    status, reason = certificate_status(res.status)
    if status not in STATUSES:  # the solver's own word (SCIP's "stopped", "nodelimit", ...)
        status, reason = "bounded", f"stalled: the solver stopped ({res.status})"
    if status == "optimal" and gap is not None and not reached(res.lower, res.upper, gap):
        status = "bounded"
    return Certificate(
        res.lower, res.upper, status, witness, res.time_s, f"exact-{res.engine}", reason
    )


def _where(box: Box) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    """``(point, None)`` for a degenerate box, else ``(None, (lo, hi))``."""
    lo, hi = box.lo[0].flatten().numpy(), box.hi[0].flatten().numpy()
    return (lo, None) if np.array_equal(lo, hi) else (None, (lo, hi))


def _single_output(net: Network) -> None:
    if int(np.prod(net.shapes()[net.output_node])) != 1:
        raise InputError("--engine exact handles single-output networks; use the default engine")


def check_query(net: Network, pert: Perturbation, box: Box, what: str) -> None:
    """One output, and interval bounds that stay finite (``bounds.require_finite``)."""
    _single_output(net)
    require_finite(net, box, plain_radii(pert, net), what)


def epsilon_exact(net: Network, pert: Perturbation, box: Box, budget: Budget) -> QueryResult:
    check_query(net, pert, box, "epsilon")
    res = exact.max_abs_change(
        net,
        _radius(pert),
        *_where(box),
        time_limit=budget.timeout,
        gap=0.0,  # SCIP's relative gap would stop it short of --gap on large values
        absgap=budget.gap,
    )
    point = bool(np.array_equal(box.lo.numpy(), box.hi.numpy()))
    spec = {"perturbation": pert.description, "gap": budget.gap, "timeout": budget.timeout}
    return QueryResult(
        "epsilon " + ("local" if point else "global"),
        exact_certificate(net, res, budget.gap),
        (),
        spec,
    )


def flip_exact(
    net: Network, pert: Perturbation, box: Box, budget: Budget, level: float | None
) -> QueryResult:
    check_query(net, pert, box, "flip")
    res = exact.flip(
        net,
        _radius(pert),
        *_where(box),
        level=output_level(net, level),
        time_limit=budget.timeout,
    )
    point = bool(np.array_equal(box.lo.numpy(), box.hi.numpy()))
    spec = {
        "perturbation": pert.description,
        **level_spec(net, level),
        "timeout": budget.timeout,
    }
    cert = exact_certificate(net, res)
    return QueryResult("flip " + ("local" if point else "global"), cert, (), spec)
