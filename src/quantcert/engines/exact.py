"""Exact backend: seed 000's queries (Eqs. 6-13) encoded literally and solved by SCIP.

For small networks (see ``exact_encode``) SCIP's spatial branch and bound returns a global
optimum with a proven dual bound. Every answer is a certificate in the project's sense:

- ``lower``: the objective at SCIP's best solution, *re-evaluated in float64 by the IR*
  (``net(x, params)``) after clipping the solution into the boxes (and, for strict side
  conditions, nudging it a hair inside them), so a concrete witness attains it;
- ``upper``: SCIP's dual bound plus a stated margin for its tolerance ``FEASTOL`` (the margin is
  ``exact_encode.stated_margin``: every equation's effect on the objective times
  ``MARGIN_FACTOR * FEASTOL``; typically 1e-8 to 1e-7).

Labels follow the case studies: positive iff ``f >= level``. The seed's Eq. 8 as printed lists
only flips from below to above the level (both disjuncts); we check both directions: a *down*
flip ``f_n >= l > f_p`` and an *up* flip ``f_n < l <= f_p``. Strict inequalities are solved as
their closures (same supremum); a witness counts only if it satisfies the strict form.

dReal (the seed's solver) is offered for ``max_abs_change`` when ``import dreal`` works; it does
not install here, so that code path is minimal and untested.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pyscipopt import Model

from quantcert.engines.bab import upper_of
from quantcert.engines.exact_encode import (
    DREAL_DELTA,
    MARGIN_FACTOR,
    Encoding,
    dreal_available,
    dreal_witness,
    encode,
    parse_box,
    parse_radius,
    theta0,
)
from quantcert.engines.perturbation import inner_limits
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops import DTYPE

#: SCIP's feasibility tolerance (its default 1e-6 overstates a sigmoid difference by ~6e-7).
FEASTOL = 1e-9
#: A flip search stops once a solution clears the level by this much on both sides.
FLIP_STOP = 1e-6
#: Solutions within this relative distance of a bound are also tried snapped onto it.
SNAP = 1e-6

Lin = tuple[float, float, float]  # a_n * f_n + a_p * f_p + c

__all__ = [
    "ExactResult",
    "SigmaResult",
    "dreal_available",
    "flip",
    "max_abs_change",
    "sigma",
]


@dataclass(frozen=True)
class ExactResult:
    """``lower`` attained by the witness (re-evaluated in float64), ``upper`` proven by SCIP
    (plus the stated margin). ``witness_params`` holds the perturbed tensors' values theta*.
    ``status``: ``optimal`` (gap reached) or ``timeout`` for bounds; ``falsified``, ``verified``
    or ``unknown`` for flips; a sigma side with no flipping input is ``verified``."""

    lower: float
    upper: float
    status: str
    witness_x: np.ndarray | None
    witness_params: dict[str, np.ndarray]
    time_s: float
    engine: str = "scip"

    @property
    def gap(self) -> float:
        return self.upper - self.lower


@dataclass(frozen=True)
class SigmaResult:
    """Eq. 13 per side: ``above`` (nominal >= l flips down), ``below`` (nominal < l flips up)."""

    above: ExactResult
    below: ExactResult


@dataclass(frozen=True)
class _Goal:
    """Maximise ``min_j terms_j`` subject to ``constraints >= 0``; a witness counts when every
    check holds (``> 0`` where marked strict)."""

    terms: tuple[Lin, ...]
    constraints: tuple[Lin, ...] = ()
    checks: tuple[tuple[Lin, bool], ...] = ()
    primal_stop: float | None = None


@dataclass(frozen=True)
class _Witness:
    """A concrete ``(x, theta*)`` with its float64 outputs and goal value."""

    x: np.ndarray
    params: dict[str, np.ndarray]
    fn: float
    fp: float
    value: float
    valid: bool


@dataclass(frozen=True)
class _Solved:
    witness: _Witness | None
    upper: float
    status: str


@dataclass(frozen=True)
class _Setup:
    net: Network
    radius: dict[str, np.ndarray]
    lo: np.ndarray
    hi: np.ndarray
    output: int
    deadline: float
    gap: float
    absgap: float
    start: float = field(default_factory=time.perf_counter)


def _setup(
    net: Network,
    radius: Mapping[str, Any],
    point: Any,
    box: Any,
    output: int,
    limits: tuple[float, float, float],
) -> _Setup:
    """Validate the query; ``limits`` = (time limit, gap, absgap)."""
    lo, hi = parse_box(net, point, box)
    n_out = math.prod(net.shapes()[net.output_node])
    if not 0 <= output < n_out:
        raise InputError(f"output {output} outside 0..{n_out - 1}")
    time_limit, gap, absgap = limits
    rad = parse_radius(net, radius)
    return _Setup(net, rad, lo, hi, output, time.perf_counter() + time_limit, gap, absgap)


def _lin(lin: Lin, fn: float, fp: float) -> float:
    return lin[0] * fn + lin[1] * fp + lin[2]


def _holds(check: Lin, strict: bool, fn: float, fp: float) -> bool:
    return _lin(check, fn, fp) > 0 if strict else _lin(check, fn, fp) >= 0


# ----------------------------------------------------------------------------- witnesses


def _evaluate(s: _Setup, goal: _Goal, x: np.ndarray, params: dict[str, np.ndarray]) -> _Witness:
    """Outputs ``f_n``, ``f_p`` at ``x`` in float64 through the IR, and the goal's value."""
    xt = torch.tensor(x, dtype=DTYPE).reshape(1, *s.net.input_shape)
    over = {k: torch.tensor(v, dtype=DTYPE) for k, v in params.items()}
    with torch.no_grad():
        fp = float(s.net(xt, over).reshape(-1)[s.output])
        fn = float(s.net(xt).reshape(-1)[s.output])
    value = min(_lin(t, fn, fp) for t in goal.terms)
    valid = all(_holds(c, strict, fn, fp) for c, strict in goal.checks)
    return _Witness(x, params, fn, fp, value, valid)


