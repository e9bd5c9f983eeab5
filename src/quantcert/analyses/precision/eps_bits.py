"""``bitwidth --domain SPEC --target eps<=E``: the fewest fixed-point fraction bits (or
integer / floating widths) of the weights and biases whose every rounding provably keeps
the largest output change over the whole domain at most ``E`` (seed 000's global
(delta, eps) question, with the format's own radii in place of one delta).

Each rung is one ``epsilon`` query (``analyses.epsilon``: bounds with input branch and bound,
and a witness (x, theta) in the box, re-evaluated with a stated error): ``verified`` when
``upper <= E``, ``falsified`` when the witness's certified change exceeds ``E`` (the witness
is stored), else ``unknown``. The real rounding's change is measured on a grid of the domain
and must never exceed the certificate's ``upper`` (tests).

Fixed point ``Qm.n``: ``n`` is the rung, ``m`` per tensor the fewest integer bits (sign
included) that hold the tensor's rounded values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from quantcert.analyses.epsilon import Budget, epsilon
from quantcert.analyses.precision.scheme import logit_network
from quantcert.errors import InputError
from quantcert.formats import parse_format
from quantcert.formats.apply import format_perturbation, quantized_parameters
from quantcert.formats.base import Format
from quantcert.network import Network
from quantcert.ops import Affine, Conv
from quantcert.ops.base import DTYPE, Box

#: Fraction bits tried: Qm.n takes 2 to 32 bits in all, m up to 8 here.
FIXED_FRACTIONS = tuple(range(1, 25))
INT_BITS = tuple(range(2, 17))


@dataclass(frozen=True)
class EpsTarget:
    eps: float

    def describe(self) -> str:
        return f"eps<={self.eps:g}"


def parse_eps_target(text: str) -> EpsTarget | None:
    """``eps<=E`` (E > 0 finite), or ``None`` for any other target text."""
    t = text.strip().replace(" ", "")
    if not t.startswith("eps<="):
        return None
    try:
        value = float(t[5:])
    except ValueError:
        raise InputError(f"--target {text!r}: eps<=E needs a number E") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"--target {text!r}: E must be a positive finite number")
    return EpsTarget(value)


def _integer_bits(values: np.ndarray, frac: int) -> int:
    """Fewest integer bits m (sign included, at least 1) with every value of ``values``,
    rounded to ``2^-frac``, inside Qm.frac's range ``[-2^(m-1), 2^(m-1) - 2^-frac]``."""
    step = 2.0**-frac
    q = np.rint(np.asarray(values, dtype=np.float64) / step) * step
    top = max(float(q.max(initial=0.0)) + step, float(-q.min(initial=0.0)))
    return max(1, math.ceil(math.log2(top)) + 1) if top > 0 else 1


def fixed_maps(net: Network, frac: int) -> tuple[dict[str, Format], dict[str, Format]]:
    """Per layer, Qm.frac for its weights and for its bias (each m from the tensor's range)."""
    weights: dict[str, Format] = {}
    biases: dict[str, Format] = {}
    params = net.param_tensors()
    for node in net.nodes:
        if not isinstance(node.op, Affine | Conv):
            continue
        for pname, out in (("weight", weights), ("bias", biases)):
            key = f"{node.name}.{pname}"
            if key in params:
                src = net.sources.get(key)
                value = params[key].detach().numpy() / (src.factor if src else 1.0)
                out[node.name] = parse_format(f"q{_integer_bits(value, frac)}.{frac}")
    return weights, biases


def _maps(net: Network, family: str, rung: int) -> tuple[dict[str, Format], dict[str, Format]]:
    if family == "fixed":
        return fixed_maps(net, rung)
    if family == "int":
        fmt = parse_format(f"int{rung}:per-channel")
        return {"*": fmt}, {}
    raise InputError(f"--family {family!r} with --domain: use fixed or int")


