"""``quantcert bitwidth``: the fewest bits per tensor kind and per layer that provably meet a
target on the data, with what one bit fewer does, and a mixed assignment.

Every answer is ``{bits, certificate: {lower, upper, status}, below: {bits, status, ...},
measured}``:

- ``bits``: the smallest width on the family's ladder whose setting is ``verified``
  (``targets.judge``); the ladder is searched by bisection, assuming that more bits never
  hurt (a wider format's box lies inside a narrower one's: the radii shrink);
- ``below``: the same setting one rung lower, judged: ``falsified`` with the witness that
  breaks the target (the real rounding, or one image's setting for ``noflip``), else
  ``unknown``, said so;
- ``measured``: the accuracy of the model really quantized at ``bits``.

Searched: ``uniform`` (every chosen kind at b bits), per layer (``layers[i].weights`` and
``layers[i].activations``, the layer's input tensor: that tensor alone at b bits, the rest
float; a layer reading the network input has that answer under ``input``), ``input`` alone,
and ``mixed``: per-layer weight widths chosen by an exact integer program
(``scipy.optimize.milp``) minimising the weight bits (model size) subject to the per-layer
certified accuracy drops summing to at most the target; the assignment is then certified
jointly, and only that joint certificate counts. When it fails, the drop budget is halved
and the program solved again.

The peer: the empirical per-layer search engineers run today (AIMET QuantAnalyzer, AMP
phase 1): the smallest width whose *measured* drop meets the target. Since measured accuracy
is never below the certified one, certified bits are never below the empirical ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from quantcert.analyses.precision.accuracy import accuracy
from quantcert.analyses.precision.scheme import Scheme, logit_network
from quantcert.analyses.precision.targets import Judgement, Target, judge
from quantcert.errors import InputError
from quantcert.formats import parse_format
from quantcert.formats.base import Format
from quantcert.network import Network
from quantcert.ops import Affine, Conv
from quantcert.runs import Store, StudyKey, canonical_json

INT_LADDER = tuple(range(2, 17))
FLOAT_LADDER = ("fp4-e2m1", "fp6-e3m2", "fp8-e4m3", "bf16", "fp16")
_FLOAT_BITS = {"fp4-e2m1": 4, "fp6-e3m2": 6, "fp8-e4m3": 8, "bf16": 16, "fp16": 16}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Family:
    """A format family's ladder: rung -> (width in bits, weight format, activation format)."""

    name: str
    granularity: str  # "per-channel", "per-tensor" or "group=G"

    def rungs(self) -> tuple[int, ...]:
        return INT_LADDER if self.name == "int" else tuple(range(len(FLOAT_LADDER)))

    def bits(self, rung: int) -> int:
        return rung if self.name == "int" else _FLOAT_BITS[FLOAT_LADDER[rung]]

    def weight(self, rung: int) -> Format:
        if self.name == "int":
            g = "" if self.granularity == "per-tensor" else f":{self.granularity}"
            return parse_format(f"int{rung}{g}")
        return parse_format(FLOAT_LADDER[rung])

    def activation(self, rung: int) -> Format:
        if self.name == "int":
            return parse_format(f"uint{rung}:asym")
        return parse_format(FLOAT_LADDER[rung])

    def label(self, rung: int) -> str:
        return f"int{rung}" if self.name == "int" else FLOAT_LADDER[rung]


def family(name: str, granularity: str) -> Family:
    if name not in ("int", "float"):
        raise InputError(f"--family {name!r}: use int or float (fixed and mx are not offered yet)")
    if (
        name == "int"
        and granularity not in ("per-tensor", "per-channel")
        and not (granularity.startswith("group=") and granularity[6:].isdigit())
    ):
        raise InputError(f"--granularity {granularity!r}: use per-tensor, per-channel or group=G")
    return Family(name, granularity)


