"""Seed 003's condition number of a network, measured per image and over a data set.

``kappa(x, dx) = (|dy| / |y|) / (|dx| / |x|)`` with ``y`` the logits (pre-softmax) and L2
norms over the whole input / logit vector; ``gain = |dy| / |dx|``. Methods:

- ``deepfool``: ``dx`` is DeepFool's minimal label-changing perturbation (section 5.1).
- ``random``: ``draws`` random directions per image, each scaled to the norm of that image's
  DeepFool perturbation; the largest kappa is kept (section 5.2).
- ``analytic``: the per-image bound ``L |x| / |y|`` from the product Lipschitz bound ``L``
  (``analytic.lipschitz``), which holds for every ``dx`` (a sound upper bound per image).
- ``certified``: DeepFool's kappa (measured) and, per image, a sound upper bound on kappa over
  every ``dx`` with ``|dx| <= r`` (r = |DeepFool dx|) from the bound engine and the Lipschitz
  bound (``analyses.certified_kappa``): measured <= certified for every image.

Per image the maximum over the perturbations tried; over the data set mean / median / min /
max, ``digits = log10 kappa`` and ``bits = ceil(log2 kappa) + 1`` (Eq. 5.1, at least 1).
Measured kappa is a ``lower`` bound on the data set's worst kappa, attained by a returned
witness (image index, perturbation); ``upper`` stays null (status ``measured``) unless a
sound bound exists (the analytic method gives one; the certified method gives the largest
certified kappa, status ``certified``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from quantcert.analyses.lipschitz import LipschitzBound, lipschitz_bound
from quantcert.engines.deepfool import LogitsFn, deepfool
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import DTYPE

if TYPE_CHECKING:
    from quantcert.analyses.certified_kappa import CertifiedKappa

Method = Literal["deepfool", "random", "analytic", "certified"]
METHODS: tuple[str, ...] = ("deepfool", "random", "analytic", "certified")
#: Jacobian entries (images x classes x inputs) per chunk: bounds the memory of a chunk.
CHUNK_ENTRIES = 8_000_000


def min_bits(k: float) -> int:
    """Eq. 5.1: ``ceil(log2 kappa) + 1``, at least 1 (NaN-safe: 0 when undefined)."""
    if not math.isfinite(k) or k <= 0:
        return 0
    return max(1, math.ceil(math.log2(k)) + 1)


def stats(values: np.ndarray) -> dict[str, float]:
    """Mean, median, min, max over the finite entries (NaN when there are none)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"mean": math.nan, "median": math.nan, "min": math.nan, "max": math.nan}
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


@dataclass(frozen=True)
class KappaWitness:
    """The image attaining the largest measured kappa: ``x`` = image + ``dx`` (flattened)."""

    image: int
    kappa: float
    gain: float
    dx_norm: float
    label_before: int
    label_after: int
    x: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "kappa": self.kappa,
            "gain": self.gain,
            "dx_norm": self.dx_norm,
            "label_before": self.label_before,
            "label_after": self.label_after,
            "x": self.x.ravel().tolist(),
        }


@dataclass(frozen=True)
class Measurement:
    """Per image (N,): norms of x, y and the DeepFool dx, kappa and gain of DeepFool and of
    the best random draw, DeepFool's success and labels; plus the two witnesses."""

    x_norm: np.ndarray
    y_norm: np.ndarray
    dx_norm: np.ndarray
    deepfool_kappa: np.ndarray
    deepfool_gain: np.ndarray
    random_kappa: np.ndarray
    random_gain: np.ndarray
    flipped: np.ndarray
    predicted: np.ndarray
    iterations: np.ndarray
    witnesses: dict[str, KappaWitness | None]
    interrupted: bool = False  # Ctrl-C: the arrays hold the images finished before it


@dataclass
class _Best:
    kappa: float = -math.inf
    witness: KappaWitness | None = None


def _norms(t: Tensor) -> Tensor:
    out: Tensor = torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)
    return out


def labels_of(logits: Tensor) -> Tensor:
    """Predicted classes (N,): the argmax of several logits; for one logit (a binary score,
    or the logit of a sigmoid head) class 1 where it is positive, the flip level 0."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def two_logits(fn: LogitsFn) -> LogitsFn:
    """A one-logit function ``z`` as the two logits ``(0, z)``: DeepFool's classes, whose
    decision boundary is ``z = 0`` (binary DeepFool)."""

    def pair(x: Tensor, index: Tensor) -> Tensor:
        z = fn(x, index).reshape(x.shape[0], 1)
        return torch.cat([torch.zeros_like(z), z], 1)

    return pair


def deepfool_model(net: Network) -> Network | LogitsFn:
    """What DeepFool attacks: the network's logits, or ``two_logits`` of a single one."""
    if int(np.prod(net.shapes()[net.logits_node])) != 1:
        return net
    return two_logits(lambda x, index: net.logits(x))


