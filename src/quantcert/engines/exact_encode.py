"""Literal encoding of a small ``Network`` as a SCIP model (seed 000, Eqs. 6-13).

Two copies of the network share the input variables ``x``: the *perturbed* copy, whose
perturbed parameters are variables in ``[theta0 - D, theta0 + D]``, and the *nominal* copy with
``theta0`` fixed. Each node output element gets one variable, bounded by the IR's sound interval
transfer (``Op.interval``), and one defining constraint:

- Affine: ``y = W z + b``; a perturbed ``W_oi`` times a variable ``z_i`` is a bilinear term.
- LeakyReLU(a) (ReLU is a = 0): ``y = a z + (1 - a) r`` with ``r = max(0, z)`` by big-M on the
  interval bounds ``l < 0 < u`` of ``z`` and one binary; stable units need no binary.
- Sigmoid: ``y = 1 / (1 + exp(-z))``; Tanh: ``y = 2 / (1 + exp(-2 z)) - 1``.
- Scale: ``y = scale * z + shift``; Sum: ``y = sum_j c_j z_j``; Identity and Reshape reuse their
  input's variables (a reshape keeps the row-major order of the flat vector).

SCIP solves the result by spatial branch and bound with a proven global dual bound. Its
answers hold up to its tolerances (``numerics/feastol``); ``stated_margin`` turns that tolerance
into a margin on the objective (see its docstring).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyscipopt import Model, Variable, exp, quicksum

from quantcert.errors import InputError
from quantcert.network import INPUT, Network, Node
from quantcert.ops import (
    DTYPE,
    Affine,
    Box,
    Identity,
    LeakyReLU,
    Op,
    Reshape,
    Scale,
    Sigmoid,
    Sum,
    Tanh,
)

Term = Variable | float
Bounds = tuple[np.ndarray, np.ndarray]  # flat (lo, hi) of one node's output
Radius = Mapping[str, np.ndarray]  # "<node>.<param>" -> radius, shaped like the parameter

#: Supported operations; anything else is refused with an ``InputError``.
SUPPORTED: tuple[type[Op], ...] = (Affine, LeakyReLU, Identity, Sigmoid, Tanh, Scale, Reshape, Sum)
#: Largest number of encoded scalar quantities; the exact engine is for small networks.
MAX_UNITS = 20_000
#: Auxiliary-variable bounds are widened by this relative amount so that SCIP's tolerances
#: never cut a true point off at a sound but tight interval bound.
WIDEN = 1e-7
#: The margin counts every tolerance-satisfied equation this many times over (see
#: ``stated_margin``).
MARGIN_FACTOR = 10.0


@dataclass
class Encoding:
    """A SCIP model of both copies; ``perturbed`` and ``nominal`` are the chosen output."""

    model: Model
    x: list[Variable]
    params: dict[str, list[Term]]  # every parameter tensor of the perturbed copy, flat
    perturbed: Variable
    nominal: Variable
    out_lo: float  # hull of both copies' output bounds
    out_hi: float
    margin: float  # stated objective margin for SCIP's tolerance, per unit objective weight


def check_network(net: Network) -> None:
    """Refuse networks the literal encoding does not cover or that are too large."""
    shapes = net.shapes()
    units = sum(int(np.prod(s)) for s in shapes.values()) + net.num_params()
    if units > MAX_UNITS:
        raise InputError(f"{units} encoded quantities exceed the exact engine's {MAX_UNITS}")
    for node in net.nodes:
        if not isinstance(node.op, SUPPORTED):
            names = ", ".join(t.__name__ for t in SUPPORTED)
            raise InputError(
                f"the exact engine cannot encode {node.op.describe()} (node {node.name!r}); "
                f"it supports {names}"
            )


def node_radius(radius: Radius, node: Node) -> dict[str, np.ndarray]:
    """The radii of one node's parameters, keyed by the op's parameter name."""
    own = {f"{node.name}.{p}": p for p in node.op.params}
    return {own[k]: np.asarray(v, dtype=np.float64) for k, v in radius.items() if k in own}


def intervals(net: Network, lo: np.ndarray, hi: np.ndarray, radius: Radius) -> dict[str, Bounds]:
    """Sound flat output bounds of every node (and ``INPUT``) by the IR's interval transfer."""
    shape = (1, *net.input_shape)
    boxes = {
        INPUT: Box(
            torch.tensor(lo, dtype=DTYPE).reshape(shape),
            torch.tensor(hi, dtype=DTYPE).reshape(shape),
        )
    }
    for node in net.nodes:
        rad = {k: torch.tensor(v, dtype=DTYPE) for k, v in node_radius(radius, node).items()}
        boxes[node.name] = node.op.interval([boxes[s] for s in node.inputs], rad)
    return {
        k: (b.lo.reshape(-1).numpy().copy(), b.hi.reshape(-1).numpy().copy())
        for k, b in boxes.items()
    }