@dataclass
class Study:
    """The data and the question, shared by every judged setting."""

    net: Network
    points: np.ndarray
    labels: np.ndarray
    target: Target
    fam: Family
    float_accuracy: float
    progress: Progress | None = None
    judged: int = 0
    #: Resume: each judged setting is recorded here as it finishes (``runs.Store``).
    store: Store | None = None
    study_key: StudyKey | None = None
    reused: int = 0

    def judge(self, scheme: Scheme, what: str) -> Judgement:
        unit = canonical_json(scheme.describe())
        if self.store is not None and self.study_key is not None:
            done = self.store.done(self.study_key)
            if unit in done:
                self.reused += 1
                return Judgement(**done[unit])
        steps = 20 if self.target.kind == "noflip" else 0  # the witness of noflip is one image
        res = accuracy(self.net, self.points, self.labels, scheme, attack_steps=steps)
        self.judged += 1
        if self.progress is not None:
            self.progress(f"{what}: certified {res.summary()['certified_accuracy']:.4f}")
        out = judge(res, self.target, self.float_accuracy)
        if self.store is not None and self.study_key is not None:
            self.store.record(self.study_key, unit, dataclasses.asdict(out), out.time_s)
        return out


def layers(net: Network) -> list[str]:
    """The weight layers (Gemm/MatMul/Conv nodes), in the model's order."""
    return [n.name for n in logit_network(net).nodes if isinstance(n.op, Affine | Conv)]


def weight_counts(net: Network) -> dict[str, int]:
    return {
        n.name: int(n.op.params["weight"].numel())
        for n in logit_network(net).nodes
        if isinstance(n.op, Affine | Conv)
    }


def _answer(
    study: Study, scheme_at: Callable[[int], Scheme], what: str
) -> tuple[dict[str, object], dict[int, Judgement]]:
    """Bisect the ladder for the lowest verified rung; judge one rung below it."""
    rungs = study.fam.rungs()
    seen: dict[int, Judgement] = {}

    def at(i: int) -> Judgement:
        if i not in seen:
            seen[i] = study.judge(scheme_at(rungs[i]), f"{what} {study.fam.label(rungs[i])}")
        return seen[i]

    lo, hi = 0, len(rungs) - 1
    if at(hi).status != "verified":
        best = at(hi)
        return {
            "bits": None,
            "status": "infeasible",
            "best_tried": _entry(study, rungs[hi], best),
        }, {rungs[k]: v for k, v in seen.items()}
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid).status == "verified":
            hi = mid
        else:
            lo = mid + 1
    out = _entry(study, rungs[hi], at(hi))
    if hi > 0:
        below = at(hi - 1)
        out["below"] = {
            "bits": study.fam.bits(rungs[hi - 1]),
            "format": study.fam.label(rungs[hi - 1]),
            "status": "falsified" if below.status == "falsified" else "unknown",
            "value": below.measured,
            "witness": below.witness,
            "reason": None
            if below.status == "falsified"
            else "the bounds do not decide one bit lower and no concrete rounding broke "
            "the target there",
        }
    else:
        out["below"] = {"bits": None, "status": "none", "reason": "the ladder's lowest rung"}
    return out, {rungs[k]: v for k, v in seen.items()}


def _entry(study: Study, rung: int, j: Judgement) -> dict[str, object]:
    return {
        "bits": study.fam.bits(rung),
        "format": study.fam.label(rung),
        "certificate": j.certificate(),
        "measured": j.measured,
    }


def empirical_bits(study: Study, layer: str) -> int | None:
    """The peer: quantize ``layer``'s weights alone with the real quantizer, rung by rung
    from the bottom, measure accuracy on the data, and take the first width whose measured
    drop meets the target (AIMET QuantAnalyzer / AMP phase 1); ``None`` if none does."""
    import torch

    from quantcert.formats.apply import quantized_parameters

    base = logit_network(study.net)
    x = torch.as_tensor(study.points).reshape(-1, *base.input_shape)
    y = torch.as_tensor(study.labels)
    for rung in study.fam.rungs():
        params = quantized_parameters(base, {layer: study.fam.weight(rung)})
        with torch.no_grad():
            z = base(x, params).flatten(1)
        pred = (z[:, 0] >= 0).long() if z.shape[1] == 1 else z.argmax(1)
        measured = float((pred == y).double().mean())
        if study.float_accuracy - measured <= study.target.drop + 1e-12:
            return study.fam.bits(rung)
    return None


