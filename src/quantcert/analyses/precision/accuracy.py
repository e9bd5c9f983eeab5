"""``quantcert accuracy``: certified accuracy under a quantization scheme on a data set.

Per image, at its true label ``c``, over the certified box of the scheme (every weight,
bias and activation rounding the formats allow, ``scheme.prepare``):

- ``verified``: sound bounds prove ``z_c > z_j`` for every ``j != c`` (binary: the logit stays
  on the label's side) for every setting in the box, the real rounding included;
- ``falsified``: a point of the box gives another label, with a certified margin (its
  float64 evaluation error subtracted): the float network itself (the nominal point), the
  real rounding (``Quantized.rounding_point``), or a gradient attack over the box;
- ``unknown``: neither (the reason is stated).

So ``certified = verified share <= measured accuracy of the real rounding``, and the
``worst_case`` accuracy (images not falsified) bounds from above the accuracy any verifier
could certify for this box. It can lie below the measured accuracy: an attack may misclassify
an image with a setting other than the real rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from quantcert.analyses.flip import labels as labels_of
from quantcert.analyses.flip import threshold
from quantcert.analyses.precision.scheme import Quantized, Scheme, logit_network, prepare
from quantcert.engines.attack import evaluation_error, search_rows
from quantcert.engines.bounds import Method, bound_spec, engine_threads
from quantcert.engines.pair import plain_radii
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import DTYPE, Box

VERIFIED, UNKNOWN, FALSIFIED = 1, 0, -1
#: How a falsified image was falsified: 1 the float network, 2 the real rounding, 3 an attack.
BY_FLOAT, BY_ROUNDING, BY_ATTACK = 1, 2, 3
UNKNOWN_REASON = "bounds do not decide and the attack found no other label"
_ULP = 2.0**-52

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class AccuracyResult:
    """Per image (N,): ``status`` (1 verified, 0 unknown, -1 falsified), ``by`` (how it was
    falsified, 0 if not), ``margin`` (the falsifying witness's certified margin, NaN if none),
    ``float_pred`` and ``measured_pred`` (labels of the float and the really quantized
    network), ``labels``. ``attack_offsets``: per perturbed tensor, (n_attack, *shape) offsets
    of the attack witnesses, in the order of ``attack_images``."""

    status: np.ndarray
    by: np.ndarray
    margin: np.ndarray
    labels: np.ndarray
    float_pred: np.ndarray
    measured_pred: np.ndarray
    attack_images: np.ndarray
    attack_offsets: dict[str, np.ndarray]
    scheme: dict[str, object]
    outside_box: int
    time_s: float

    def summary(self) -> dict[str, object]:
        n = int(self.status.size)
        counts = {
            "verified": int((self.status == VERIFIED).sum()),
            "falsified": int((self.status == FALSIFIED).sum()),
            "unknown": int((self.status == UNKNOWN).sum()),
        }
        return {
            "images": n,
            "float_accuracy": float((self.float_pred == self.labels).mean()) if n else math.nan,
            "measured_accuracy": float((self.measured_pred == self.labels).mean())
            if n
            else math.nan,
            "certified_accuracy": counts["verified"] / n if n else math.nan,
            "worst_case_accuracy": 1.0 - counts["falsified"] / n if n else math.nan,
            "counts": counts,
            "falsified_by": {
                "float": int((self.by == BY_FLOAT).sum()),
                "rounding": int((self.by == BY_ROUNDING).sum()),
                "attack": int((self.by == BY_ATTACK).sum()),
            },
            "unknown_reason": UNKNOWN_REASON if counts["unknown"] else None,
            "rounding_outside_box": self.outside_box,
            "scheme": self.scheme,
            "time_s": self.time_s,
        }


def check_data(net: Network, points: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
    """The points as (N, *input_shape) float64 and the labels as (N,) int64, or an
    ``InputError`` naming what does not fit the model."""
    n_in = int(np.prod(net.input_shape))
    pts = np.asarray(points)
    if pts.ndim < 1 or pts.shape[0] == 0 or pts[0].size != n_in:
        raise InputError(
            f"data of shape {pts.shape} does not fit the model input {net.input_shape}"
        )
    if pts.dtype.kind not in "buif" or not np.isfinite(pts.astype(np.float64)).all():
        raise InputError("data holds values that are not finite numbers")
    lab = np.asarray(labels)
    if lab.shape != (pts.shape[0],) or lab.dtype.kind not in "iu":
        raise InputError(f"labels of shape {lab.shape} do not match {pts.shape[0]} data points")
    k = int(np.prod(net.shapes()[net.logits_node]))
    classes = 2 if k == 1 else k
    if lab.size and (lab.min() < 0 or lab.max() >= classes):
        raise InputError(f"labels must lie in [0, {classes - 1}], found {lab.min()}..{lab.max()}")
    x = torch.as_tensor(pts.astype(np.float64)).reshape(-1, *net.input_shape)
    return x, torch.as_tensor(lab.astype(np.int64))


def _margin_rows(k: int, c: int) -> Tensor:
    """Rows ``e_j - e_c`` (j != c): upper bounds all below 0 prove label ``c``."""
    eye = torch.eye(k, dtype=DTYPE)
    return torch.stack([eye[j] - eye[c] for j in range(k) if j != c])


def _wrong_side(z: Tensor, y: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """(B,) ``max_{j != y} z_j - z_y`` of logits ``z`` (B, K) and the ``j`` attaining it;
    binary (K = 1): the distance past the threshold ``t`` on the wrong side, ``j = 0``."""
    if z.shape[1] == 1:
        return torch.where(y == 1, t - z[:, 0], z[:, 0] - t), torch.zeros_like(y)
    mask = torch.nn.functional.one_hot(y, z.shape[1]).bool()
    zc = z.gather(1, y[:, None])
    d, j = (z - zc).masked_fill(mask, -torch.inf).max(1)
    return d, j


def margins(logits: Tensor, error: Tensor, y: Tensor, t: float) -> Tensor:
    """(B,) certified lower bounds of ``max_{j != y} z_j - z_y`` (binary: the distance past
    the threshold on the wrong side): > 0 means the label is provably not ``y``."""
    z, e = logits.flatten(1), error.flatten(1)
    d, j = _wrong_side(z, y, t)
    rows = torch.arange(z.shape[0])
    err = e[:, 0] if z.shape[1] == 1 else e[rows, j] + e[rows, y]
    low = d - err * (1 + 4 * _ULP) - d.abs() * 2 * _ULP
    return torch.nextafter(low, torch.full_like(low, -torch.inf))


class _MarginObjective:
    """Column 0: ``max_{j != y} z_j - z_y`` at each row (the attack ascends it)."""

    def __init__(self, net: Network, y: Tensor, t: float) -> None:
        self.net, self.y, self.t = net, y, t

    def __call__(self, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        d, _ = _wrong_side(self.net(x, params).flatten(1), self.y, self.t)
        return d[:, None]


def _verified(q: Quantized, x: Tensor, y: Tensor, t: float, method: Method, chunk: int) -> Tensor:
    """(B,) bool: bounds prove label ``y`` at every setting of the box, and no activation
    saturates there (``Quantized.within``: the box's noise radii hold)."""
    radii = plain_radii(q.pert, q.net)
    k = int(np.prod(q.net.shapes()[q.net.output_node]))
    out = torch.zeros(x.shape[0], dtype=torch.bool)
    for c in sorted(set(y.tolist())):
        idx = torch.nonzero(y == c).flatten()
        if k == 1:  # label 1: upper(-z) <= -t; label 0: upper(z) < t
            spec = torch.tensor([[-1.0 if c == 1 else 1.0]], dtype=DTYPE)
        else:
            spec = _margin_rows(k, int(c))
        for s in range(0, idx.numel(), chunk):
            rows = idx[s : s + chunk]
            with torch.no_grad():
                upper, bounds = bound_spec(q.net, Box(x[rows], x[rows]), radii, spec, method)
            if k == 1:
                ok = (upper <= -t).all(1) if c == 1 else (upper < t).all(1)
            else:
                ok = (upper < 0).all(1)
            out[rows] = ok & q.within(bounds)
    return out


def _attack_chunk(q: Quantized) -> int:
    """Rows per attack batch: each row carries its own copy of every perturbed tensor."""
    scalars = sum(int(r.numel()) for r in q.pert.radius.values())
    return max(1, min(256, 160_000_000 // max(1, 8 * scalars)))


def _attack(
    q: Quantized, x: Tensor, y: Tensor, t: float, steps: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """Certified margins (B,) of a gradient ascent over the box from the nominal point, and
    the offsets reached {name: (B, *shape)}."""
    nominal = q.net.param_tensors()
    found: list[Tensor] = []
    offsets: dict[str, list[Tensor]] = {k: [] for k in q.pert.radius}
    chunk = _attack_chunk(q)
    for s in range(0, x.shape[0], chunk):
        xs, ys = x[s : s + chunk], y[s : s + chunk]
        _, params = search_rows(q.net, q.pert, Box(xs, xs), _MarginObjective(q.net, ys, t), steps)
        logits, err = evaluation_error(q.net, xs, params)
        found.append(margins(logits, err, ys, t))
        for k, v in params.items():
            offsets[k].append(v - nominal[k])
    empty = {k: torch.zeros((0, *r.shape), dtype=DTYPE) for k, r in q.pert.radius.items()}
    if not found:
        return torch.zeros(0, dtype=DTYPE), empty
    return torch.cat(found), {k: torch.cat(v) for k, v in offsets.items()}


def accuracy(
    net: Network,
    points: np.ndarray,
    labels: np.ndarray,
    scheme: Scheme,
    calibration: np.ndarray | None = None,
    method: Method = "crown",
    attack_steps: int = 10,
    chunk: int = 256,
    progress: Progress | None = None,
) -> AccuracyResult:
    """Certified, measured and worst-case accuracy of ``scheme`` on ``points`` (N, ...) at
    ``labels`` (N,). Activation scales come from ``calibration`` or from the points."""
    start = time.perf_counter()
    x, y = check_data(net, points, labels)
    base = logit_network(net)
    t = threshold(net, None)
    with engine_threads(base):
        q = prepare(net, scheme, x.numpy(), calibration)
        n = x.shape[0]
        status = torch.zeros(n, dtype=torch.int8)
        by = torch.zeros(n, dtype=torch.int8)
        margin = torch.full((n,), math.nan, dtype=DTYPE)
        float_logits, float_err = evaluation_error(base, x)
        measured, _ = q.run(x)
        params = q.rounding_point(x)
        outside = q.outside(params, n)
        r_logits, r_err = evaluation_error(q.net, x, params)
        for code, m in ((BY_ROUNDING, margins(r_logits, r_err, y, t)),
                        (BY_FLOAT, margins(float_logits, float_err, y, t))):  # fmt: skip
            hit = (m > 0) & ~outside
            status[hit], by[hit], margin[hit] = FALSIFIED, code, m[hit].to(DTYPE)
        _report(progress, "falsified by the float network and the real rounding", n, n)
        passes: tuple[Method, ...] = ("crown-ibp", method) if method == "crown" else (method,)
        for pass_method in passes:
            todo = torch.nonzero(status == UNKNOWN).flatten()
            ok = _verified(q, x[todo], y[todo], t, pass_method, chunk)
            status[todo[ok]] = VERIFIED
        _report(progress, "bounded", n, n)
        attacked, offsets = _attacks(q, x, y, t, status, by, margin, attack_steps)
        _report(progress, "attacked", n, n)
    return AccuracyResult(
        status.numpy(),
        by.numpy(),
        margin.numpy(),
        y.numpy(),
        labels_of(float_logits.flatten(1), t).numpy(),
        labels_of(measured.flatten(1), t).numpy(),
        attacked.numpy(),
        {k: v.numpy() for k, v in offsets.items()},
        q.describe(),
        int(outside.sum()),
        time.perf_counter() - start,
    )


def _attacks(
    q: Quantized,
    x: Tensor,
    y: Tensor,
    t: float,
    status: Tensor,
    by: Tensor,
    margin: Tensor,
    steps: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Attack the undecided images in two rounds: a short ascent for all (most flips show
    within a few steps), then the full one for those still undecided. Updates the per-image
    tensors in place; returns the falsified images and their witnesses' offsets."""
    images: list[Tensor] = []
    parts: dict[str, list[Tensor]] = {k: [] for k in q.pert.radius}
    rounds = (min(3, steps), steps) if steps > 3 else (steps,)
    for count in rounds if steps > 0 else ():
        todo = torch.nonzero(status == UNKNOWN).flatten()
        found, offsets = _attack(q, x[todo], y[todo], t, count)
        hit = found > 0
        status[todo[hit]], by[todo[hit]], margin[todo[hit]] = FALSIFIED, BY_ATTACK, found[hit]
        images.append(todo[hit])
        for k, v in offsets.items():
            parts[k].append(v[hit])
    if not images:
        empty = {k: torch.zeros((0, *r.shape), dtype=DTYPE) for k, r in q.pert.radius.items()}
        return torch.zeros(0, dtype=torch.long), empty
    return torch.cat(images), {k: torch.cat(v) for k, v in parts.items()}


def _report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)