def _widen(lo: float, hi: float) -> tuple[float, float]:
    pad = WIDEN * (1.0 + max(abs(lo), abs(hi)))
    return lo - pad, hi + pad


def _var(model: Model, name: str, lo: float, hi: float, vtype: str = "C") -> Variable:
    lb, ub = _widen(lo, hi)
    return model.addVar(name=name, vtype=vtype, lb=lb, ub=ub)


def _param_terms(model: Model, net: Network, radius: Radius, tag: str) -> dict[str, list[Term]]:
    """Flat parameter terms: a variable where the radius is positive, else the constant."""
    out: dict[str, list[Term]] = {}
    for name, value in net.param_tensors().items():
        theta = value.detach().to(DTYPE).reshape(-1).numpy()
        rad = np.broadcast_to(radius.get(name, 0.0), value.shape).reshape(-1)
        out[name] = [
            model.addVar(name=f"{tag}{name}[{k}]", lb=t - r, ub=t + r) if r > 0 else float(t)
            for k, (t, r) in enumerate(zip(theta, rad, strict=True))
        ]
    return out


class _Copy:
    """Builds one copy of the network over shared input variables."""

    def __init__(self, model: Model, net: Network, radius: Radius, tag: str) -> None:
        self.model, self.net, self.tag = model, net, tag
        self.params = _param_terms(model, net, radius, tag)

    def build(self, x: list[Variable], bounds: dict[str, Bounds]) -> dict[str, list[Term]]:
        values: dict[str, list[Term]] = {INPUT: list(x)}
        for node in self.net.nodes:
            ins = [values[s] for s in node.inputs]
            in_bounds = [bounds[s] for s in node.inputs]
            values[node.name] = self._node(node, ins, in_bounds, bounds[node.name])
        return values

    def _new(self, name: str, k: int, lo: float, hi: float, vtype: str = "C") -> Variable:
        return _var(self.model, f"{self.tag}{name}[{k}]", lo, hi, vtype)

    def _eq(self, name: str, k: int, expr: object, out: Bounds) -> Variable:
        """A variable for element ``k`` of ``name``, constrained to equal ``expr``."""
        y = self._new(name, k, float(out[0][k]), float(out[1][k]))
        self.model.addCons(y == expr)
        return y

    def _define(self, name: str, exprs: list[object], out: Bounds) -> list[Term]:
        return [self._eq(name, k, expr, out) for k, expr in enumerate(exprs)]

    def _node(
        self, node: Node, ins: list[list[Term]], in_b: list[Bounds], out: Bounds
    ) -> list[Term]:
        op, name = node.op, node.name
        if isinstance(op, Identity | Reshape):
            return ins[0]
        if isinstance(op, Affine):
            return self._define(name, self._affine(node, ins[0]), out)
        if isinstance(op, LeakyReLU):
            return self._leaky(name, op.slope, ins[0], in_b[0], out)
        if isinstance(op, Sigmoid):
            return self._define(name, [1 / (1 + exp(-z)) for z in ins[0]], out)
        if isinstance(op, Tanh):
            return self._define(name, [2 / (1 + exp(-2 * z)) - 1 for z in ins[0]], out)
        if isinstance(op, Scale):
            shape = (1, *self.net.shapes()[node.inputs[0]])
            scale = (torch.ones(shape, dtype=DTYPE) * op.scale).reshape(-1).tolist()
            shift = (torch.zeros(shape, dtype=DTYPE) + op.shift).reshape(-1).tolist()
            return self._define(
                name, [s * z + c for z, s, c in zip(ins[0], scale, shift, strict=True)], out
            )
        if isinstance(op, Sum):
            cols = zip(*ins, strict=True)
            return self._define(
                name,
                [quicksum(c * z for c, z in zip(op.coeffs, col, strict=True)) for col in cols],
                out,
            )
        raise InputError(f"the exact engine cannot encode {op.describe()}")

    def _affine(self, node: Node, z: list[Term]) -> list[object]:
        n_out, n_in = node.op.params["weight"].shape
        if len(z) != n_in:
            raise InputError(f"node {node.name!r} reads {len(z)} values, expects {n_in}")
        w = self.params[f"{node.name}.weight"]
        b = self.params.get(f"{node.name}.bias", [0.0] * n_out)
        return [quicksum(w[o * n_in + i] * z[i] for i in range(n_in)) + b[o] for o in range(n_out)]

    def _leaky(self, name: str, slope: float, z: list[Term], zb: Bounds, out: Bounds) -> list[Term]:
        ys: list[Term] = []
        for k, zk in enumerate(z):
            lo, hi = float(zb[0][k]), float(zb[1][k])
            if lo >= 0 or hi <= 0:  # stable: a linear piece
                ys.append(self._eq(name, k, zk if lo >= 0 else slope * zk, out))
                continue
            lo, hi = _widen(lo, hi)  # big-M constants as wide as z's variable
            r = self._new(name + ".relu", k, 0.0, hi)
            on = self.model.addVar(name=f"{self.tag}{name}.on[{k}]", vtype="B")
            self.model.addCons(r >= zk)
            self.model.addCons(r <= zk - lo * (1 - on))
            self.model.addCons(r <= hi * on)
            ys.append(self._eq(name, k, slope * zk + (1 - slope) * r, out))
        return ys