def _data_hash(points: np.ndarray, labels: np.ndarray) -> str:
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(points, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def _layer_weights(fam: Family, name: str) -> Callable[[int], Scheme]:
    return lambda r: Scheme({name: fam.weight(r)})


def _layer_activations(fam: Family, source: str) -> Callable[[int], Scheme]:
    return lambda r: Scheme({}, {}, fam.activation(r), None, frozenset({source}))


def layer_inputs(net: Network) -> dict[str, str | None]:
    """Per weight layer, the node whose output it reads as its activation input (``None``
    when it reads the network input, possibly reshaped): the tensor ``--activations``
    quantizes for that layer."""
    from quantcert.formats.activations import sites

    base = logit_network(net)
    probe = parse_format("uint8:asym")
    quantized = {s.source for s in sites(base, probe, None)}
    out: dict[str, str | None] = {}
    for node in base.nodes:
        if isinstance(node.op, Affine | Conv):
            src = node.inputs[0]
            out[node.name] = src if src in quantized else None
    return out


def bitwidth(
    net: Network,
    points: np.ndarray,
    labels: np.ndarray,
    target: Target,
    fam: Family,
    kinds: tuple[str, ...] = ("weights", "activations"),
    mixed: bool = True,
    progress: Progress | None = None,
    store: Store | None = None,
    model_id: str = "",
) -> dict[str, object]:
    """The bit-width study (see the module docstring); a JSON-ready dict. With ``store``,
    every judged setting is recorded as it finishes and reused by the same study again."""
    from quantcert.analyses.precision.mixed import mixed_assignment

    start = time.perf_counter()
    import torch

    base = logit_network(net)
    with torch.no_grad():
        pred = base(torch.as_tensor(points).reshape(-1, *base.input_shape)).flatten(1)
    float_pred = (pred[:, 0] >= 0).long().numpy() if pred.shape[1] == 1 else pred.argmax(1).numpy()
    use = float_pred if target.kind == "noflip" else np.asarray(labels)
    float_acc = float((float_pred == use).mean())
    study = Study(net, points, use, target, fam, float_acc, progress)
    if store is not None:
        study.store = store
        study.study_key = StudyKey.of(
            model_id,
            {"query": "bitwidth", "target": target.describe(), "data": _data_hash(points, use)},
        )
    names = layers(net)
    reads = layer_inputs(net)

    def uniform(r: int) -> Scheme:
        w = {"*": fam.weight(r)} if "weights" in kinds else {}
        a = fam.activation(r) if "activations" in kinds else None
        i = fam.activation(r) if "input" in kinds else None
        return Scheme(w, {}, a, i)

    result: dict[str, object] = {
        "query": "bitwidth",
        "target": target.describe(),
        "family": fam.name,
        "granularity": fam.granularity,
        "kinds": list(kinds),
        "images": len(use),
        "float_accuracy": float_acc,
    }
    result["uniform"], ladder = _answer(study, uniform, "uniform")
    total = sum(weight_counts(net).values())
    result["uniform_ladder"] = [
        {
            "bits": fam.bits(r),
            "weight_bits": total * fam.bits(r),
            "certified_drop": float_acc - j.certified,
            "measured_drop": float_acc - j.measured,
            "status": j.status,
        }
        for r, j in sorted(ladder.items())
    ]
    result["input"], _ = _answer(
        study, lambda r: Scheme({}, {}, None, fam.activation(r)), "input alone"
    )
    per_layer: list[dict[str, object]] = []
    per_layer_seen: dict[str, dict[int, Judgement]] = {}
    for name in names:
        entry: dict[str, object] = {"name": name, "weights_count": weight_counts(net)[name]}
        ans, seen = _answer(study, _layer_weights(fam, name), f"{name} weights")
        entry["weights"] = ans
        entry["weights_empirical_bits"] = empirical_bits(study, name)
        per_layer_seen[name] = seen
        source = reads[name]
        if source is None:
            entry["activations"] = {"bits": None, "status": "none", "reason": "reads the input"}
        else:
            entry["activations"], _ = _answer(
                study, _layer_activations(fam, source), f"{name} activations"
            )
        per_layer.append(entry)
    result["layers"] = per_layer
    if mixed and fam.name == "int" and "weights" in kinds:
        u = result["uniform"]
        rung = u.get("bits") if isinstance(u, dict) else None
        result["mixed"] = mixed_assignment(
            study,
            names,
            per_layer_seen,
            weight_counts(net),
            rung if isinstance(rung, int) else None,
        )
    result["judged_settings"] = study.judged
    result["reused_settings"] = study.reused
    result["time_s"] = time.perf_counter() - start
    return result
