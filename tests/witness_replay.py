"""Replay every witness the test suite produces (issue 13: "a test replays every witness").

``install()`` wraps the public ``epsilon`` and ``flip`` queries before any test imports them;
every result is kept, and ``check_all()`` (run when the session ends) replays each witness:

- ``x`` inside the query's box and ``theta`` inside its perturbation set;
- in the IR, in float64: the witness reaches its ``lower`` (epsilon, overall and per output),
  or changes the label (a ``falsified`` flip);
- for a network loaded from an ONNX file (radii on the file's initializers): the witness
  written as the user's own graph and run by onnxruntime reaches the same value, within the
  file's float32 precision.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from quantcert.analyses.flip import threshold
from quantcert.engines.perturbation import Perturbation
from quantcert.network import Network
from quantcert.ops import QuantNoise
from quantcert.ops.base import DTYPE, Box
from quantcert.report.replay import (
    epsilon_value,
    inside,
    labels_differ,
    write_onnx_witness,
)
from quantcert.report.results import QueryResult, WitnessRecord


@dataclass(frozen=True)
class Recorded:
    kind: str
    net: Network
    pert: Perturbation
    box: Box
    result: QueryResult
    level: float | None


RECORDED: list[Recorded] = []


def _wrap(module: Any, name: str) -> None:
    original: Callable[..., QueryResult] = getattr(module, name)

    def recorded(net: Network, pert: Perturbation, box: Box, *args: Any, **kw: Any) -> QueryResult:
        result = original(net, pert, box, *args, **kw)
        level = kw.get("level", args[1] if len(args) > 1 else None)
        RECORDED.append(Recorded(name, net, pert, box, result, level))
        return result

    setattr(module, name, recorded)


def install() -> None:
    import quantcert.analyses.epsilon as eps_module
    import quantcert.analyses.flip as flip_module

    _wrap(eps_module, "epsilon")
    _wrap(flip_module, "flip")


def _check_onnx(rec: Recorded, w: WitnessRecord, lower: float) -> str | None:
    if not rec.net.sources or rec.net.origin is None or not w.param_offsets:
        return None
    if any(isinstance(n.op, QuantNoise) for n in rec.net.nodes):
        return None  # activation noise has no initializer: the witness replays in the IR only
    model = onnx.load(rec.net.origin)
    with tempfile.TemporaryDirectory() as tmp:
        replay = write_onnx_witness(rec.net, model, w, Path(tmp) / "w.onnx")
    x = torch.as_tensor(np.asarray(w.x), dtype=DTYPE).reshape(1, *rec.net.input_shape)
    scale = 1.0 + float(rec.net(x).abs().max())
    if replay.change < lower - 1e-4 * scale:
        return f"onnxruntime replay {replay.change} < lower {lower}"
    return None


def check(rec: Recorded) -> list[str]:
    """Why this record's witnesses fail to replay (empty when they all replay)."""
    problems = []
    certs = [(None, rec.result.overall), *list(enumerate(rec.result.per_output))]
    for k, cert in certs:
        w = cert.witness
        if w is None or not np.isfinite(cert.lower):
            continue
        if not inside(rec.net, rec.pert, rec.box, w):
            problems.append("witness outside the query's box or perturbation set")
        if rec.kind == "epsilon":
            value = epsilon_value(rec.net, w, k)
            if value < cert.lower:
                problems.append(f"IR replay {value!r} < lower {cert.lower!r} (output {k})")
            if k is None:
                onnx_problem = _check_onnx(rec, w, cert.lower)
                problems += [onnx_problem] if onnx_problem else []
        elif cert.status == "falsified" and not labels_differ(
            rec.net, w, threshold(rec.net, rec.level)
        ):
            problems.append("falsified, but the witness does not change the label")
    return problems


def check_all() -> list[str]:
    out = []
    for rec in RECORDED:
        out += [f"{rec.kind} on {rec.net.name}: {p}" for p in check(rec)]
    return out
