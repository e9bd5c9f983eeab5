"""The mixed-precision assignment of ``quantcert bitwidth``: per-layer weight widths from an
exact integer program over the per-layer certified costs, then certified jointly.

Variables ``x[i, r]`` in {0, 1}: layer ``i`` at rung ``r`` (one rung per layer), over the
rungs the per-layer search judged. Minimise ``sum count_i * bits(r) * x[i, r]`` (the weight
bits, i.e. the model size) subject to ``sum d_i(r) x[i, r] <= budget``, where ``d_i(r)`` is
the certified accuracy drop with layer ``i`` alone at rung ``r``. The per-layer drops do not
add up to the joint drop in general, so the chosen assignment is certified as one setting;
only that certificate counts. When it fails, the budget is halved and the program solved
again (five times); then, at half the budget, every layer is raised above the rung it had,
a few times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from quantcert.analyses.precision.scheme import Scheme

if TYPE_CHECKING:
    from quantcert.analyses.precision.bitwidth import Family, Study
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


def _options(
    study: Study, judged: dict[int, Judgement], count: int
) -> list[tuple[int, float, float]]:
    """(rung, cost, drop) for every rung from the lowest judged one up. A rung the per-layer
    search did not judge takes the drop of the nearest judged rung below it (more bits never
    cost accuracy, so this only overstates the drop); the joint certificate decides anyway."""
    fam = study.fam
    out = []
    lowest = min(judged)
    for r in fam.rungs():
        if r < lowest:
            continue
        below = max(k for k in judged if k <= r)
        drop = max(0.0, study.float_accuracy - judged[below].certified)
        out.append((r, float(count * fam.bits(r)), drop))
    return out


def _size(entry: dict[str, object]) -> float:
    cost = entry["cost"]
    assert isinstance(cost, dict)
    return float(cost["weight_bits"])


def _size_of(rung: int, counts: dict[str, int], fam: Family) -> float:
    return float(sum(counts.values()) * fam.bits(rung))


def mixed_assignment(
    study: Study,
    names: list[str],
    seen: dict[str, dict[int, Judgement]],
    counts: dict[str, int],
    uniform: int | None = None,
) -> dict[str, object]:
    """The certified mixed assignment, or why there is none. ``uniform``: the rung of the
    uniform answer, itself a candidate (every layer at it), so the answer never costs more."""
    fam, target = study.fam, study.target
    options = [_options(study, seen[n], counts[n]) for n in names]
    full = target.drop if target.kind == "accuracy-drop" else 0.0
    halvings = [full / 2**k for k in range(_ROUNDS)]
    budgets = halvings + [full / 2] * _RAISES
    tried: list[dict[str, object]] = []

    def certify(chosen: list[int], budget: float | None) -> dict[str, object]:
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
            "verified": joint.status == "verified",
        }
        tried.append(entry)
        return entry

    best: dict[str, object] | None = None
    for budget in budgets:
        chosen = _solve(options, budget)
        if chosen is None:
            break
        entry = certify(chosen, budget)
        if entry["verified"]:
            best = entry
            break
        if len(tried) >= len(halvings):
            # Tighten: every layer moves above the rung just chosen (where it can).
            options = [
                [o for o in opts if o[0] > r] or opts
                for opts, r in zip(options, chosen, strict=True)
            ]
    if uniform is not None and (best is None or _size(best) > _size_of(uniform, counts, fam)):
        # The uniform width is an assignment too: the answer is never worse than it.
        entry = certify([uniform] * len(names), None)
        if entry["verified"] and (best is None or _size(entry) < _size(best)):
            best = entry
    if best is not None:
        others = [t for t in tried if t is not best]
        return {**best, "status": "verified", "rounds": len(tried), "tried": others}
    return {
        "status": "unknown",
        "reason": "no assignment the integer program chose was certified jointly",
        "rounds": len(tried),
        "tried": tried,
    }
