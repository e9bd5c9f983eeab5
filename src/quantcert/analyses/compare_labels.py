"""Label certificates of ``quantcert compare``, batched: does any x in a box get different
labels from the float and the quantized model?

``label_certificates`` takes a batch of boxes. Point boxes (``lo == hi``, the ``--data``
images) are decided by one evaluation of both networks with ``ort_error``: the float64
value of every node and a bound on its distance to the exact-arithmetic network at ``x``
(with ``float32=True``, also to any float32 evaluation at ``float32(x)``, onnxruntime's in
any summation order). A label is *robust* when its margin over every other output exceeds
those errors; a point is ``verified`` when both models have the same robust label,
``falsified`` when their robust labels differ, else ``unknown`` (a tie, or within rounding).
Statuses are stated in exact arithmetic, as ``compare``'s bound; ``point_labels(float32=True)``
says which points keep their label under any float32 evaluation too (a worst-case a-priori
bound, ``gamma_n`` per sum, so it is much weaker). Boxes are grouped by the float model's
label at the centre, and each group is bounded in one ``bound_spec`` call per model (rows
``e_j - e_c``, exact arithmetic); undecided boxes are then searched by sampling, a
difference counting only when both labels are robust at the sample.

Rules (``_op_error``; ``gamma(n)`` covers float64 and, with ``float32``, float32 sums):
Affine/Conv ``gamma(n + 3) (|W| |x| + |b|)`` plus the input error through ``|W|``;
Reshape/Pad exact; AvgPool/Scale a few roundings; ReLU/LeakyReLU one rounding; MaxPool
1-Lipschitz; Sum ``gamma(2k)``; FakeQuant its own monotone interval on ``[v - e, v + e]``
(a step crossing is charged a full step). Any other op: its interval transfer on
``[v - e, v + e]`` plus ``2**-12 |y|``, which for ``float32`` assumes onnxruntime's float32
kernel for it is that accurate (stated, not proven).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from quantcert.engines.bounds import Radii, bound_spec
from quantcert.network import INPUT, Network
from quantcert.ops import (
    Affine,
    AvgPool,
    Conv,
    Identity,
    LeakyReLU,
    MaxPool,
    Pad,
    Reshape,
    Scale,
    Sigmoid,
    Sum,
)
from quantcert.ops.base import DTYPE, Box, Op
from quantcert.ops.quantizer import FakeQuant
from quantcert.report.results import Certificate, WitnessRecord

U32, U64 = 2.0**-24, 2.0**-53
#: Relative charge for an op without a stated float32 rule (an assumption on its kernel).
OTHER_REL = 2.0**-12
TINY = 2.0**-1000
ENGINE = "quantcert-compare"


def _gamma(n: int, u32: float) -> float:
    """Charge per unit magnitude for a sum of ``n`` products in float32 (any order; none
    when ``u32`` is 0) and in float64 (our evaluation), rounded up."""
    g32 = n * u32 / (1 - n * u32)
    g64 = n * 2 * U64 / (1 - n * 2 * U64)
    return (g32 + g64) * (1 + 2.0**-30)


def _fan_in(op: Op) -> int:
    if isinstance(op, Affine):
        return int(op.params["weight"].shape[-1]) + 3  # + bias, alpha and beta products
    if isinstance(op, Conv):
        return int(math.prod(op.params["weight"].shape[-3:])) + 3
    raise TypeError(op)


def _op_error(
    op: Op, xs: Sequence[Tensor], errs: Sequence[Tensor], y: Tensor, u32: float
) -> Tensor:
    """``e`` with ``|t - y| <= e`` for t the op applied exactly (or in float32 when ``u32``
    is 2**-24) to any inputs within ``errs`` of ``xs`` (``y``: the op in float64 at ``xs``)."""
    lift = 1 + 2.0**-40  # our own float64 roundings of the error terms
    if isinstance(op, Affine | Conv):
        g = _gamma(_fan_in(op), u32)
        mags = {k: v.abs() for k, v in op.params.items()}
        magnitude = op.forward([xs[0].abs()], mags)
        carried = op.forward([errs[0]], {"weight": mags["weight"]})
        return (carried * (1 + g) + g * magnitude) * lift + TINY
    if isinstance(op, Reshape | Pad):
        return op.abs_lin(errs[0])
    if isinstance(op, AvgPool | Scale):
        n = int(math.prod(op.kernel)) + 1 if isinstance(op, AvgPool) else 2
        g = _gamma(n, u32)
        magnitude = op.abs_lin(xs[0].abs()) + op.offset(y).abs()
        return (op.abs_lin(errs[0]) * (1 + g) + g * magnitude) * lift + TINY
    if isinstance(op, Identity):
        return errs[0]
    if isinstance(op, LeakyReLU):
        k = max(1.0, abs(op.slope))
        return (k * errs[0] + 2 * (u32 + U64) * y.abs()) * lift + TINY
    if isinstance(op, MaxPool):
        return F.max_pool2d(errs[0], op.kernel, op.stride, op.padding, op.dilation)
    if isinstance(op, Sum):
        g = _gamma(2 * len(op.coeffs), u32)
        total, magnitude = torch.zeros_like(y), torch.zeros_like(y)
        for c, x, e in zip(op.coeffs, xs, errs, strict=True):
            total, magnitude = total + abs(c) * e, magnitude + abs(c) * x.abs()
        return (total * (1 + g) + g * magnitude) * lift + TINY
    # FakeQuant (exact: its interval emulates onnxruntime's float32 staircase at both ends)
    # and ops without a stated float32 rule: the op's interval around the inputs.
    box = op.interval([Box(x - e, x + e) for x, e in zip(xs, errs, strict=True)], {})
    spread = torch.maximum(y - box.lo, box.hi - y).clamp(min=0)
    if isinstance(op, FakeQuant):
        return spread
    return (spread + OTHER_REL * torch.maximum(box.lo.abs(), box.hi.abs())) * lift + TINY


def ort_error(
    net: Network, x: Tensor, float32: bool = True
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Every node's float64 value at ``x`` and a bound ``e`` on its distance to the exact
    network at ``x`` and (``float32``) to any float32 evaluation at ``float32(x)``."""
    u32 = U32 if float32 else 0.0
    with torch.no_grad():
        x = x.to(DTYPE)
        values: dict[str, Tensor] = {INPUT: x}
        gap = (x - x.to(torch.float32).to(DTYPE)).abs()
        errors: dict[str, Tensor] = {INPUT: gap if float32 else torch.zeros_like(x)}
        for node in net.nodes:
            xs = [values[s] for s in node.inputs]
            y = node.op.forward(xs, node.op.params)
            errs = [errors[s] for s in node.inputs]
            errors[node.name] = _op_error(node.op, xs, errs, y, u32)
            values[node.name] = y
    return values, errors


