"""``--engine exact``: the seed's queries answered by the SCIP backend, as the same typed
results our engine returns (a cross-check, and a fallback for small networks)."""

from __future__ import annotations

import numpy as np

from quantcert.analyses.epsilon import Budget
from quantcert.engines import exact
from quantcert.engines.perturbation import Perturbation
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import Box
from quantcert.report.results import Certificate, QueryResult, WitnessRecord


def _radius(pert: Perturbation) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in pert.radius.items()}


def exact_certificate(net: Network, res: exact.ExactResult) -> Certificate:
    """An exact-backend answer as a certificate; witness offsets shaped like the tensors."""
    witness = None
    if res.witness_x is not None:
        nominal = net.param_tensors()
        offsets = {
            k: np.asarray(v).reshape(nominal[k].shape) - nominal[k].numpy()
            for k, v in res.witness_params.items()
        }
        witness = WitnessRecord(np.asarray(res.witness_x), offsets, res.lower)
    return Certificate(res.lower, res.upper, res.status, witness, res.time_s, f"exact-{res.engine}")


def _where(box: Box) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    """``(point, None)`` for a degenerate box, else ``(None, (lo, hi))``."""
    lo, hi = box.lo[0].flatten().numpy(), box.hi[0].flatten().numpy()
    return (lo, None) if np.array_equal(lo, hi) else (None, (lo, hi))


def _single_output(net: Network) -> None:
    if int(np.prod(net.shapes()[net.output_node])) != 1:
        raise InputError("--engine exact handles single-output networks; use the default engine")


def epsilon_exact(net: Network, pert: Perturbation, box: Box, budget: Budget) -> QueryResult:
    _single_output(net)
    res = exact.max_abs_change(
        net,
        _radius(pert),
        *_where(box),
        time_limit=budget.timeout,
        absgap=budget.gap,
    )
    point = bool(np.array_equal(box.lo.numpy(), box.hi.numpy()))
    spec = {"perturbation": pert.description, "gap": budget.gap, "timeout": budget.timeout}
    return QueryResult(
        "epsilon " + ("local" if point else "global"), exact_certificate(net, res), (), spec
    )


def flip_exact(
    net: Network, pert: Perturbation, box: Box, budget: Budget, level: float | None
) -> QueryResult:
    _single_output(net)
    res = exact.flip(
        net,
        _radius(pert),
        *_where(box),
        level=0.5 if level is None else level,
        time_limit=budget.timeout,
    )
    point = bool(np.array_equal(box.lo.numpy(), box.hi.numpy()))
    spec = {"perturbation": pert.description, "timeout": budget.timeout}
    cert = exact_certificate(net, res)
    return QueryResult("flip " + ("local" if point else "global"), cert, (), spec)
