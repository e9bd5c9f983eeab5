"""Typed results. Every estimate is a certificate: ``lower`` attained by a witness that was
re-evaluated in float64, a sound ``upper``, and a status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Witness parameter tensors up to this many values are written inline in JSON.
INLINE_PARAMS = 2000


@dataclass(frozen=True)
class WitnessRecord:
    """A concrete input and parameter setting; ``params`` holds theta - theta0 per tensor."""

    x: np.ndarray
    param_offsets: dict[str, np.ndarray]
    value: float

    def to_dict(self, params_file: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"x": self.x.ravel().tolist(), "value": self.value}
        total = sum(a.size for a in self.param_offsets.values())
        if params_file is not None and total > INLINE_PARAMS:
            out["params_file"] = params_file
            out["params_note"] = "theta - theta0 per tensor, numpy .npz"
        else:
            out["param_offsets"] = {k: v.tolist() for k, v in self.param_offsets.items()}
        return out


@dataclass(frozen=True)
class Certificate:
    lower: float
    upper: float
    status: str
    witness: WitnessRecord | None
    time_s: float
    engine: str

    @property
    def gap(self) -> float:
        return self.upper - self.lower

    def to_dict(self, params_file: str | None = None) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "gap": self.gap,
            "status": self.status,
            "witness": None if self.witness is None else self.witness.to_dict(params_file),
            "time_s": self.time_s,
            "engine": self.engine,
        }


@dataclass(frozen=True)
class QueryResult:
    """A query's overall certificate, per-output certificates, and the spec echoed back."""

    query: str
    overall: Certificate
    per_output: tuple[Certificate, ...] = ()
    spec: dict[str, Any] = field(default_factory=dict)
    params_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"query": self.query, **self.overall.to_dict(self.params_file), "spec": self.spec}
        if len(self.per_output) > 1:
            out["per_output"] = [c.to_dict(self.params_file) for c in self.per_output]
        return out

    def to_text(self) -> str:
        c = self.overall
        lines = [f"{self.query}: status {c.status}, engine {c.engine}, {c.time_s:.3f} s"]
        lines.append(f"  lower {c.lower:.8g}   upper {c.upper:.8g}   gap {c.gap:.3g}")
        if c.witness is not None:
            x = np.array2string(c.witness.x.ravel()[:8], precision=6, separator=", ")
            lines.append(f"  witness x = {x}{' ...' if c.witness.x.size > 8 else ''}")
        if len(self.per_output) > 1:
            lines.append(f"  {'output':>6} {'lower':>14} {'upper':>14}")
            for k, pc in enumerate(self.per_output):
                lines.append(f"  {k:>6} {pc.lower:>14.8g} {pc.upper:>14.8g}")
        return "\n".join(lines)
