"""``quantcert compare``: certify a quantized network against its float original.

Both graphs' nodes (``f/...`` float, ``q/...`` quantized) share the input in one network
that ends in ``diff = q - f`` (``Sum((1, -1))``), so bounds keep the correlation through ``x``
(as ``engines/pair.py`` does for a perturbed copy). No parameter moves: the quantized weights
are known exactly, and the activation quantizers are ``FakeQuant`` ops.

- ``compare``: ``max_k |diff_k|`` over the box: the upper bound from ``bound_spec`` with
  input branch and bound within the budget, the lower from a witness ``x`` re-evaluated in
  float64 with a stated error bound; status ``optimal`` / ``bounded`` as epsilon's.
- ``label_certificate`` (``compare_labels``): does any x in the box get a different label?
  ``verified`` when one label provably wins throughout the box in both networks,
  ``falsified`` with an x where the labels differ, else ``unknown``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from quantcert.analyses.compare_labels import label_certificates, point_labels
from quantcert.analyses.epsilon import Budget, box_echo, certificate_status
from quantcert.engines.attack import Witness, certified, evaluation_error, search
from quantcert.engines.bab import (
    Memory,
    best_witness,
    lower_of,
    maximise,
    reached,
    tightest,
    upper_of,
)
from quantcert.engines.bounds import Radii, batch_bytes, bound_spec, memory_cap
from quantcert.engines.perturbation import Perturbation
from quantcert.errors import InputError
from quantcert.network import INPUT, Network, Node
from quantcert.ops import Sum
from quantcert.ops.base import DTYPE, Box
from quantcert.report.results import Certificate, QueryResult, WitnessRecord

FLOAT, QUANT, DIFF = "f/", "q/", "diff"
ENGINE = "quantcert-compare"
NO_PERTURBATION = Perturbation({})


def _copy(net: Network, prefix: str) -> list[Node]:
    def rename(src: str) -> str:
        return src if src == INPUT else prefix + src

    return [Node(prefix + n.name, n.op, tuple(rename(s) for s in n.inputs)) for n in net.nodes]


def check_compatible(float_net: Network, quant_net: Network) -> int:
    """The number of outputs; refuses different input or output shapes."""
    if float_net.input_shape != quant_net.input_shape:
        raise InputError(
            f"the models' inputs differ: {list(float_net.input_shape)} and "
            f"{list(quant_net.input_shape)}"
        )
    fo = float_net.shapes()[float_net.output_node]
    qo = quant_net.shapes()[quant_net.output_node]
    if fo != qo:
        raise InputError(f"the models' outputs differ: {list(fo)} and {list(qo)}")
    return int(np.prod(fo))


def comparison_network(float_net: Network, quant_net: Network) -> Network:
    """``diff = f_quant(x) - f_float(x)``: both graphs sharing the input."""
    check_compatible(float_net, quant_net)
    nodes = _copy(float_net, FLOAT) + _copy(quant_net, QUANT)
    ends = (QUANT + quant_net.output_node, FLOAT + float_net.output_node)
    nodes.append(Node(DIFF, Sum((1.0, -1.0)), ends))
    return Network(nodes, float_net.input_shape, name=f"{float_net.name}:compare")


def _no_radii(net: Network) -> Radii:
    return {n.name: {} for n in net.nodes}


class _Objective:
    """Columns ``signs @ diff`` with a stated float64 evaluation error (``certified``)."""

    absolute = True

    def __init__(self, pair: Network, signs: Tensor) -> None:
        self.pair, self.signs = pair, signs

    def __call__(self, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        out: Tensor = self.pair(x).flatten(1) @ self.signs.T
        return out

    def error(self, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        _, err = evaluation_error(self.pair, x)
        out: Tensor = err.flatten(1) @ self.signs.abs().T
        return out * (1 + 2.0**-50)


def _record(w: Witness) -> WitnessRecord:
    return WitnessRecord(w.x.cpu().numpy(), {}, w.value, w.error, w.below_error_scale)


def compare(
    float_net: Network, quant_net: Network, box: Box, budget: Budget = Budget()
) -> QueryResult:
    """Bound ``max_k |f_quant(x)_k - f_float(x)_k|`` for x in ``box`` (a point when lo == hi)."""
    with memory_cap(budget.memory_limit()):
        return _compare(float_net, quant_net, box, budget)


def _compare(float_net: Network, quant_net: Network, box: Box, budget: Budget) -> QueryResult:
    start = time.perf_counter()
    pair = comparison_network(float_net, quant_net)
    n_out = check_compatible(float_net, quant_net)
    eye = torch.eye(n_out, dtype=DTYPE)
    signs = torch.cat([eye, -eye])
    radii = _no_radii(pair)
    objective = _Objective(pair, signs)

    def bound(boxes: Box) -> Tensor:
        upper, _ = bound_spec(pair, boxes, radii, signs, budget.method)
        out: Tensor = upper.max(1).values
        return out

    def attack(boxes: Box, steps: int) -> Witness:
        found = search(pair, NO_PERTURBATION, boxes, objective, 2 * n_out, restarts=1, steps=steps)
        return best_witness(found)

    root_rows, _ = bound_spec(pair, box, radii, signs, budget.method)
    found = search(pair, NO_PERTURBATION, box, objective, 2 * n_out, restarts=4, steps=30)
    found += _sampled(pair, box, objective, 2 * n_out)
    best = best_witness(found)
    root_upper = upper_of(float(root_rows[0].max()), best.value)
    lower = lower_of(best.value, 0.0)
    if bool(torch.equal(box.lo, box.hi)) or reached(lower, root_upper, budget.gap):
        status = "optimal" if reached(lower, root_upper, budget.gap) else "bounded"
        upper, reason = root_upper, None
    else:
        out = maximise(
            bound,
            attack,
            box,
            budget.gap,
            start + budget.timeout,
            split_by_gradient=True,
            initial=best,
            progress=budget.progress,
            memory=Memory(budget.memory_limit(), batch_bytes(pair)),
        )
        best = out.witness if out.witness.value > best.value else best
        lower = lower_of(best.value, 0.0)
        upper = upper_of(tightest(out.upper, root_upper), lower)
        status, reason = certificate_status(out.status)
        if status in ("optimal", "exhausted", "timeout") and not reached(lower, upper, budget.gap):
            status = "bounded"
    cert = Certificate(
        lower, upper, status, _record(best), time.perf_counter() - start, ENGINE, reason
    )
    per_output = []
    for k in range(n_out):
        up = upper_of(float(root_rows[0, k]), float(root_rows[0, n_out + k]))
        w = best_witness([found[k], found[n_out + k]])
        per_output.append(
            Certificate(
                lower_of(w.value, 0.0),
                upper_of(tightest(up, upper), w.value),
                "bound",
                _record(w),
                cert.time_s,
                ENGINE,
            )
        )
    return QueryResult(
        "compare " + ("local" if bool(torch.equal(box.lo, box.hi)) else "global"),
        cert,
        tuple(per_output),
        {
            "float_model": float_net.name,
            "quantized_model": quant_net.name,
            "gap": budget.gap,
            "timeout": budget.timeout,
            **box_echo(box),
        },
    )


def _sampled(pair: Network, box: Box, objective: _Objective, columns: int) -> list[Witness]:
    """The best of random points in the box per column (the staircase defeats gradients)."""
    gen = torch.Generator().manual_seed(1)
    n = 256
    lo, hi = box.lo[0], box.hi[0]
    x = lo + (hi - lo) * torch.rand((n, *lo.shape), generator=gen, dtype=DTYPE)
    with torch.no_grad():
        values = objective(x, {})
    best = values.argmax(0)
    found = [Witness(float(values[best[k], k]), x[best[k]], {}) for k in range(columns)]
    return certified(objective, found, range(columns))


# ----------------------------------------------------------------- labels


def label_certificate(
    float_net: Network, quant_net: Network, box: Box, method: str = "crown"
) -> Certificate:
    """Does any x in ``box`` get different labels from the two models (argmax, or the sign
    against the decision level for one output: 0.5 after a sigmoid head, else 0)? See
    ``compare_labels``: a point is decided by both networks' evaluation with a bound on
    float32 (onnxruntime) and exact rounding; a box by ``bound_spec`` (exact arithmetic)."""
    return _certificates(float_net, quant_net, box, method)[0]


def _certificates(
    float_net: Network, quant_net: Network, box: Box, method: str
) -> list[Certificate]:
    pair = comparison_network(float_net, quant_net)
    check_compatible(float_net, quant_net)
    ends = (FLOAT + float_net.output_node, QUANT + quant_net.output_node)
    return label_certificates(float_net, quant_net, pair, ends, box, method)


def compare_points(
    float_net: Network,
    quant_net: Network,
    points: np.ndarray,
    method: str = "crown",
    batch: int = 1024,
) -> dict[str, object]:
    """One label certificate per point (``--data``), batched: counts, the indices of the
    falsified and unknown images, and ``verified_float32``: the verified images whose label
    also holds for any float32 evaluation of both graphs (onnxruntime's)."""
    counts = {"verified": 0, "falsified": 0, "unknown": 0, "verified_float32": 0}
    falsified, unknown = [], []
    for s in range(0, len(points), batch):
        x = torch.as_tensor(np.asarray(points[s : s + batch], dtype=np.float64))
        x = x.reshape(-1, *float_net.input_shape)
        certs = _certificates(float_net, quant_net, Box(x, x), method)
        lf, lq, _, _ = point_labels(float_net, quant_net, x, float32=True)
        for k, cert in enumerate(certs):
            counts[cert.status] += 1
            if cert.status == "falsified":
                falsified.append(s + k)
            elif cert.status == "unknown":
                unknown.append(s + k)
            elif lf[k] >= 0 and lf[k] == lq[k]:
                counts["verified_float32"] += 1
    return {**counts, "falsified_images": falsified, "unknown_images": unknown}