def encode(
    net: Network, radius: Radius, lo: np.ndarray, hi: np.ndarray, output: int, feastol: float
) -> Encoding:
    """Both copies of ``net`` over the input box ``[lo, hi]`` (``lo == hi``: a point)."""
    check_network(net)
    model = Model("quantcert-exact")
    model.hideOutput()
    # The input box itself is not widened.
    x = [
        model.addVar(name=f"x[{k}]", lb=float(a), ub=float(b))
        for k, (a, b) in enumerate(zip(lo, hi, strict=True))
    ]
    bounds_p, bounds_n = intervals(net, lo, hi, radius), intervals(net, lo, hi, {})
    pert, nom = _Copy(model, net, radius, "p:"), _Copy(model, net, {}, "n:")
    out_p = pert.build(x, bounds_p)[net.output_node][output]
    out_n = nom.build(x, bounds_n)[net.output_node][output]
    if not isinstance(out_p, Variable) or not isinstance(out_n, Variable):
        raise InputError("the network's output does not depend on its input")
    out_lo = min(bounds_p[net.output_node][0][output], bounds_n[net.output_node][0][output])
    out_hi = max(bounds_p[net.output_node][1][output], bounds_n[net.output_node][1][output])
    sens = stated_margin(net, radius, bounds_p, output) + stated_margin(net, {}, bounds_n, output)
    margin = MARGIN_FACTOR * feastol * sens
    return Encoding(model, x, pert.params, out_p, out_n, float(out_lo), float(out_hi), margin)


