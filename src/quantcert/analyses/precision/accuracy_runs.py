"""``accuracy`` over a data set as a batch run (``quantcert.runs``): resumable with a store,
distributable with an executor.

The images are cut into chunks of ``CHUNK``; each chunk is one unit, keyed by its first
image and the sha256 of its pixels and labels. Every chunk uses the same activation scales:
the calibration data given, or else the whole data set (as the unchunked run does), so a
chunk's per-image results are those of the unchunked run (the bound engine may batch images
differently, which can move a bound's last bits, never its soundness). The study is the
model's sha256, the scheme, the calibration's sha256 and quantcert's version.
"""

from __future__ import annotations

import functools
import hashlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from quantcert.analyses.precision.accuracy import AccuracyResult, accuracy
from quantcert.analyses.precision.scheme import Scheme
from quantcert.network import Network
from quantcert.runs import Executor, InProcess, Progress, Store, StudyKey, run_units

CHUNK = 500
_ARRAYS = ("status", "by", "margin", "labels", "float_pred", "measured_pred", "attack_images")


def _sha(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def _version() -> str:
    try:
        return version("quantcert")
    except PackageNotFoundError:
        return "unknown"


def study_key(model_id: str, scheme: Scheme, calibration: np.ndarray) -> StudyKey:
    spec = {
        "query": "accuracy",
        "scheme": scheme.describe(),
        "calibration": _sha(np.asarray(calibration, dtype=np.float64)),
        "chunk": CHUNK,
        "quantcert": _version(),
    }
    return StudyKey.of(model_id, spec)


def _chunk(
    net: Network,
    points: np.ndarray,
    labels: np.ndarray,
    scheme: Scheme,
    calibration: np.ndarray,
    span: tuple[int, int],
) -> dict[str, Any]:
    s, e = span
    res = accuracy(net, points[s:e], labels[s:e], scheme, calibration)
    out: dict[str, Any] = {k: getattr(res, k) for k in _ARRAYS}
    out["attack_images"] = res.attack_images + s
    out["offsets"] = res.attack_offsets
    out["scheme"] = res.scheme
    out["outside_box"] = res.outside_box
    out["time_s"] = res.time_s
    return out


def accuracy_units(
    net: Network,
    points: np.ndarray,
    labels: np.ndarray,
    scheme: Scheme,
    model_id: str,
    calibration: np.ndarray | None = None,
    store: Store | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> AccuracyResult:
    """``accuracy`` chunk by chunk, each chunk recorded in ``store`` as it finishes and
    skipped when the store holds it; the chunks merged in order."""
    cal = np.asarray(points if calibration is None else calibration, dtype=np.float64)
    spans = [(s, min(s + CHUNK, len(points))) for s in range(0, len(points), CHUNK)]
    fn = functools.partial(_chunk, net, points, labels, scheme, cal)
    study = None if store is None else study_key(model_id, scheme, cal)

    def key(span: tuple[int, int]) -> str:
        s, e = span
        return f"{s}:{_sha(points[s:e], labels[s:e])}"

    parts = run_units(executor or InProcess(), store, study, fn, spans, key, progress)
    names = sorted({k for p in parts for k in p["offsets"]})
    offsets = {k: np.concatenate([np.asarray(p["offsets"][k]) for p in parts]) for k in names}
    cat = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in _ARRAYS}
    return AccuracyResult(
        status=cat["status"],
        by=cat["by"],
        margin=cat["margin"],
        labels=cat["labels"],
        float_pred=cat["float_pred"],
        measured_pred=cat["measured_pred"],
        attack_images=cat["attack_images"],
        attack_offsets=offsets,
        scheme=parts[0]["scheme"],
        outside_box=sum(int(p["outside_box"]) for p in parts),
        time_s=sum(float(p["time_s"]) for p in parts),
    )
