"""Kappa over a data set as a batch run (``quantcert.runs``): resumable and distributable.

The images are cut into chunks (``chunk_size`` images, as ``kappa.measure`` cuts them); each
chunk is one unit, keyed ``"<first image>:<sha256 of the chunk's float64 bytes, 16 hex>"``, so
a unit is reused only for the same images at the same place. The study is the model's content
hash and the options (method, draws, seed, chunk size, radius, quantcert's version). A unit's
value is the chunk's per-image arrays and its best witnesses; merging the chunks in order
(strictly larger kappa wins) gives the witness the sequential ``measure`` gives.

``certified`` adds, per chunk, ``certified_kappa`` at each image's DeepFool radius (or the
one ``radius``), as ``certified_kappa.certified_result`` does over all the images.

DeepFool is deterministic, so ``deepfool`` through here equals ``kappa.kappa`` exactly, and
so does ``certified`` where the bound engine batches the images alike (tests: 8 MNIST images;
elsewhere a batch of other images may change the last bits of a bound, never its soundness).
For
``random`` each chunk draws from its own generator, seeded by ``(seed, first image)``: the same
result whatever the order, the executor or the resumes, but not the draws of ``kappa.kappa``
(whose single generator runs through the chunks in order).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from dataclasses import asdict, dataclass, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from quantcert.analyses.certified_kappa import CertifiedKappa, certified_kappa
from quantcert.analyses.kappa import (
    KappaResult,
    KappaWitness,
    Measurement,
    _Best,
    _measure_chunk,
    chunk_size,
    result_for,
)
from quantcert.analyses.lipschitz import LipschitzBound, lipschitz_bound
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import DTYPE
from quantcert.report.progress import UnitProgress
from quantcert.runs import Executor, InProcess, Store, StudyKey, model_hash, run_units

#: Methods that run as units (analytic is one cheap pass over the images).
UNIT_METHODS: tuple[str, ...] = ("deepfool", "random", "certified")
#: Per-image arrays of ``CertifiedKappa``, stored under ``certified.<name>``.
_CERTIFIED = tuple(
    f.name for f in fields(CertifiedKappa) if f.name not in ("model", "engine", "lipschitz")
)


@dataclass(frozen=True)
class Chunk:
    """Images ``start .. start + len(x)``: ``x`` (n, *input_shape) float64."""

    start: int
    x: np.ndarray

    @property
    def key(self) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(self.x).tobytes()).hexdigest()
        return f"{self.start}:{digest[:16]}"


def chunks(images: Tensor, step: int) -> list[Chunk]:
    """``images`` (N, *shape) cut into chunks of ``step`` images (the last may be shorter)."""
    x = images.to(DTYPE).numpy()
    return [Chunk(s, x[s : s + step].copy()) for s in range(0, len(x), step)]


def model_identity(model: str) -> str:
    """The sha256 of the model file, or for a built-in case its name and quantcert's version."""
    if Path(model).is_file():
        return model_hash(model)
    return f"case:{model}@{release()}"


def release() -> str:
    """quantcert's installed version (part of every study: new code, new results)."""
    try:
        return version("quantcert")
    except PackageNotFoundError:
        return "unknown"


def measure_unit(
    net: Network, draws: int, seed: int, chunk: Chunk, certify: Certify | None = None
) -> dict[str, Any]:
    """One chunk: per-image arrays (n,) as ``kappa.measure`` keeps them, ``witnesses``
    (``deepfool``, ``random``: the chunk's best, a dict or None) and, with ``certify``, the
    chunk's certified kappa (``certified.<field>``, ``certified_engine``)."""
    state = np.random.SeedSequence([seed, chunk.start]).generate_state(2, np.uint64)
    gen = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
    best = {"deepfool": _Best(), "random": _Best()}
    x = torch.from_numpy(chunk.x)
    arrays = _measure_chunk(net, x, draws, gen, best, chunk.start)
    out: dict[str, Any] = {k: v.numpy() for k, v in arrays.items()}
    out["witnesses"] = {
        k: None if b.witness is None else asdict(b.witness) for k, b in best.items()
    }
    if certify is not None:
        radii = out["dx_norm"] if certify.radius is None else np.full(len(x), certify.radius)
        cert = certified_kappa(net, x, radii, lipschitz=certify.lipschitz)
        out.update({f"certified.{k}": getattr(cert, k) for k in _CERTIFIED})
        out["certified_engine"] = cert.engine
    return out


