"""Certified kappa (beyond seed 003): a sound upper bound, per image ``x0`` and radius ``r``, on

    max over |dx|_2 <= r of |f(x0 + dx) - f(x0)|_2        (f: the logits)

and so on ``kappa = (|dy| / |y0|) / (r / |x0|)`` for every perturbation of norm ``r`` (DeepFool's
``dx`` has ``|dx| = r``, so measured kappa <= certified kappa, and the two sandwich the truth).

The bound ``U`` is the smaller of two sound bounds:

- the engine: CROWN with an L2-ball input (``analyses.certified_ball``: every linear bound,
  intermediate ones included, concretised over the ball as ``A . x0 + r |A|_2``) gives each
  logit ``lo_k <= y_k <= hi_k``; then ``|dy|_2 <= |max(hi - y0, y0 - lo)|_2``. With
  ``method="ibp"``, or where CROWN would take more than ``certified_ball.MEMORY_BUDGET`` per
  image (e.g. a convolution with 23,328 unstable ReLUs), intervals over the box ``x0 +- r``.
- the product Lipschitz bound ``L r`` (``analyses.lipschitz``, a sound L2 operator bound).

Both bound the exact (real-arithmetic) network; float64 evaluation of ``dy`` differs by far less
than the added margin ``SAFETY * (U + |y0|)``. No clipping by default: seed 003's perturbations
are unconstrained; ``domain=(lo, hi)`` (e.g. pixels in [0, 1]) restricts ``x0 + dx`` to the
domain as well, a different (smaller) kappa.

A lower bound on the same maximum comes from gradient ascent on ``|dy|`` in the ball
(``certified_ball.ascent``), so ``ascent <= truth <= certified`` per image.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from quantcert.analyses.certified_ball import Domain, ascent, choose_engine, engine_dy_bound
from quantcert.analyses.kappa import KappaResult, measure, min_bits, result_for, stats
from quantcert.analyses.lipschitz import LipschitzBound, lipschitz_bound
from quantcert.engines.bounds import Method, engine_threads
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import DTYPE

#: Relative margin for float64 evaluation of ``dy`` (the bounds hold for exact arithmetic).
SAFETY = 1e-9


def _flat_norm(t: Tensor) -> Tensor:
    out: Tensor = torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)
    return out


@dataclass(frozen=True)
class CertifiedKappa:
    """Per image (N,): the radius ``r``, ``|x0|``, ``|y0|``; sound upper bounds on
    ``max |dy|`` over the ball from the engine, from ``L r`` and their minimum ``dy_upper``;
    the certified ``kappa`` from it; the ascent's attained ``ascent_dy`` / ``ascent_kappa``."""

    model: str
    engine: str
    radius: np.ndarray
    x_norm: np.ndarray
    y_norm: np.ndarray
    dy_engine: np.ndarray
    dy_lipschitz: np.ndarray
    dy_upper: np.ndarray
    kappa: np.ndarray
    ascent_dy: np.ndarray
    ascent_kappa: np.ndarray
    lipschitz: float
    domain: Domain | None
    time_s: float

    @property
    def images(self) -> int:
        return int(self.kappa.shape[0])

    @property
    def bits(self) -> np.ndarray:
        """Eq. 5.1 per image from the certified kappa (N,)."""
        return np.array([min_bits(float(k)) for k in self.kappa], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """Certified kappa statistics and the bits (Eq. 5.1) of each statistic."""
        k = stats(self.kappa)
        return {"kappa": k, "min_bits": {key: min_bits(v) for key, v in k.items()}}

    def compare(self, measured: np.ndarray) -> dict[str, Any]:
        """How measured kappa (N,) sits under the certified one: violations (must be 0) and
        the ratio certified / measured."""
        both = np.isfinite(measured) & np.isfinite(self.kappa)
        ratio = np.full(self.images, math.nan)
        ratio[both] = self.kappa[both] / measured[both]
        bad = int((measured[both] > self.kappa[both]).sum())
        return {
            "compared": int(both.sum()),
            "violations": bad,
            "measured_le_certified": bad == 0,
            "ratio": stats(ratio),
        }

    def to_dict(self, measured: np.ndarray | None = None) -> dict[str, Any]:
        """JSON: ``kappa``, ``min_bits``, ``ascent_kappa``, ``dy``, the engine and, given the
        measured kappa per image, ``compare``'s keys."""
        out: dict[str, Any] = self.summary()
        engine_wins = self.dy_engine <= self.dy_lipschitz
        out.update(
            {
                "images": self.images,
                "engine": self.engine,
                "lipschitz_product": self.lipschitz,
                "domain": None if self.domain is None else list(self.domain),
                "ascent_kappa": stats(self.ascent_kappa),
                "radius": stats(self.radius),
                "dy": {"upper": stats(self.dy_upper), "ascent": stats(self.ascent_dy)},
                "engine_tighter_than_lipschitz": int(engine_wins.sum()),
                "time_s": self.time_s,
                "time_per_image_s": self.time_s / max(1, self.images),
            }
        )
        if measured is not None:
            out.update(self.compare(measured))
        return out

    def text_rows(self, measured: np.ndarray | None = None) -> list[str]:
        """Lines for a text report."""
        s, d = self.summary(), self.to_dict(measured)
        rows = [
            f"  certified ({self.engine} with the L2 ball, min with L r; "
            f"{d['time_per_image_s']:.3g} s per image):"
        ]
        for key in ("mean", "median", "max", "min"):
            rows.append(
                f"  {key:>6} certified kappa {s['kappa'][key]:12.5g}   "
                f"min bits {s['min_bits'][key]:3d}"
            )
        rows.append(
            f"  engine bound tighter than L r on {d['engine_tighter_than_lipschitz']} of "
            f"{self.images} images; ascent kappa median {d['ascent_kappa']['median']:.5g}"
        )
        if measured is not None:
            ok = "yes" if d["measured_le_certified"] else f"NO ({d['violations']} violations)"
            rows.append(
                f"  measured <= certified on all {d['compared']} images: {ok}; "
                f"certified / measured median {d['ratio']['median']:.4g}"
            )
        return rows


def _as_images(net: Network, images: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(images, dtype=DTYPE)
    if x.dim() < 1 or math.prod(x.shape[1:]) != math.prod(net.input_shape):
        raise InputError(
            f"images of shape {tuple(x.shape[1:])} do not fit the model input "
            f"{tuple(net.input_shape)}"
        )
    return x.reshape(len(x), *net.input_shape)


def _radii(radii: float | Tensor | np.ndarray, n: int) -> Tensor:
    r = torch.as_tensor(radii, dtype=DTYPE).reshape(-1)
    r = r.expand(n).clone() if r.numel() == 1 else r
    if r.shape != (n,) or not bool((torch.isfinite(r) & (r >= 0)).all()):
        raise InputError(f"radii: {n} finite non-negative values needed, got {tuple(r.shape)}")
    return r


def certified_kappa(
    net: Network,
    images: Tensor | np.ndarray,
    radii: float | Tensor | np.ndarray,
    method: Method = "crown",
    domain: Domain | None = None,
    ascent_steps: int = 30,
    start: Tensor | None = None,
    lipschitz: float | None = None,
    progress: bool = False,
) -> CertifiedKappa:
    """Certified kappa of ``net`` at ``images`` (N, ...) for L2 radii (a float or (N,)), in
    chunks of images batched in one ``bound_spec`` call each. ``start`` (N, *input_shape):
    where the ascent starts (e.g. DeepFool's dx); ``lipschitz``: the product bound if known."""
    begin = time.perf_counter()
    x = _as_images(net, images)
    r = _radii(radii, len(x))
    if domain is not None and not bool(((x >= domain[0]) & (x <= domain[1])).all()):
        raise InputError(f"images outside the domain {domain}")
    chosen, engine, step = choose_engine(net, method)
    with engine_threads(net):
        lip = lipschitz_bound(net).product if lipschitz is None else lipschitz
        arrays = _chunks(net, x, r, chosen, step, domain, ascent_steps, start, progress)
    return _assemble(net.name, engine, r.numpy(), arrays, lip, domain, time.perf_counter() - begin)


def _chunks(
    net: Network,
    x: Tensor,
    r: Tensor,
    method: Method,
    step: int,
    domain: Domain | None,
    ascent_steps: int,
    start: Tensor | None,
    progress: bool,
) -> dict[str, np.ndarray]:
    """Per image (N,): ``x_norm``, ``y_norm``, ``dy_engine``, ``dy_ascent``, ``step`` images
    at a time."""
    parts: dict[str, list[Tensor]] = {"x_norm": [], "y_norm": [], "dy_engine": [], "dy_ascent": []}
    bar = tqdm(
        total=len(x),
        desc=f"certified kappa {net.name}",
        file=sys.stderr,
        disable=not progress,
        unit="img",
    )
    with bar:
        for i in range(0, len(x), step):
            x0, ri = x[i : i + step], r[i : i + step]
            with torch.no_grad():
                y0 = net.logits(x0)
                parts["dy_engine"].append(engine_dy_bound(net, x0, ri, y0, method, domain))
            s0 = None if start is None else start[i : i + step].reshape(x0.shape)
            parts["dy_ascent"].append(ascent(net, x0, ri, y0, ascent_steps, s0, domain)[0])
            parts["x_norm"].append(_flat_norm(x0))
            parts["y_norm"].append(_flat_norm(y0))
            bar.update(len(x0))
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def _assemble(
    model: str,
    engine: str,
    r: np.ndarray,
    arrays: dict[str, np.ndarray],
    lip: float,
    domain: Domain | None,
    elapsed: float,
) -> CertifiedKappa:
    """Take the smaller bound, add the float64 margin, and divide into kappa (NaN where
    ``r`` or ``|y0|`` is 0)."""
    x_norm, y_norm, dy_engine = arrays["x_norm"], arrays["y_norm"], arrays["dy_engine"]
    dy_lip = lip * r
    upper = np.minimum(dy_engine, dy_lip)
    upper = upper + SAFETY * (upper + y_norm)
    scale = np.full_like(r, math.nan)
    ok = (r > 0) & (y_norm > 0)
    scale[ok] = x_norm[ok] / (y_norm[ok] * r[ok])
    ascent_dy = arrays["dy_ascent"]
    return CertifiedKappa(
        model,
        engine,
        r,
        x_norm,
        y_norm,
        dy_engine,
        dy_lip,
        upper,
        upper * scale,
        ascent_dy,
        ascent_dy * scale,
        lip,
        domain,
        elapsed,
    )


def certified_result(
    net: Network,
    images: Tensor,
    labels: np.ndarray | None,
    bound: LipschitzBound,
    seed: int = 0,
    progress: bool = True,
    radius: float | None = None,
) -> KappaResult:
    """DeepFool's kappa (measured, the lower bound) and the certified kappa per image at the
    radius of its DeepFool perturbation, or at ``radius`` (L2) for every image when given
    (the upper bound: the largest over the images)."""
    start = time.perf_counter()
    m = measure(net, images, 0, seed, progress)
    images = images[: len(m.dx_norm)]  # fewer after Ctrl-C
    radii = m.dx_norm if radius is None else np.full(len(m.dx_norm), radius)
    cert = certified_kappa(net, images, radii, lipschitz=bound.product, progress=progress)
    base = result_for(net, "deepfool", m, images, labels, bound, 0.0, 0)
    finite = cert.kappa[np.isfinite(cert.kappa)]
    return dataclasses.replace(
        base,
        method="certified",
        upper=float(finite.max()) if finite.size else None,
        status="certified",
        time_s=time.perf_counter() - start,
        certified=cert,
    )