def _lip_inputs(
    node: Node, l_out: np.ndarray, radius: Radius, shapes: dict[str, tuple[int, ...]]
) -> list[np.ndarray]:
    """Per input of ``node``: sensitivity weights ``L_in`` with ``|d out| <= L_in . |d in|``."""
    op = node.op
    if isinstance(op, Affine):
        w = op.params["weight"].detach().numpy()
        d = np.broadcast_to(node_radius(radius, node).get("weight", 0.0), w.shape)
        return [(np.abs(w) + d).T @ l_out]
    if isinstance(op, Sum):
        return [abs(c) * l_out for c in op.coeffs]
    if isinstance(op, LeakyReLU):
        return [op.lipschitz * l_out]
    if isinstance(op, Scale):
        shape = (1, *shapes[node.inputs[0]])
        scale = (torch.ones(shape, dtype=DTYPE) * op.scale).reshape(-1).abs().numpy()
        return [scale * l_out]
    return [(0.25 if isinstance(op, Sigmoid) else 1.0) * l_out]


def stated_margin(net: Network, radius: Radius, bounds: dict[str, Bounds], output: int) -> float:
    """Sum over every encoded equation and bounded variable of (its effect on the output) times
    ``max(1, |its magnitude|)``.

    SCIP accepts a constraint when it holds to ``feastol`` (relative to ``max(1, |value|)``) and
    a variable bound likewise. An error ``e`` at a node moves the output by at most ``L * e``,
    ``L`` the node's Lipschitz weight found by one backward pass (Affine ``|W0| + D``, Sigmoid
    1/4, every other op 1 or its coefficient). ``encode`` multiplies the sum by
    ``MARGIN_FACTOR * feastol``. SCIP's LP is floating point without safe rounding, so this is a
    stated margin, not a proof.
    """
    shapes = net.shapes()
    lip = {k: np.zeros(v[0].size) for k, v in bounds.items()}
    lip[net.output_node][output] = 1.0
    total = 0.0
    for node in reversed(net.nodes):
        l_out = lip[node.name]
        mag = np.maximum(
            1.0, np.maximum(np.abs(bounds[node.name][0]), np.abs(bounds[node.name][1]))
        )
        if not isinstance(node.op, Identity | Reshape):
            total += (3.0 if isinstance(node.op, LeakyReLU) else 1.0) * float(l_out @ mag)
        for src, l_in in zip(node.inputs, _lip_inputs(node, l_out, radius, shapes), strict=True):
            lip[src] = lip[src] + l_in
        if isinstance(node.op, Affine):
            total += _param_sensitivity(node, l_out, radius, bounds[node.inputs[0]])
    lo, hi = bounds[INPUT]
    return total + float(lip[INPUT] @ np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi))))


def _param_sensitivity(node: Node, l_out: np.ndarray, radius: Radius, inb: Bounds) -> float:
    """Effect of perturbed weights and biases missing their bounds by ``max(1, |theta|)``."""
    rad = node_radius(radius, node)
    total = 0.0
    z = np.maximum(np.abs(inb[0]), np.abs(inb[1]))
    for pname, value in node.op.params.items():
        if pname not in rad:
            continue
        theta = value.detach().numpy()
        d = np.broadcast_to(rad[pname], theta.shape)
        mag = np.where(d > 0, np.maximum(1.0, np.abs(theta) + d), 0.0)
        scale = np.outer(l_out, z) if pname == "weight" else l_out
        total += float((mag * scale).sum())
    return total


