"""What a bit-width must achieve (``--target``), and how one quantization setting is judged
against it on the data.

- ``accuracy-drop<=P%``: certified accuracy >= float accuracy - P (percentage points);
- ``noflip``: every data point keeps the float network's label under every rounding the
  formats allow (labels are the float predictions, not the data's labels).

A judged setting is a certificate (``lower`` = certified accuracy, ``upper`` = worst-case
accuracy, ``status``) plus what the real rounding measured. ``status``: ``verified`` (the
target provably holds), ``falsified`` (a concrete setting breaks it: the real rounding, or
for ``noflip`` one image's witness), ``unknown`` (the bounds do not decide).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from quantcert.analyses.precision.accuracy import FALSIFIED, VERIFIED, AccuracyResult
from quantcert.errors import InputError


@dataclass(frozen=True)
class Target:
    kind: str  # "accuracy-drop" or "noflip"
    drop: float = 0.0  # fraction, for accuracy-drop

    def describe(self) -> str:
        return f"accuracy-drop<={self.drop * 100:g}%" if self.kind == "accuracy-drop" else "noflip"


def parse_target(text: str) -> Target:
    """``accuracy-drop<=1%`` (or ``<=0.01``) or ``noflip``; anything else is an InputError."""
    t = text.strip().replace(" ", "")
    if t == "noflip":
        return Target("noflip")
    m = re.fullmatch(r"accuracy-drop<=([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)(%?)", t)
    if m is None:
        raise InputError(
            f"--target {text!r}: use accuracy-drop<=P% or noflip (eps<=E is not offered yet)"
        )
    value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    if not 0.0 <= value <= 1.0:
        raise InputError(f"--target {text!r}: the drop must lie in [0, 100%]")
    return Target("accuracy-drop", value)


@dataclass(frozen=True)
class Judgement:
    """One setting against the target: the certificate and the real rounding's effect."""

    status: str
    certified: float  # certified accuracy (lower bound) on the data
    worst_case: float  # accuracy no concrete rounding has beaten (upper bound)
    measured: float  # accuracy of the real rounding
    float_accuracy: float
    witness: dict[str, object] | None  # what breaks the target, when falsified
    time_s: float

    def certificate(self) -> dict[str, object]:
        return {"lower": self.certified, "upper": self.worst_case, "status": self.status}


def judge(result: AccuracyResult, target: Target, float_accuracy: float) -> Judgement:
    """``result`` was computed at the labels the target reads (data labels for
    accuracy-drop, float predictions for noflip)."""
    s = result.summary()
    certified, worst = float(s["certified_accuracy"]), float(s["worst_case_accuracy"])  # type: ignore[arg-type]
    measured = float(s["measured_accuracy"])  # type: ignore[arg-type]
    witness: dict[str, object] | None = None
    if target.kind == "noflip":
        if bool((result.status == VERIFIED).all()):
            status = "verified"
        elif bool((result.status == FALSIFIED).any()):
            status = "falsified"
            i = int(np.flatnonzero(result.status == FALSIFIED)[0])
            how = {1: "float", 2: "real rounding", 3: "attack"}[int(result.by[i])]
            witness = {"image": i, "by": how, "margin": float(result.margin[i])}
        else:
            status = "unknown"
    else:
        floor = float_accuracy - target.drop
        if certified >= floor - 1e-12:
            status = "verified"
        elif measured < floor - 1e-12:
            status = "falsified"
            witness = {"by": "real rounding", "measured_accuracy": measured}
        else:
            status = "unknown"
    return Judgement(status, certified, worst, measured, float_accuracy, witness, result.time_s)