def kappa_of(net: Network, x: Tensor, dx: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Kappa and gain (N,) of perturbations ``dx`` at ``x`` (N, *input_shape), float64."""
    with torch.no_grad():
        y = net.logits(x) if y is None else y
        dy = net.logits(x + dx) - y
    gain = _norms(dy) / _norms(dx)
    return gain * _norms(x) / _norms(y), gain


def _random_like(dx: Tensor, draws: int, gen: torch.Generator) -> Tensor:
    """(draws, N, *shape): Gaussian directions scaled to each image's ``|dx|``."""
    r = torch.randn((draws, *dx.shape), generator=gen, dtype=DTYPE)
    if draws == 0:
        return r
    ones = [1] * (dx.dim() - 1)
    length = torch.linalg.vector_norm(r.reshape(draws, dx.shape[0], -1), dim=2)
    scaled: Tensor = r * (_norms(dx).unsqueeze(0) / length).reshape(draws, -1, *ones)
    return scaled


def _consider(
    best: _Best, net: Network, x: Tensor, dx: Tensor, k: Tensor, g: Tensor, offset: int
) -> None:
    """Keep the chunk's largest finite kappa as the witness when it beats ``best``."""
    finite = torch.where(torch.isfinite(k), k, torch.full_like(k, -math.inf))
    i = int(finite.argmax())
    if not float(finite[i]) > best.kappa:
        return
    xi, xa = x[i : i + 1], x[i : i + 1] + dx[i : i + 1]
    with torch.no_grad():
        before, after = int(labels_of(net.logits(xi))[0]), int(labels_of(net.logits(xa))[0])
    best.kappa = float(finite[i])
    best.witness = KappaWitness(
        offset + i,
        float(k[i]),
        float(g[i]),
        float(_norms(dx[i : i + 1])[0]),
        before,
        after,
        xa[0].numpy().copy(),
    )


def _measure_chunk(
    net: Network, x: Tensor, draws: int, gen: torch.Generator, best: dict[str, _Best], offset: int
) -> dict[str, Tensor]:
    df = deepfool(deepfool_model(net), x)
    dx = df.perturbation
    with torch.no_grad():
        y = net.logits(x)  # the network's own logits (DeepFool's may be the binary pair)
    k_df, g_df = kappa_of(net, x, dx, y)
    _consider(best["deepfool"], net, x, dx, k_df, g_df, offset)
    k_rand = torch.full_like(k_df, -math.inf)
    g_rand = torch.full_like(k_df, math.nan)
    best_dx = torch.zeros_like(dx)
    for r in _random_like(dx, draws, gen):
        k, g = kappa_of(net, x, r, y)
        better = torch.nan_to_num(k, nan=-math.inf) > k_rand
        k_rand, g_rand = torch.where(better, k, k_rand), torch.where(better, g, g_rand)
        best_dx[better] = r[better]
    k_rand = torch.where(torch.isinf(k_rand), torch.full_like(k_rand, math.nan), k_rand)
    _consider(best["random"], net, x, best_dx, k_rand, g_rand, offset)
    return {
        "x_norm": _norms(x),
        "y_norm": _norms(y),
        "dx_norm": df.norm,
        "deepfool_kappa": k_df,
        "deepfool_gain": g_df,
        "random_kappa": k_rand,
        "random_gain": g_rand,
        "flipped": df.flipped,
        "predicted": df.original,
        "iterations": df.iterations,
    }


def chunk_size(net: Network, classes: int = 10) -> int:
    return max(1, min(1000, CHUNK_ENTRIES // (classes * int(np.prod(net.input_shape)))))


def measure(
    net: Network, images: Tensor, draws: int = 10, seed: int = 0, progress: bool = True
) -> Measurement:
    """DeepFool and random perturbations (``draws`` per image) for ``images`` (N, *shape).
    Ctrl-C keeps the chunks already finished (``interrupted``); with none finished it
    propagates."""
    gen = torch.Generator().manual_seed(seed)
    interrupted = False
    best = {"deepfool": _Best(), "random": _Best()}
    parts: list[dict[str, Tensor]] = []
    step = chunk_size(net)
    with tqdm(
        total=len(images),
        desc=f"kappa {net.name}",
        file=sys.stderr,
        disable=not progress,
        unit="img",
    ) as bar:
        try:
            for start in range(0, len(images), step):
                x = images[start : start + step].to(DTYPE)
                parts.append(_measure_chunk(net, x, draws, gen, best, start))
                bar.update(len(x))
        except KeyboardInterrupt:
            if not parts:
                raise
            interrupted = True
    cat = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
    witnesses = {k: b.witness for k, b in best.items()}
    return Measurement(**cat, witnesses=witnesses, interrupted=interrupted)


@dataclass(frozen=True)
class KappaResult:
    """Per image (N,) kappa, gain and relative DeepFool perturbation ``|dx|/|x|``; the
    analytic bounds; the certificate fields (``lower`` attained by ``witness``); for the
    certified method the per-image certified bounds (``certified``)."""

    model: str
    method: str
    kappa: np.ndarray
    gain: np.ndarray
    relative_perturbation: np.ndarray
    flipped: np.ndarray
    predicted: np.ndarray
    labels: np.ndarray | None
    bound: LipschitzBound
    witness: KappaWitness | None
    lower: float | None
    upper: float | None
    status: str
    time_s: float
    draws: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    certified: CertifiedKappa | None = None

    @property
    def images(self) -> int:
        return int(self.kappa.shape[0])

    def summary(self) -> dict[str, Any]:
        """Kappa statistics, digits and bits (Eq. 5.1) of the mean, median, max, min."""
        k = stats(self.kappa)
        return {
            "kappa": k,
            "digits": {key: (math.log10(v) if v > 0 else math.nan) for key, v in k.items()},
            "min_bits": {key: min_bits(k[key]) for key in ("mean", "median", "max", "min")},
        }

    def to_dict(self) -> dict[str, Any]:
        rel = self.relative_perturbation[self.flipped] if self.flipped.any() else np.array([])
        out: dict[str, Any] = {
            "model": self.model,
            "method": self.method,
            "images": self.images,
            "flipped": int(self.flipped.sum()),
        }
        if self.labels is not None:
            out["accuracy"] = float((self.predicted == self.labels).mean())
        out.update(self.summary())
        gains = self.gain[np.isfinite(self.gain)]
        out["relative_perturbation"] = stats(rel)
        out["gain"] = {"max": float(gains.max()) if gains.size else math.nan}
        out["analytic_bound"] = self.bound.eq_3_8
        out["lipschitz_product"] = self.bound.product
        out["analytic"] = self.bound.to_dict()
        gap = None if self.lower is None or self.upper is None else self.upper - self.lower
        out.update(
            {
                "lower": self.lower,
                "upper": self.upper,
                "gap": gap,
                "status": self.status,
                "witness": None if self.witness is None else self.witness.to_dict(),
                "time_s": self.time_s,
                "engine": f"kappa/{self.method}",
                "draws": self.draws,
            }
        )
        out.update(self.extra)
        out["per_image"] = {
            "kappa": self.kappa.tolist(),
            "gain": self.gain.tolist(),
            "relative_perturbation": self.relative_perturbation.tolist(),
            "flipped": self.flipped.tolist(),
        }
        if self.certified is not None:
            out["certified"] = self.certified.to_dict(self.kappa)
            out["per_image"]["certified_kappa"] = self.certified.kappa.tolist()
        return out

    def to_text(self) -> str:
        d, s = self.to_dict(), self.summary()
        measured = self.method != "analytic"
        flips = f" ({d['flipped']} label flips by DeepFool)" if measured else ""
        rows = [f"kappa ({self.method}) of {self.model} over {self.images} images{flips}"]
        if "accuracy" in d:
            rows.append(f"  accuracy on these images: {d['accuracy']:.4f}")
        for key in ("mean", "median", "max", "min"):
            rows.append(
                f"  {key:>6} kappa {s['kappa'][key]:12.5g}   digits "
                f"{s['digits'][key]:6.2f}   min bits {s['min_bits'][key]:3d}"
            )
        b = self.bound
        if measured:
            rel = d["relative_perturbation"]
            rows.append(
                f"  |dx|/|x| (flipped): mean {rel['mean']:.3g}  min {rel['min']:.3g}  "
                f"max {rel['max']:.3g}"
            )
            rows.append(
                f"  max measured |dy|/|dx| {d['gain']['max']:.6g} <= Lipschitz product "
                f"bound {b.product:.6g}  (Eq. 3.8 as printed: {b.eq_3_8:.6g})"
            )
        else:
            rows.append(
                f"  kappa <= L |x| / |y| per image, L = Lipschitz product bound "
                f"{b.product:.6g}  (Eq. 3.8 as printed: {b.eq_3_8:.6g})"
            )
        upper = "none" if self.upper is None else f"{self.upper:.6g}"
        lower = "none" if self.lower is None else f"{self.lower:.6g}"
        wit = "" if self.witness is None else f" (image {self.witness.image})"
        if self.certified is not None:
            rows += self.certified.text_rows(self.kappa)
        rows.append(f"  certificate: lower {lower}{wit}, upper {upper}, status {self.status}")
        return "\n".join(rows)


def _analytic(net: Network, images: Tensor, bound: LipschitzBound) -> tuple[np.ndarray, ...]:
    with torch.no_grad():
        y = torch.cat([net.logits(images[i : i + 1000]) for i in range(0, len(images), 1000)])
    k = (bound.product * _norms(images) / _norms(y)).numpy()
    return k, np.full_like(k, bound.product), labels_of(y).numpy()


def result_for(
    net: Network,
    method: str,
    m: Measurement | None,
    images: Tensor,
    labels: np.ndarray | None,
    bound: LipschitzBound,
    elapsed: float,
    draws: int,
) -> KappaResult:
    """Assemble the result of ``method`` from a measurement (None for ``analytic``)."""
    n = len(images)
    if method == "analytic" or m is None:
        k, g, pred = _analytic(net, images, bound)
        upper = float(np.nanmax(k)) if np.isfinite(k).any() else None
        return KappaResult(
            net.name,
            "analytic",
            k,
            g,
            np.full(n, math.nan),
            np.zeros(n, bool),
            pred,
            labels,
            bound,
            None,
            None,
            upper,
            "analytic bound",
            elapsed,
        )
    k = m.deepfool_kappa if method == "deepfool" else m.random_kappa
    g = m.deepfool_gain if method == "deepfool" else m.random_gain
    witness = m.witnesses[method]
    return KappaResult(
        net.name,
        method,
        k,
        g,
        m.dx_norm / m.x_norm,
        m.flipped,
        m.predicted,
        labels,
        bound,
        witness,
        None if witness is None else witness.kappa,
        None,
        "measured",
        elapsed,
        draws if method == "random" else 0,
        {"iterations": stats(m.iterations.astype(np.float64))},
    )


def kappa(
    net: Network,
    images: Tensor | np.ndarray,
    labels: np.ndarray | None = None,
    method: str = "deepfool",
    limit: int | None = None,
    progress: bool = True,
    draws: int = 10,
    seed: int = 0,
    radius: float | None = None,
) -> KappaResult:
    """Seed 003's kappa of ``net`` over ``images`` (N, ...) float64, each image reshaped to
    ``net.input_shape`` (so 28x28 images feed a (784, 1) input); at most ``limit`` images,
    ``draws`` random directions per image for ``random``; tqdm progress on stderr.
    ``certified`` adds the bound engine's certified kappa per image (``certified_result``), at
    each image's DeepFool radius or at the L2 ``radius`` given."""
    if method not in METHODS:
        raise InputError(f"unknown kappa method {method!r}: use {', '.join(METHODS)}")
    if radius is not None and (method != "certified" or not 0 < radius < math.inf):
        raise InputError(f"--radius needs --method certified and a radius > 0, got {radius}")
    x = torch.as_tensor(images, dtype=DTYPE)[:limit]
    if x.dim() < 1 or math.prod(x.shape[1:]) != math.prod(net.input_shape):
        raise InputError(
            f"images of shape {tuple(x.shape[1:])} do not fit the model input "
            f"{tuple(net.input_shape)}"
        )
    x = x.reshape(len(x), *net.input_shape)
    if len(x) == 0:
        raise InputError("no images to measure kappa on")
    lab = None if labels is None else np.asarray(labels)[: len(x)]
    start = time.perf_counter()
    bound = lipschitz_bound(net)
    if method == "certified":
        from quantcert.analyses.certified_kappa import certified_result

        return certified_result(net, x, lab, bound, seed, progress, radius)
    m = None if method == "analytic" else measure(net, x, draws, seed, progress)
    if m is not None and m.interrupted:
        done = len(m.deepfool_kappa)
        print(f"interrupted: kept the {done} of {len(x)} images finished", file=sys.stderr)
        x, lab = x[:done], None if lab is None else lab[:done]
    result = result_for(net, method, m, x, lab, bound, time.perf_counter() - start, draws)
    if m is not None and m.interrupted:
        result = dataclasses.replace(result, extra={**result.extra, "interrupted": True})
    return result