def _clip(
    s: _Setup, x: np.ndarray, params: Mapping[str, np.ndarray], snap: bool
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Clip into the input and parameter boxes; with ``snap``, move near-bound values onto it."""

    def fit(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        v = np.clip(v.reshape(lo.shape), lo, hi)
        if snap:
            tol = SNAP * (1.0 + np.abs(v))
            v = np.where(v - lo <= tol, lo, np.where(hi - v <= tol, hi, v))
        return v

    theta = theta0(s.net, s.radius)
    out = {k: fit(params[k], *_inside(t, s.radius[k])) for k, t in theta.items()}
    return fit(x, s.lo, s.hi), out


def _inside(t0: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``inner_limits`` (as the witness search uses them) on numpy arrays."""
    t = torch.as_tensor(t0, dtype=torch.float64)
    lo, hi = inner_limits(t, torch.as_tensor(r, dtype=torch.float64).expand_as(t))
    return lo.numpy(), hi.numpy()


def _repair(s: _Setup, goal: _Goal, w: _Witness) -> _Witness:
    """Push a boundary witness a hair into its strict side conditions by signed-gradient steps
    that raise the first failing check; ``w`` itself when no step size works."""
    a_n, a_p, _ = next(c for c, st in goal.checks if not _holds(c, st, w.fn, w.fp))
    xt = torch.tensor(w.x, dtype=DTYPE).reshape(1, *s.net.input_shape).requires_grad_(True)
    pt = {k: torch.tensor(v, dtype=DTYPE).requires_grad_(True) for k, v in w.params.items()}
    g = a_n * s.net(xt).reshape(-1)[s.output] + a_p * s.net(xt, pt).reshape(-1)[s.output]
    grads = torch.autograd.grad(g, [xt, *pt.values()], allow_unused=True)
    signs = [np.zeros(1) if gr is None else np.sign(gr.detach().numpy()) for gr in grads]
    for step in 10.0 ** np.arange(-12, -3):
        x2 = w.x + step * (s.hi - s.lo) * signs[0].reshape(-1)
        p2 = {
            k: v + step * 2 * s.radius[k] * sg
            for (k, v), sg in zip(w.params.items(), signs[1:], strict=True)
        }
        cand = _evaluate(s, goal, *_clip(s, x2, p2, snap=False))
        if cand.valid:
            return cand
    return w


def _witness(s: _Setup, goal: _Goal, x: np.ndarray, params: dict[str, np.ndarray]) -> _Witness:
    """The better of the clipped and the snapped solution, each repaired when needed."""
    found = []
    for snap in (False, True):
        w = _evaluate(s, goal, *_clip(s, x, params, snap))
        found.append(w if w.valid else _repair(s, goal, w))
    return max(found, key=lambda w: (w.valid, w.value))


# ----------------------------------------------------------------------------- SCIP


def _status(model: Model) -> str:
    raw = str(model.getStatus())
    names = {"gaplimit": "optimal", "timelimit": "timeout", "primallimit": "stopped"}
    return names.get(raw, raw)


def _objective(enc: Encoding, goal: _Goal) -> None:
    """``s <= term_j`` for every term, the side constraints, and maximise ``s``."""
    m, n, p = enc.model, enc.nominal, enc.perturbed
    reach = 2.0 * max(abs(enc.out_lo), abs(enc.out_hi)) + max(abs(t[2]) for t in goal.terms) + 1
    obj = m.addVar(name="objective", lb=-reach, ub=reach)
    for a_n, a_p, c in goal.terms:
        m.addCons(obj <= a_n * n + a_p * p + c)
    for a_n, a_p, c in goal.constraints:
        m.addCons(a_n * n + a_p * p + c >= 0)
    m.setObjective(obj, "maximize")


@contextmanager
def _quiet_c_output() -> Iterator[None]:
    """Silence the solver's C libraries (SoPlex prints tolerance notes past ``hideOutput``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _solve(s: _Setup, goal: _Goal) -> _Solved:
    """Encode, solve, and re-evaluate SCIP's best solution."""
    enc = encode(s.net, s.radius, s.lo, s.hi, s.output, FEASTOL)
    m = enc.model
    m.setParam("numerics/feastol", FEASTOL)
    m.setParam("limits/time", max(s.deadline - time.perf_counter(), 0.01))
    m.setParam("limits/gap", s.gap)
    m.setParam("limits/absgap", s.absgap)
    if goal.primal_stop is not None:
        m.setParam("limits/primal", goal.primal_stop)
    _objective(enc, goal)
    with _quiet_c_output():
        m.optimize()
    status = _status(m)
    side = sum(max(1.0, abs(c[2])) for c in goal.constraints + goal.terms)
    margin = enc.margin + MARGIN_FACTOR * FEASTOL * side
    upper = -math.inf if status == "infeasible" else float(m.getDualbound()) + margin
    sol = m.getBestSol() if m.getNSols() > 0 else None
    if sol is None:
        return _Solved(None, upper, status)
    x = np.array([m.getSolVal(sol, v) for v in enc.x])
    params = {
        k: np.array([t if isinstance(t, float) else m.getSolVal(sol, t) for t in enc.params[k]])
        for k in s.radius
    }
    w = _witness(s, goal, x, params)
    return _Solved(w, upper_of(upper, w.value), status)


def _result(
    s: _Setup, lower: float, upper: float, status: str, w: _Witness | None, engine: str = "scip"
) -> ExactResult:
    x, params = (None, {}) if w is None else (w.x, w.params)
    return ExactResult(lower, upper, status, x, params, time.perf_counter() - s.start, engine)


def _overall(statuses: list[str]) -> str:
    other = [st for st in statuses if st not in ("optimal", "infeasible")]
    return "timeout" if "timeout" in other else other[0] if other else "optimal"


# ----------------------------------------------------------------------------- queries


def max_abs_change(
    net: Network,
    radius: Mapping[str, Any],
    point: Any = None,
    box: Any = None,
    output: int = 0,
    *,
    time_limit: float = 60.0,
    gap: float = 1e-6,
    absgap: float = 1e-9,
    engine: str = "scip",
) -> ExactResult:
    """Eqs. 11 (point) / 12 (box): ``max |f_theta(x) - f_theta0(x)|`` over ``theta`` within
    ``radius`` (name -> elementwise radius; absent parameters fixed), solved as the two
    maximisations ``f_p - f_n`` and ``f_n - f_p``. ``engine="dreal"`` needs ``import dreal``."""
    s = _setup(net, radius, point, box, output, (time_limit, gap, absgap))
    if engine == "dreal":
        return _dreal(s)
    if engine != "scip":
        raise InputError(f"unknown exact engine {engine!r}; use 'scip' or 'dreal'")
    runs = [_solve(s, _Goal(terms=(t,))) for t in ((-1.0, 1.0, 0.0), (1.0, -1.0, 0.0))]
    found = [r.witness for r in runs if r.witness is not None]
    best = max(found, key=lambda w: abs(w.fp - w.fn), default=None)
    lower = 0.0 if best is None else abs(best.fp - best.fn)
    upper = upper_of(*[r.upper for r in runs], lower)
    return _result(s, lower, upper, _overall([r.status for r in runs]), best)


def _sides(level: float) -> tuple[Lin, Lin, Lin, Lin]:
    """``f_n - l``, ``l - f_n``, ``f_p - l``, ``l - f_p`` as linear forms."""
    return (1.0, 0.0, -level), (-1.0, 0.0, level), (0.0, 1.0, -level), (0.0, -1.0, level)


def flip(
    net: Network,
    radius: Mapping[str, Any],
    point: Any = None,
    box: Any = None,
    level: float = 0.5,
    output: int = 0,
    *,
    time_limit: float = 60.0,
    gap: float = 1e-6,
    absgap: float = 1e-9,
) -> ExactResult:
    """Eqs. 8 (point) / 9 (box): can some ``theta`` (and ``x``) put the nominal and perturbed
    outputs on different sides of ``level``? ``lower``/``upper`` bound the largest flip score
    ``max(min(f_n - l, l - f_p), min(l - f_n, f_p - l))``; ``falsified`` with a witness that
    really flips in float64, ``verified`` when the score's upper bound is negative, else
    ``unknown``. Each direction's search stops once a clear flip (score >= ``FLIP_STOP``) is
    found, so a falsified answer's ``upper`` is loose."""
    s = _setup(net, radius, point, box, output, (time_limit, gap, absgap))
    n_up, n_down, p_up, p_down = _sides(level)
    goals = (
        _Goal((n_up, p_down), checks=((n_up, False), (p_down, True)), primal_stop=FLIP_STOP),
        _Goal((n_down, p_up), checks=((n_down, True), (p_up, False)), primal_stop=FLIP_STOP),
    )
    runs = [_solve(s, g) for g in goals]
    found = [r.witness for r in runs if r.witness is not None]
    best = max(found, key=lambda w: (w.valid, w.value), default=None)
    upper = upper_of(*[r.upper for r in runs])
    flipped = best is not None and best.valid
    status = "falsified" if flipped else "verified" if upper < 0 else "unknown"
    lower = -math.inf if best is None else best.value
    return _result(s, lower, upper_of(upper, lower), status, best)


def _sigma_side(s: _Setup, goal: _Goal) -> ExactResult:
    r = _solve(s, goal)
    if r.status == "infeasible":  # no flip on this side: every sigma >= 0 certifies it
        return _result(s, 0.0, 0.0, "verified", None)
    w = r.witness if r.witness is not None and r.witness.valid else None
    lower = 0.0 if w is None else w.value
    return _result(s, lower, upper_of(r.upper, lower), r.status, w)


def sigma(
    net: Network,
    radius: Mapping[str, Any],
    box: Any,
    level: float = 0.5,
    output: int = 0,
    *,
    time_limit: float = 60.0,
    gap: float = 1e-6,
    absgap: float = 1e-9,
) -> SigmaResult:
    """Eq. 13 per side. ``above``: ``max f_n - l`` s.t. ``f_n >= l > f_p``; ``below``:
    ``max l - f_n`` s.t. ``f_n < l <= f_p``. A side where no flip exists is 0 (``verified``);
    a side whose best solution cannot be made a strict flip keeps ``lower`` 0, no witness."""
    s = _setup(net, radius, None, box, output, (time_limit, gap, absgap))
    n_up, n_down, p_up, p_down = _sides(level)
    above = _Goal((n_up,), (n_up, p_down), ((n_up, False), (p_down, True)))
    below = _Goal((n_down,), (n_down, p_up), ((n_down, True), (p_up, False)))
    return SigmaResult(_sigma_side(s, above), _sigma_side(s, below))


# ----------------------------------------------------------------------------- dReal


def _dreal(s: _Setup) -> ExactResult:  # pragma: no cover - dReal does not install here
    """UNTESTED: dReal's delta-optimal ``max (f_p - f_n)^2``; ``upper`` from its delta."""
    x, params = dreal_witness(s.net, s.radius, s.lo, s.hi, s.output, DREAL_DELTA)
    w = _evaluate(s, _Goal(terms=((-1.0, 1.0, 0.0),)), *_clip(s, x, params, snap=False))
    lower = abs(w.fp - w.fn)
    return _result(s, lower, math.sqrt(lower**2 + DREAL_DELTA), "optimal", w, "dreal")
