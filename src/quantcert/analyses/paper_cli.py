"""Command-line glue for ``quantcert sigma`` and ``quantcert reproduce paper``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from quantcert.analyses.epsilon import Budget, input_box
from quantcert.analyses.exact_queries import exact_certificate
from quantcert.analyses.sigma import SigmaResult, check_finite, make_problem, sigma
from quantcert.engines import perturbation
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import Box
from quantcert.report.output import write_json


def sigma_command(
    model: str,
    delta: float | None,
    relative: float | None,
    domain: str,
    level: float | None,
    gap: float,
    timeout: float,
    engine: str,
    json_target: str | None,
    memory: int | None = None,
) -> None:
    """Sigma per side (Def. 5) over ``domain`` with our engine (``quantcert``) or SCIP
    (``exact``); prints the table, or writes JSON to ``json_target`` (``-``: stdout).
    ``memory``: the budget in bytes (default half the machine's)."""
    from quantcert.intake import BUILTIN_CASES, load
    from quantcert.intake.domain import parse_domain

    if not gap >= 0 or not timeout > 0:
        raise InputError("--gap must be >= 0 and --timeout > 0")
    if engine not in ("quantcert", "exact"):
        raise InputError(f"--engine must be quantcert or exact, got {engine!r}")
    if (delta is None) == (relative is None):
        raise InputError("give exactly one of --delta and --relative")
    net = load(model)
    pert = (
        perturbation.absolute(net, delta)
        if delta is not None
        else perturbation.relative(net, relative or 0.0)
    )
    columns = None
    if model in BUILTIN_CASES:
        from quantcert.cases.builtin import case_info

        columns = case_info(model).columns
    lo, hi = parse_domain(domain, math.prod(net.input_shape), csv_columns=columns)
    box = input_box(net, lo, hi)
    budget = Budget(gap=gap, timeout=timeout, memory=memory)
    if engine == "exact":
        result = sigma_exact(net, pert, box, budget, level)
    else:
        result = sigma(net, pert, box, budget, level)
    if json_target is None:
        print(result.to_text())
    else:
        write_json(result.to_dict(), json_target)


def sigma_exact(
    net: Network,
    pert: perturbation.Perturbation,
    box: Box,
    budget: Budget,
    level: float | None = None,
) -> SigmaResult:
    """Sigma per side from the SCIP backend (``engines.exact.sigma``), as a ``SigmaResult``."""
    try:
        from quantcert.engines import exact
    except ImportError as exc:  # pragma: no cover - pyscipopt is a dependency
        raise InputError("--engine exact needs pyscipopt") from exc
    problem = make_problem(net, pert, level)
    if not problem.sigmoid:
        raise InputError("--engine exact computes sigma for sigmoid heads only")
    check_finite(problem, box)
    start = time.perf_counter()
    radius = {k: v.numpy() for k, v in pert.radius.items()}
    lo, hi = box.lo[0].flatten().numpy(), box.hi[0].flatten().numpy()
    res = exact.sigma(
        net,
        radius,
        box=(lo, hi),
        level=problem.level,
        time_limit=budget.timeout,
        absgap=budget.gap,
    )
    sides = [exact_certificate(net, r, budget.gap) for r in (res.above, res.below)]
    spec: dict[str, Any] = {
        "perturbation": pert.description,
        "level": problem.level,
        "gap": budget.gap,
        "timeout": budget.timeout,
        "lo": lo.tolist(),
        "hi": hi.tolist(),
    }
    elapsed = time.perf_counter() - start
    return SigmaResult(sides[0], sides[1], problem.level, elapsed, "exact-scip", spec)


def reproduce_paper_command(out: Path) -> None:
    """Seed 000's Table 1 and Figs. 6-8 into ``out``; prints the report's path and Table 1."""
    from quantcert.analyses.paper import reproduce_paper

    report = reproduce_paper(out)
    for row in report["table1"]:
        mark = "" if row["seed_consistent"] else "  (seed outside)"
        print(
            f"{row['model']:<11} delta {row['delta']:<6g} {row['quantity']:<12} "
            f"[{row['lower']:.6g}, {row['upper']:.6g}]  seed {row['seed']:g}{mark}"
        )
    print(
        f"\n{len(report['models']) * 5} figures, report.md and report.json in {out} "
        f"({report['time_s']:.1f} s)"
    )
