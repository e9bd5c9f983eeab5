"""Sigma (seed 000 Def. 5, Eq. 13) from the bound engine, against independent references.

Cat model ``sigmoid(z)``, ``z = c0 + c1 H + c2 W``: at a fixed ``(H, W)`` the perturbed logit
covers exactly ``[z - t, z + t]``, ``t = delta (1 + |H| + |W|)`` (H, W > 0 on the domain). So
``x`` can flip down ("above") iff ``0 <= z < t``, up ("below") iff ``-t <= z < 0``. Sigma above
is the sup of ``sigmoid(z) - 1/2`` over the polygon ``box & {z >= 0} & {z <= t}``: a linear
program in (H, W) whose optimum is at a vertex: a box corner, a line meeting a box edge or two
lines meeting. We enumerate them (analytic) and check with a dense grid.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from quantcert.analyses.epsilon import Budget, input_box
from quantcert.analyses.sigma import SigmaResult, sigma, sigma_verify
from quantcert.cases.builtin import CAT_COEFFS, case_domain, load_case
from quantcert.engines.perturbation import absolute
from quantcert.errors import InputError
from quantcert.network import INPUT, Network, Node
from quantcert.ops import DTYPE, Affine, Softmax
from quantcert.report.results import Certificate

C0, C1, C2 = CAT_COEFFS
GAP = 1e-6
Line = tuple[float, float, float]  # a*H + b*W + c (>= 0 inside)


def _sig(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def _lines(side: str, delta: float) -> list[Line]:
    """The polygon's two half-planes besides the box."""
    if side == "above":  # z >= 0 and z - t <= 0
        return [(C1, C2, C0), (-(C1 - delta), -(C2 - delta), delta - C0)]
    return [(-C1, -C2, -C0), (C1 + delta, C2 + delta, C0 + delta)]  # z <= 0, z + t >= 0


def _vertices(lines: list[Line], lo: np.ndarray, hi: np.ndarray) -> list[tuple[float, float]]:
    pts = [(h, w) for h in (lo[0], hi[0]) for w in (lo[1], hi[1])]
    for a, b, c in lines:
        pts += [(h, -(a * h + c) / b) for h in (lo[0], hi[0])]
        pts += [(-(b * w + c) / a, w) for w in (lo[1], hi[1])]
    for (a1, b1, c1), (a2, b2, c2) in itertools.combinations(lines, 2):
        h, w = np.linalg.solve([[a1, b1], [a2, b2]], [-c1, -c2])
        pts.append((float(h), float(w)))
    tol = 1e-9
    return [
        (h, w)
        for h, w in pts
        if lo[0] - tol <= h <= hi[0] + tol
        and lo[1] - tol <= w <= hi[1] + tol
        and all(a * h + b * w + c >= -tol for a, b, c in lines)
    ]


def cat_sigma_reference(side: str, delta: float) -> float:
    """Exact sigma of the cat on one side (logit z optimum through the sigmoid)."""
    lo, hi = case_domain("cat")
    zs = [C0 + C1 * h + C2 * w for h, w in _vertices(_lines(side, delta), lo, hi)]
    if not zs:
        return 0.0
    return _sig(max(zs)) - 0.5 if side == "above" else 0.5 - _sig(min(zs))


def cat_sigma_grid(side: str, delta: float, n: int = 1201) -> float:
    """Dense-grid value with the strict flip conditions (a lower bound of the truth)."""
    lo, hi = case_domain("cat")
    hs, ws = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    z = C0 + C1 * hs + C2 * ws
    t = delta * (1 + np.abs(hs) + np.abs(ws))
    f = 1.0 / (1.0 + np.exp(-z))
    if side == "above":
        return float(np.where((z >= 0) & (z - t < 0), f - 0.5, -np.inf).max())
    return float(np.where((z < 0) & (z + t >= 0), 0.5 - f, -np.inf).max())


def _run(name: str, delta: float, gap: float = GAP) -> tuple[Network, SigmaResult]:
    net = load_case(name)
    lo, hi = case_domain(name)
    return net, sigma(net, absolute(net, delta), input_box(net, lo, hi), Budget(gap, 30.0))


def check_witness(net: Network, c: Certificate, side: str, delta: float, box: tuple) -> None:
    """The witness lies in both boxes, really flips on ``side`` and attains ``lower``."""
    assert c.witness is not None
    lo, hi = box
    x = c.witness.x.reshape(1, -1)
    assert np.all(x >= lo) and np.all(x <= hi)
    nominal = net.param_tensors()
    assert set(c.witness.param_offsets) == set(nominal)
    params = {}
    for k, off in c.witness.param_offsets.items():
        assert np.all(np.abs(off) <= delta)
        params[k] = (nominal[k] + torch.as_tensor(off, dtype=DTYPE)).unsqueeze(0)
    xt = torch.as_tensor(x, dtype=DTYPE)
    with torch.no_grad():
        f_n, f_p = float(net(xt)[0, 0]), float(net(xt, params)[0, 0])
    if side == "above":
        assert f_n >= 0.5 > f_p
        assert abs((f_n - 0.5) - c.lower) <= 1e-15
    else:
        assert f_n < 0.5 <= f_p
        assert abs((0.5 - f_n) - c.lower) <= 1e-15