def decision_level(net: Network) -> float:
    """0.5 after a sigmoid head, else 0 (one output); argmax for several."""
    return 0.5 if isinstance(net.node(net.output_node).op, Sigmoid) else 0.0


def robust_labels(value: Tensor, error: Tensor, level: float) -> Tensor:
    """Per row: the label no evaluation within ``error`` can change, or -1."""
    v, e = value.flatten(1), error.flatten(1)
    slack = 2.0**-50
    if v.shape[1] == 1:
        up = v[:, 0] - e[:, 0] - slack * (v[:, 0].abs() + e[:, 0] + abs(level)) > level
        down = v[:, 0] + e[:, 0] + slack * (v[:, 0].abs() + e[:, 0] + abs(level)) < level
        return torch.where(up, 1, torch.where(down, 0, -1))
    c = v.argmax(1, keepdim=True)
    vc, ec = v.gather(1, c), e.gather(1, c)
    margin = vc - v - (ec + e) - slack * (vc.abs() + v.abs() + ec + e)
    others = torch.ones_like(v, dtype=torch.bool).scatter(1, c, False)
    ok = ((margin > 0) | ~others).all(1)
    return torch.where(ok, c[:, 0], -1)


def point_labels(
    float_net: Network, quant_net: Network, x: Tensor, float32: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Robust labels (-1: undecided; exact arithmetic, or also any float32 evaluation) and
    plain float64 labels of both models at ``x``."""
    level = decision_level(float_net)
    out = []
    for net in (float_net, quant_net):
        values, errors = ort_error(net, x, float32)
        v = values[net.output_node]
        plain = (v.flatten(1)[:, 0] > level).long() if v[0].numel() == 1 else v.flatten(1).argmax(1)
        out.append((robust_labels(v, errors[net.output_node], level), plain))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def _spec(n_out: int, c: int, level: float) -> tuple[Tensor, float]:
    """Rows whose upper bounds, plus the offset, all < 0 prove label ``c``."""
    if n_out == 1:
        return torch.tensor([[-1.0 if c == 1 else 1.0]], dtype=DTYPE), (level if c == 1 else -level)
    eye = torch.eye(n_out, dtype=DTYPE)
    return torch.stack([eye[j] - eye[c] for j in range(n_out) if j != c]), 0.0


def label_certificates(
    float_net: Network,
    quant_net: Network,
    pair: Network,
    ends: tuple[str, str],
    box: Box,
    method: str = "crown",
    samples: int = 512,
    chunk: int = 256,
) -> list[Certificate]:
    """One label certificate per box of the batch ``box`` (see the module docstring);
    ``pair`` is the comparison network and ``ends`` its float and quantized output nodes."""
    start = time.perf_counter()
    n = box.lo.shape[0]
    point = (box.lo == box.hi).flatten(1).all(1)
    centre = box.center
    lf, lq, pf, _ = point_labels(float_net, quant_net, centre)
    status = ["unknown"] * n
    witness: list[WitnessRecord | None] = [None] * n
    reason: list[str | None] = ["top outputs tie or lie within rounding error"] * n
    for i in range(n):
        if lf[i] >= 0 and lq[i] >= 0:
            if lf[i] != lq[i]:
                status[i], reason[i] = "falsified", None
                witness[i] = WitnessRecord(centre[i].numpy(), {}, 1.0)
            elif point[i]:
                status[i], reason[i] = "verified", None
    # Boxes: bound each label group in one pass per model, then sample the undecided ones.
    open_boxes = [i for i in range(n) if not point[i] and status[i] == "unknown"]
    radii: Radii = {nd.name: {} for nd in pair.nodes}
    n_out = math.prod(pair.shapes()[ends[0]])
    level = decision_level(float_net)
    for c in sorted({int(pf[i]) for i in open_boxes}):
        group = [i for i in open_boxes if int(pf[i]) == c]
        spec, offset = _spec(n_out, c, level)
        for s in range(0, len(group), chunk):
            idx = torch.as_tensor(group[s : s + chunk])
            sub = Box(box.lo[idx], box.hi[idx])
            ok = torch.ones(len(idx), dtype=torch.bool)
            for target in ends:
                up, _ = bound_spec(pair, sub, radii, spec, method, target=target)  # type: ignore[arg-type]
                ok &= (up + offset < 0).all(1)
            for k, i in enumerate(idx.tolist()):
                if bool(ok[k]):
                    status[i], reason[i] = "verified", None
                else:
                    reason[i] = "bounds do not decide"
    # Sampling: ``samples`` points per undecided box, a few boxes per evaluation.
    gen = torch.Generator().manual_seed(2)
    undecided = [j for j in open_boxes if status[j] == "unknown"]
    per_pass = max(1, 4096 // samples)
    for s in range(0, len(undecided), per_pass):
        idx = torch.as_tensor(undecided[s : s + per_pass])
        lo, hi = box.lo[idx], box.hi[idx]
        t = torch.rand((len(idx), samples, *lo.shape[1:]), generator=gen, dtype=DTYPE)
        xs = torch.minimum(
            torch.maximum(lo[:, None] + (hi - lo)[:, None] * t, lo[:, None]), hi[:, None]
        )
        xs = xs.reshape(-1, *lo.shape[1:])  # in the box despite rounding
        sf, sq, _, _ = point_labels(float_net, quant_net, xs)
        flips = ((sf >= 0) & (sq >= 0) & (sf != sq)).reshape(len(idx), samples)
        for k, i in enumerate(idx.tolist()):
            hits = torch.nonzero(flips[k]).flatten()
            if hits.numel():
                status[i], reason[i] = "falsified", None
                witness[i] = WitnessRecord(xs[k * samples + int(hits[0])].numpy(), {}, 1.0)
    elapsed = time.perf_counter() - start
    out = []
    for i in range(n):
        low = 1.0 if status[i] == "falsified" else 0.0
        high = 0.0 if status[i] == "verified" else 1.0
        out.append(Certificate(low, high, status[i], witness[i], elapsed, ENGINE, reason[i]))
    return out