def parse_box(net: Network, point: Any, box: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 ``(lo, hi)`` from exactly one of a point and a box (``(lo, hi)`` or Box)."""
    if (point is None) == (box is None):
        raise InputError("give exactly one of a point and a box")
    if isinstance(box, Box):
        box = (box.lo, box.hi)
    ends = (point, point) if box is None else box
    lo, hi = (np.asarray(e, dtype=np.float64).reshape(-1) for e in ends)
    n_in = int(np.prod(net.input_shape))
    if lo.size != n_in or hi.size != n_in or not np.all(lo <= hi):
        raise InputError(f"the input box must have {n_in} values per end with lo <= hi")
    return lo, hi


def parse_radius(net: Network, radius: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Radius arrays shaped like their parameters; unknown names and bad values refused."""
    params = net.param_tensors()
    out: dict[str, np.ndarray] = {}
    for name, r in radius.items():
        if name not in params:
            raise InputError(f"radius given for unknown parameter {name!r}")
        arr = np.broadcast_to(np.asarray(r, dtype=np.float64), params[name].shape).copy()
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise InputError(f"radius of {name!r} must be finite and >= 0")
        out[name] = arr
    return out


def theta0(net: Network, names: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The nominal values of the named parameter tensors as float64 arrays."""
    tensors = net.param_tensors()
    return {k: tensors[k].detach().to(DTYPE).numpy() for k in names}


# ----------------------------------------------------------------------------- dReal (optional)
# UNTESTED: dReal (the seed's solver) does not install on Python 3.11 here. Offered only when
# ``import dreal`` works; kept minimal.

try:
    import dreal
except ImportError:  # pragma: no cover - the normal case
    dreal = None

#: dReal's delta (delta-completeness and delta-optimality of ``Minimize``).
DREAL_DELTA = 1e-6


def dreal_available() -> bool:
    """Whether the optional dReal backend can be used."""
    return dreal is not None


def expression_forward(
    net: Network, x: list[Any], params: Mapping[str, list[Any]], lib: Any
) -> list[Any]:
    """The forward pass over symbolic expressions of a solver library ``lib`` with ``exp``,
    ``tanh`` and ``Max`` (dReal). ``params`` replaces theta0 by name (flat lists). Used only by
    the optional, untested dReal path."""
    values: dict[str, list[Any]] = {INPUT: list(x)}
    for node in net.nodes:
        z, op = values[node.inputs[0]], node.op
        if isinstance(op, Affine):
            n_out, n_in = op.params["weight"].shape
            w = params.get(f"{node.name}.weight", op.params["weight"].reshape(-1).tolist())
            b = params.get(f"{node.name}.bias", op.bias.tolist())
            out = [sum((w[o * n_in + i] * z[i] for i in range(n_in)), b[o]) for o in range(n_out)]
        elif isinstance(op, LeakyReLU):
            # max(z, a z) for a <= 1 (convex); min(z, a z) for a > 1 (concave).
            pick = lib.Max if op.slope <= 1 else lib.Min
            out = [pick(v, op.slope * v) for v in z]
        elif isinstance(op, Sigmoid):
            out = [1 / (1 + lib.exp(-v)) for v in z]
        elif isinstance(op, Tanh):
            out = [lib.tanh(v) for v in z]
        elif isinstance(op, Identity | Reshape):
            out = z
        else:
            raise InputError(f"the dReal path cannot encode {op.describe()}")
        values[node.name] = out
    return values[net.output_node]


def dreal_witness(
    net: Network, radius: Radius, lo: np.ndarray, hi: np.ndarray, output: int, delta: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # pragma: no cover
    """UNTESTED. dReal's delta-optimal ``argmax (f_p - f_n)^2`` over the boxes (box midpoints)."""
    if dreal is None:
        raise InputError("dReal is not installed; use the SCIP engine")
    theta = {k: v.reshape(-1) for k, v in theta0(net, radius).items()}
    xs = [dreal.Variable(f"x{k}") for k in range(lo.size)]
    pv = {k: [dreal.Variable(f"{k}[{i}]") for i in range(v.size)] for k, v in theta.items()}
    names = xs + [v for k in pv for v in pv[k]]
    lbs = np.concatenate([lo, *(theta[k] - radius[k].reshape(-1) for k in pv)])
    ubs = np.concatenate([hi, *(theta[k] + radius[k].reshape(-1) for k in pv)])
    cons = [c for v, a, b in zip(names, lbs, ubs, strict=True) for c in (v >= a, v <= b)]
    fp, fn = (expression_forward(net, xs, p, dreal)[output] for p in (pv, {}))
    found = dreal.Minimize(-(fp - fn) * (fp - fn), dreal.And(*cons), delta)
    if found is None:
        raise InputError("dReal found no solution")
    mid = {k: np.array([found[v].mid() for v in vs]) for k, vs in pv.items()}
    return np.array([found[v].mid() for v in xs]), {k: mid[k].reshape(radius[k].shape) for k in pv}