@pytest.mark.parametrize("delta", [0.005, 0.01])
def test_cat_sigma_contains_exact_value(delta: float) -> None:
    net, res = _run("cat", delta)
    box = case_domain("cat")
    for side in ("above", "below"):
        ref, grid = cat_sigma_reference(side, delta), cat_sigma_grid(side, delta)
        assert grid <= ref + 1e-12 and ref - grid < 1e-3  # the two references agree
        c = res.side(side)
        assert c.lower <= ref + 1e-12 <= c.upper + 2e-12
        assert c.gap <= GAP and c.status == "optimal"
        check_witness(net, c, side, delta, box)
    # The seed's Table 1 values, to their printed digits.
    seed = {0.005: (0.024, 0.021), 0.01: (0.052, 0.04)}[delta]
    assert abs(res.above.lower - seed[0]) < 5e-4 and abs(res.below.lower - seed[1]) < 5e-4


@pytest.mark.parametrize("name", ["cat", "ath-relu", "ath-linear"])
def test_agrees_with_exact_backend(name: str) -> None:
    exact = pytest.importorskip("quantcert.engines.exact")
    net, res = _run(name, 0.005, gap=1e-5)
    lo, hi = case_domain(name)
    ref = exact.sigma(net, {k: 0.005 for k in net.param_tensors()}, box=(lo, hi))
    for side, e in (("above", ref.above), ("below", ref.below)):
        c = res.side(side)
        assert c.gap <= 1e-5
        assert abs(c.lower - e.lower) <= 1e-5 + e.gap
        assert e.lower <= c.upper + 1e-12  # SCIP's witness never beats our sound bound
        assert c.lower <= e.upper + 1e-9  # nor ours SCIP's (tolerance: its stated margin)
        check_witness(net, c, side, 0.005, (lo, hi))


@pytest.mark.parametrize("name", ["cat", "ath-relu", "ath-linear"])
def test_sampled_flips_never_exceed_upper(name: str) -> None:
    delta = 0.01
    net, res = _run(name, delta, gap=1e-4)
    lo, hi = case_domain(name)
    rng = np.random.default_rng(3)
    n = 20_000
    x = lo + (hi - lo) * rng.random((n, 2))
    for c in (res.above, res.below):  # crowd samples around the witnesses too
        assert c.witness is not None
        near = c.witness.x.ravel() + (hi - lo) * 1e-3 * rng.standard_normal((n, 2))
        x = np.concatenate([x, np.clip(near, lo, hi)])
    xt = torch.as_tensor(x, dtype=DTYPE)
    params = {}
    for k, v in net.param_tensors().items():
        corner = rng.choice([-1.0, 1.0], size=(len(x), *v.shape))
        mixed = np.where(rng.random(corner.shape) < 0.2, rng.uniform(-1, 1, corner.shape), corner)
        params[k] = v + delta * torch.as_tensor(mixed, dtype=DTYPE)
    with torch.no_grad():
        f_n, f_p = net(xt)[:, 0].numpy(), net(xt, params)[:, 0].numpy()
    above = np.where((f_n >= 0.5) & (f_p < 0.5), f_n - 0.5, -np.inf).max()
    below = np.where((f_n < 0.5) & (f_p >= 0.5), 0.5 - f_n, -np.inf).max()
    assert above <= res.above.upper and below <= res.below.upper
    assert above > 0.5 * res.above.lower and below > 0.5 * res.below.lower  # samples do flip


def test_raw_score_network_sigma_in_logit_units() -> None:
    """Without a sigmoid head, sigma is measured on the score itself (level 0)."""
    cat = load_case("cat")
    fc = cat.node("fc")
    net = Network([Node("fc", fc.op, (INPUT,))], (2,), name="cat-logit")
    lo, hi = case_domain("cat")
    res = sigma(net, absolute(net, 0.005), input_box(net, lo, hi), Budget(GAP, 30.0))
    verts = _vertices(_lines("above", 0.005), lo, hi)
    ref = max(C0 + C1 * h + C2 * w for h, w in verts)
    assert res.above.lower <= ref + 1e-12 <= res.above.upper + 2e-12
    assert res.above.gap <= GAP


def test_no_perturbation_no_flip() -> None:
    _, res = _run("cat", 0.0)
    for c in (res.above, res.below):
        assert c.lower == 0.0 and c.upper <= GAP and c.witness is None


def test_verify_eq10() -> None:
    net = load_case("cat")
    lo, hi = case_domain("cat")
    pert, box = absolute(net, 0.005), input_box(net, lo, hi)
    exact_above = cat_sigma_reference("above", 0.005)
    assert sigma_verify(net, pert, box, exact_above + 1e-4).status == "verified"
    falsified = sigma_verify(net, pert, box, exact_above - 1e-3)
    assert falsified.status == "falsified"
    assert falsified.result.above.lower >= exact_above - 1e-3
    assert "falsified" in falsified.to_text()


def test_json_shape() -> None:
    _, res = _run("cat", 0.005, gap=1e-4)
    data = json.loads(json.dumps(res.to_dict()))
    assert data["query"] == "sigma" and data["engine"].startswith("quantcert")
    assert data["time_s"] >= 0
    for side in ("above", "below"):
        entry = data["sides"][side]
        assert {"lower", "upper", "gap", "status", "witness"} <= set(entry)
        assert len(entry["witness"]["x"]) == 2 and "param_offsets" in entry["witness"]
    assert "above" in res.to_text() and "below" in res.to_text()


def test_refuses_multi_class_heads() -> None:
    w = torch.eye(2, dtype=DTYPE)
    fc = Node("fc", Affine(w, torch.zeros(2, dtype=DTYPE)), (INPUT,))
    soft = Network([fc, Node("out", Softmax(), ("fc",))], (2,), head="out")
    raw = Network([fc], (2,))
    for net in (soft, raw):
        box = input_box(net, np.zeros(2), np.ones(2))
        with pytest.raises(InputError, match="single-output"):
            sigma(net, absolute(net, 0.01), box)
