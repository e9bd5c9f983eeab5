"""The mixed-precision assignment of ``quantcert bitwidth``: per-layer weight widths from an
exact integer program over the per-layer certified costs, then certified jointly.

Variables ``x[i, r]`` in {0, 1}: layer ``i`` at rung ``r`` (one rung per layer), over the
rungs the per-layer search judged. Minimise ``sum count_i * bits(r) * x[i, r]`` (the weight
bits, i.e. the model size) subject to ``sum d_i(r) x[i, r] <= budget``, where ``d_i(r)`` is
the certified accuracy drop with layer ``i`` alone at rung ``r``. The per-layer drops do not
add up to the joint drop in general, so the chosen assignment is certified as one setting;
only that certificate counts. When it fails, the budget is halved and the program solved
again, down to budget 0 (every layer at a rung that alone loses nothing certified); then
every layer is raised to its next wider judged rung, a few times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from quantcert.analyses.precision.scheme import Scheme

if TYPE_CHECKING:
    from quantcert.analyses.precision.bitwidth import Study
    from quantcert.analyses.precision.targets import Judgement

_ROUNDS = 5
#: Rounds at budget 0 that raise every layer to its next wider rung.
_RAISES = 3


def _solve(options: list[list[tuple[int, float, float]]], budget: float) -> list[int] | None:
    """``options[i]``: (rung, cost, drop) per rung of layer i; the chosen rung per layer."""
    flat = [(i, k) for i, opts in enumerate(options) for k in range(len(opts))]
    cost = np.array([options[i][k][1] for i, k in flat])
    drop = np.array([options[i][k][2] for i, k in flat])
    one = np.zeros((len(options), len(flat)))
    for j, (i, _) in enumerate(flat):
        one[i, j] = 1.0
    constraints = [
        LinearConstraint(one, np.ones(len(options)), np.ones(len(options))),
        LinearConstraint(drop[None, :], -np.inf, budget),
    ]
    res = milp(cost, constraints=constraints, integrality=np.ones(len(flat)), bounds=Bounds(0, 1))
    if res.x is None:
        return None
    chosen = [0] * len(options)
    for j, (i, k) in enumerate(flat):
        if res.x[j] > 0.5:
            chosen[i] = options[i][k][0]
    return chosen


def mixed_assignment(
    study: Study,
    names: list[str],
    seen: dict[str, dict[int, Judgement]],
    counts: dict[str, int],
) -> dict[str, object]:
    """The certified mixed assignment, or why there is none."""
    fam, target = study.fam, study.target
    options = [
        [
            (r, float(counts[n] * fam.bits(r)), max(0.0, study.float_accuracy - j.certified))
            for r, j in sorted(seen[n].items())
        ]
        for n in names
    ]
    full = target.drop if target.kind == "accuracy-drop" else 0.0
    budgets = sorted({full / 2**k for k in range(_ROUNDS - 1)} | {0.0}, reverse=True)
    budgets += [0.0] * _RAISES
    tried: list[dict[str, object]] = []
    for budget in budgets:
        chosen = _solve(options, budget)
        if chosen is None:
            break
        scheme = Scheme({n: fam.weight(r) for n, r in zip(names, chosen, strict=True)})
        joint = study.judge(scheme, "mixed " + ",".join(fam.label(r) for r in chosen))
        size = sum(counts[n] * fam.bits(r) for n, r in zip(names, chosen, strict=True))
        entry: dict[str, object] = {
            "assignment": {n: fam.bits(r) for n, r in zip(names, chosen, strict=True)},
            "cost": {"weight_bits": size, "bytes": size / 8},
            "bits": size / max(1, sum(counts.values())),
            "certificate": joint.certificate(),
            "measured": joint.measured,
            "budget": budget,
        }
        tried.append(entry)
        if joint.status == "verified":
            return {**entry, "status": "verified", "rounds": len(tried), "tried": tried[:-1]}
        if budget == 0.0:
            # Tighten: every layer leaves the rung just chosen for a wider one.
            options = [
                [o for o in opts if o[0] != r] or opts
                for opts, r in zip(options, chosen, strict=True)
            ]
    return {
        "status": "unknown",
        "reason": "no assignment the integer program chose was certified jointly",
        "rounds": len(tried),
        "tried": tried,
    }