def measured_change(
    net: Network, params: dict[str, torch.Tensor], box: Box, n: int = 4096
) -> float:
    """max |f_q(x) - f(x)| of the really rounded network over a grid of the box (its corners
    and ``n`` seeded random points)."""
    gen = torch.Generator().manual_seed(0)
    lo, hi = box.lo[0], box.hi[0]
    x = lo + (hi - lo) * torch.rand((n, *lo.shape), generator=gen, dtype=DTYPE)
    x = torch.cat([x, lo[None], hi[None]])
    with torch.no_grad():
        return float((net(x, params) - net(x)).abs().max())


#: The gap each rung's epsilon query closes: a verdict needs only ``upper <= E < lower``'s
#: side, so a gap far below E decides every rung but one whose true value lies within it.
GAP = 1e-5


def _judge(
    net: Network, family: str, rung: int, box: Box, eps: float, timeout: float
) -> dict[str, object]:
    gap = min(GAP, eps / 100)
    w, b = _maps(net, family, rung)
    pert = format_perturbation(net, w, b)
    res = epsilon(net, pert, box, Budget(gap=gap, timeout=timeout))
    c = res.overall
    status = "verified" if c.upper <= eps else "falsified" if c.lower > eps else "unknown"
    real = measured_change(net, quantized_parameters(net, w, b), box)
    return {
        "rung": rung,
        "certificate": {"lower": c.lower, "upper": c.upper, "status": c.status},
        "judged": status,
        "measured": real,
        "witness": None
        if c.witness is None
        else {
            "x": np.asarray(c.witness.x).ravel().tolist(),
            "param_offsets": {
                k: np.asarray(v).tolist() for k, v in c.witness.param_offsets.items()
            },
            "value": c.witness.value,
        },
        "formats": {
            "weights": {k: v.describe() for k, v in w.items()},
            "biases": {k: v.describe() for k, v in b.items()},
        },
    }


def eps_bits(
    net: Network,
    box: Box,
    target: EpsTarget,
    family: str = "fixed",
    timeout: float = 5.0,
    progress: Callable[[str], None] | None = None,
    space: str = "output",
) -> dict[str, object]:
    """The fewest rung (fraction bits for fixed point) that is ``verified``, by bisection,
    with the rung below judged; JSON-ready. ``space``: the change in the network's output
    (probabilities after a sigmoid/softmax head) or in its ``logits``."""
    if space not in ("output", "logits"):
        raise InputError(f"--space {space!r}: use output or logits")
    start = time.perf_counter()
    base = logit_network(net) if space == "logits" else net
    rungs = FIXED_FRACTIONS if family == "fixed" else INT_BITS
    seen: dict[int, dict[str, object]] = {}

    def at(i: int) -> dict[str, object]:
        if i not in seen:
            seen[i] = _judge(base, family, rungs[i], box, target.eps, timeout)
            if progress is not None:
                progress(f"{family} {rungs[i]}: {seen[i]['certificate']}")
        return seen[i]

    lo, hi = 0, len(rungs) - 1
    out: dict[str, object] = {
        "query": "bitwidth",
        "target": target.describe(),
        "family": family,
        "space": space,
    }
    if at(hi)["judged"] != "verified":
        out.update({"bits": None, "status": "infeasible", "best_tried": at(hi)})
    else:
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if at(mid)["judged"] == "verified" else (mid + 1, hi)
        answer = at(hi)
        below = at(hi - 1) if hi > 0 else None
        out.update(
            {
                "bits": rungs[hi],
                "bits_meaning": "fraction bits" if family == "fixed" else "bits",
                "certificate": answer["certificate"],
                "measured": answer["measured"],
                "formats": answer["formats"],
                "below": None
                if below is None
                else {
                    "bits": rungs[hi - 1],
                    "status": "falsified" if below["judged"] == "falsified" else "unknown",
                    "value": below["certificate"]["lower"],  # type: ignore[index]
                    "witness": below["witness"],
                    "measured": below["measured"],
                },
            }
        )
    out["judged"] = [seen[k] for k in sorted(seen)]
    out["time_s"] = time.perf_counter() - start
    return out