@dataclass(frozen=True)
class Certify:
    """What a certified unit needs: the product Lipschitz bound and the L2 ``radius`` (None:
    each image's DeepFool radius)."""

    lipschitz: float
    radius: float | None


def merge(values: list[dict[str, Any]]) -> Measurement:
    """The chunks' values, in image order, as one ``Measurement``."""
    names = [k for k in values[0] if k != "witnesses" and not k.startswith("certified")]
    arrays: dict[str, Any] = {k: np.concatenate([v[k] for v in values]) for k in names}
    witnesses: dict[str, KappaWitness | None] = {}
    for method in ("deepfool", "random"):
        best: KappaWitness | None = None
        for v in values:
            w = v["witnesses"][method]
            if w is not None and (best is None or w["kappa"] > best.kappa):
                best = KappaWitness(**w)
        witnesses[method] = best
    return Measurement(**arrays, witnesses=witnesses)


def merge_certified(net: Network, values: list[dict[str, Any]], lipschitz: float) -> CertifiedKappa:
    """The chunks' certified kappa, in image order (``time_s``: the sum over the chunks)."""
    arrays: dict[str, Any] = {
        k: np.concatenate([v[f"certified.{k}"] for v in values])
        for k in _CERTIFIED
        if k not in ("domain", "time_s")
    }
    engines = sorted({str(v["certified_engine"]) for v in values})
    seconds = float(sum(v["certified.time_s"] for v in values))
    return CertifiedKappa(
        net.name, ", ".join(engines), **arrays, lipschitz=lipschitz, domain=None, time_s=seconds
    )


def kappa_runs(
    net: Network,
    images: Tensor,
    labels: np.ndarray | None,
    method: str,
    model_id: str,
    store: Store | None = None,
    executor: Executor | None = None,
    draws: int = 10,
    seed: int = 0,
    step: int | None = None,
    progress: bool = True,
    radius: float | None = None,
    bound: LipschitzBound | None = None,
) -> KappaResult:
    """Kappa of ``net`` (``deepfool``, ``random`` or ``certified``, at ``radius`` or each
    image's DeepFool radius) over ``images`` (N, *input_shape) as units of ``step`` images
    (default ``chunk_size(net)``): finished units are read from ``store``, the others run on
    ``executor`` (default in process) and are recorded. ``bound``: ``lipschitz_bound(net)``
    when the caller has it already."""
    if method not in UNIT_METHODS:
        raise InputError(
            f"--store and --scheduler work with --method {' or '.join(UNIT_METHODS)}, not {method}"
        )
    start = time.perf_counter()
    step = chunk_size(net) if step is None else step
    draws = draws if method == "random" else 0
    spec = {"analysis": "kappa", "method": method, "draws": draws, "seed": seed, "chunk": step}
    spec["quantcert"] = release()
    bound = lipschitz_bound(net) if bound is None else bound
    certify = None
    if method == "certified":
        certify = Certify(bound.product, radius)
        spec["radius"] = radius
    study = None if store is None else StudyKey.of(model_id, spec)
    units = chunks(images, step)
    label = f"kappa {net.name} ({len(images)} images)"
    bar = UnitProgress(label, unit="chunks") if progress else None
    fn = functools.partial(_unit, net, draws, seed, certify)
    try:
        values = run_units(executor or InProcess(), store, study, fn, units, _key, bar)
    finally:
        if bar is not None:
            bar.close()
    m = merge(values)
    if certify is None:
        return result_for(net, method, m, images, labels, bound, time.perf_counter() - start, draws)
    cert = merge_certified(net, values, bound.product)
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


def _unit(
    net: Network, draws: int, seed: int, certify: Certify | None, chunk: Chunk
) -> dict[str, Any]:
    return measure_unit(net, draws, seed, chunk, certify)


def _key(chunk: Chunk) -> str:
    return chunk.key
