"""Typed results. Every estimate is a certificate: ``lower`` attained by a witness that was
re-evaluated in float64, a sound ``upper``, and a status."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Witness parameter tensors up to this many values are written inline in JSON.
INLINE_PARAMS = 2000
#: Witness inputs up to this many values are written inline when a witness file exists.
INLINE_X = 64
#: The reason a certificate with a NaN or an infinite bound carries; its status is ``unknown``.
NON_FINITE = "non-finite bound"


@dataclass(frozen=True)
class WitnessRecord:
    """A concrete input and parameter setting; ``params`` holds theta - theta0 per tensor."""

    x: np.ndarray
    param_offsets: dict[str, np.ndarray]
    value: float
    #: Stated bound on the float64 evaluation error behind ``value`` (already subtracted).
    error: float = 0.0
    #: The evaluated value lay within ``error`` of 0: it only shows the witness exists.
    below_error_scale: bool = False

    def to_dict(self, params_file: str | None = None) -> dict[str, Any]:
        """``params_file``: the .npz holding this witness (``x`` and theta - theta0 per
        tensor); large parameter sets and inputs are then named there, not written inline."""
        if params_file is not None and self.x.size > INLINE_X:
            out: dict[str, Any] = {"x_file": params_file, "value": self.value}
        else:
            out = {"x": self.x.ravel().tolist(), "value": self.value}
        out["value_error"] = self.error
        if self.below_error_scale:
            out["note"] = "the value is below the float64 error scale of its evaluation"
        total = sum(a.size for a in self.param_offsets.values())
        if params_file is not None and total > INLINE_PARAMS:
            out["params_file"] = params_file
            out["params_note"] = "theta - theta0 per tensor, numpy .npz"
        else:
            out["param_offsets"] = {k: v.tolist() for k, v in self.param_offsets.items()}
        return out


def non_finite(lower: float, upper: float) -> bool:
    """True when a bound carries no information: a NaN anywhere, an upper of ``+inf``, or a
    lower of ``+inf`` (an overflowed witness). ``-inf`` is a valid value of both (no witness;
    an empty feasible set)."""
    return math.isnan(lower) or math.isnan(upper) or upper == math.inf or lower == math.inf


@dataclass(frozen=True)
class Certificate:
    """``lower`` attained by ``witness``, ``upper`` sound, and a status. A certificate whose
    bounds are not finite (``non_finite``) is always ``unknown`` with reason ``NON_FINITE``,
    whatever status it was built with: no code path can turn a NaN into ``optimal``."""

    lower: float
    upper: float
    status: str
    witness: WitnessRecord | None
    time_s: float
    engine: str
    reason: str | None = None

    def __post_init__(self) -> None:
        if non_finite(float(self.lower), float(self.upper)):
            object.__setattr__(self, "status", "unknown")
            object.__setattr__(self, "reason", NON_FINITE)

    @property
    def gap(self) -> float:
        return self.upper - self.lower

    def to_dict(self, params_file: str | None = None) -> dict[str, Any]:
        out = {
            "lower": self.lower,
            "upper": self.upper,
            "gap": self.gap,
            "status": self.status,
            "witness": None if self.witness is None else self.witness.to_dict(params_file),
            "time_s": self.time_s,
            "engine": self.engine,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class QueryResult:
    """A query's overall certificate, per-output certificates, and the spec echoed back."""

    query: str
    overall: Certificate
    per_output: tuple[Certificate, ...] = ()
    spec: dict[str, Any] = field(default_factory=dict)
    params_file: str | None = None
    #: Files written for the overall witness (its replayable ONNX model), by the CLI.
    witness_files: dict[str, Any] = field(default_factory=dict)
    #: One .npz per per-output witness (its own x and parameters), by the CLI.
    per_output_files: tuple[str | None, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {"query": self.query, **self.overall.to_dict(self.params_file), "spec": self.spec}
        if self.witness_files and isinstance(out.get("witness"), dict):
            out["witness"].update(self.witness_files)
        if len(self.per_output) > 1:
            files = self.per_output_files
            out["per_output"] = [
                c.to_dict(files[k] if k < len(files) else None)
                for k, c in enumerate(self.per_output)
            ]
        return out

    def to_text(self) -> str:
        c = self.overall
        why = "" if c.reason is None else f" ({c.reason})"
        lines = [f"{self.query}: status {c.status}{why}, engine {c.engine}, {c.time_s:.3f} s"]
        lines.append(f"  lower {c.lower:.8g}   upper {c.upper:.8g}   gap {c.gap:.3g}")
        if c.witness is not None:
            x = np.array2string(c.witness.x.ravel()[:8], precision=6, separator=", ")
            lines.append(f"  witness x = {x}{' ...' if c.witness.x.size > 8 else ''}")
        if len(self.per_output) > 1:
            lines.append(f"  {'output':>6} {'lower':>14} {'upper':>14}")
            for k, pc in enumerate(self.per_output):
                lines.append(f"  {k:>6} {pc.lower:>14.8g} {pc.upper:>14.8g}")
        return "\n".join(lines)
