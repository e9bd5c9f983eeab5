"""The exact backend (SCIP) against independent references.

- Cat model ``sigmoid(c0 + c1 H + c2 W)``: the perturbed pre-activation is
  ``z + d0 + d1 H + d2 W`` with ``|d_i| <= delta``, so at a fixed ``(H, W)`` it covers exactly
  ``[z - t, z + t]``, ``t = delta (1 + |H| + |W|)``. The sigmoid is increasing, so the largest
  ``|sigmoid(z_p) - sigmoid(z)|`` is at ``z_p = z +- t``: a closed form per point. The global
  value maximises it over the box by a dense grid refined with scipy (a lower bound of the
  truth: the grid can only miss the maximum).
- Flips at a point ``x``: a label change is possible iff ``[z - t, z + t]`` crosses 0.
- A 2-3-1 net with one hidden layer, at a fixed ``x``: each hidden unit's pre-activation is
  affine in its own ``(W1_j, b1_j)``, so its (monotone) activation ranges over an interval whose
  ends are taken at corners; the output logit ``sum_j W2_j h_j + b2`` is a sum of products of
  two independent interval quantities, extreme at corners; a monotone head keeps that. So the
  max of ``|f_p - f_n|`` over the parameter box is attained at one of its 2^13 corners. (Not so
  over an input box, or with two hidden layers, where units share what they read.)
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

pytest.importorskip("pyscipopt")

from quantcert.analyses.epsilon import Budget, epsilon, input_box
from quantcert.cases.builtin import CAT_COEFFS, case_domain, load_case
from quantcert.engines import exact
from quantcert.engines.perturbation import absolute
from quantcert.errors import InputError
from quantcert.network import INPUT, Network, Node
from quantcert.ops import (
    DTYPE,
    Affine,
    Conv,
    LeakyReLU,
    ReLU,
    Reshape,
    Scale,
    Sigmoid,
    Sum,
    Tanh,
)

C0, C1, C2 = CAT_COEFFS


def _sig(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def _radius(net: Network, delta: float) -> dict[str, float]:
    return {k: delta for k in net.param_tensors()}


def cat_local(h: np.ndarray, w: np.ndarray, delta: float) -> np.ndarray:
    """Closed form of the cat's local eps at (H, W)."""
    z = C0 + C1 * h + C2 * w
    t = delta * (1 + np.abs(h) + np.abs(w))
    return np.asarray(np.maximum(_sig(z + t) - _sig(z), _sig(z) - _sig(z - t)))


def cat_global_reference(delta: float) -> float:
    """Dense grid over the box, the best cells refined by L-BFGS-B (a lower bound)."""
    lo, hi = case_domain("cat")
    hs, ws = np.meshgrid(np.linspace(lo[0], hi[0], 401), np.linspace(lo[1], hi[1], 401))
    vals = cat_local(hs, ws, delta)
    best = float(vals.max())
    for k in np.argsort(vals.ravel())[-5:]:
        start = np.array([hs.ravel()[k], ws.ravel()[k]])
        res = minimize(
            lambda v: -cat_local(v[0], v[1], delta), start, bounds=list(zip(lo, hi, strict=True))
        )
        best = max(best, -float(res.fun))
    return best


@pytest.fixture(scope="module")
def cat() -> Network:
    return load_case("cat")


@pytest.mark.parametrize("delta", [0.005, 0.01])
def test_cat_global_eps_matches_closed_form(cat: Network, delta: float) -> None:
    r = exact.max_abs_change(cat, _radius(cat, delta), box=case_domain("cat"), gap=1e-7)
    ref = cat_global_reference(delta)
    assert r.status == "optimal" and r.engine == "scip"
    assert ref <= r.upper
    assert r.lower >= ref - 1e-9
    assert r.upper - r.lower < 1e-6
    # The witness is real: re-evaluating it reproduces lower.
    assert r.witness_x is not None
    h, w = r.witness_x
    assert abs(float(cat_local(h, w, delta)) - r.lower) < 1e-12


def test_cat_eps_scales_with_delta_unlike_the_seed(cat: Network) -> None:
    """Seed Table 1 gives 0.00691 / 0.05054; the witnesses show both are too low and the
    ratio is about 2, not 7."""
    box = case_domain("cat")
    a = exact.max_abs_change(cat, _radius(cat, 0.005), box=box)
    b = exact.max_abs_change(cat, _radius(cat, 0.01), box=box)
    assert a.lower > 0.00691 and b.lower > 0.05054
    assert 1.9 < b.lower / a.lower < 2.1


@pytest.mark.parametrize("point", [(10.0, 3.0), (20.5, 2.0), (6.3, 3.9), (13.0, 2.6)])
def test_cat_local_eps_equals_closed_form(cat: Network, point: tuple[float, float]) -> None:
    r = exact.max_abs_change(cat, _radius(cat, 0.005), point=point)
    ref = float(cat_local(np.array(point[0]), np.array(point[1]), 0.005))
    assert abs(r.lower - ref) <= 1e-9
    assert ref <= r.upper < ref + 1e-6
    assert r.witness_x is not None and np.array_equal(r.witness_x, np.array(point))


def _outputs(net: Network, x: np.ndarray, params: dict[str, np.ndarray]) -> tuple[float, float]:
    xt = torch.tensor(x, dtype=DTYPE).reshape(1, -1)
    over = {k: torch.tensor(v, dtype=DTYPE) for k, v in params.items()}
    with torch.no_grad():
        return float(net(xt)), float(net(xt, over))


def test_cat_local_flip(cat: Network) -> None:
    far = exact.flip(cat, _radius(cat, 0.005), point=(6.3, 2.0))
    assert far.status == "verified" and far.upper < 0
    w = (0.01 - C0 - C1 * 10.0) / C2  # z = 0.01 at H = 10: inside the flippable band
    near = exact.flip(cat, _radius(cat, 0.005), point=(10.0, w))
    assert near.status == "falsified" and near.lower > 0
    assert near.witness_x is not None
    f_n, f_p = _outputs(cat, near.witness_x, near.witness_params)
    assert f_n >= 0.5 > f_p
    for name, value in near.witness_params.items():
        theta = cat.param_tensors()[name].numpy()
        assert np.all(np.abs(value - theta) <= 0.005 + 1e-15)


def _cat_flip_grid(delta: float) -> tuple[float, float]:
    """Brute force of sigma per side: on a dense grid, x can flip down iff z >= 0 > z - t,
    up iff z < 0 <= z + t; the side's value is |f_n - 0.5| there."""
    lo, hi = case_domain("cat")
    hs, ws = np.meshgrid(np.linspace(lo[0], hi[0], 801), np.linspace(lo[1], hi[1], 801))
    z = C0 + C1 * hs + C2 * ws
    t = delta * (1 + hs + ws)
    above = np.where((z >= 0) & (z - t < 0), _sig(z) - 0.5, -np.inf).max()
    below = np.where((z < 0) & (z + t >= 0), 0.5 - _sig(z), -np.inf).max()
    return float(above), float(below)


@pytest.mark.parametrize("delta", [0.005, 0.01])
def test_cat_sigma_and_flip_agree_with_brute_force(cat: Network, delta: float) -> None:
    box = case_domain("cat")
    s = exact.sigma(cat, _radius(cat, delta), box=box)
    grid_above, grid_below = _cat_flip_grid(delta)
    for side, ref in ((s.above, grid_above), (s.below, grid_below)):
        assert side.status == "optimal"
        assert ref <= side.upper
        assert side.lower >= ref - 1e-9
        assert side.upper - side.lower < 1e-6
    # Witnesses really flip, on the side claimed.
    assert s.above.witness_x is not None and s.below.witness_x is not None
    f_n, f_p = _outputs(cat, s.above.witness_x, s.above.witness_params)
    assert f_n >= 0.5 > f_p and abs(f_n - 0.5 - s.above.lower) < 1e-15
    f_n, f_p = _outputs(cat, s.below.witness_x, s.below.witness_params)
    assert f_n < 0.5 <= f_p and abs(0.5 - f_n - s.below.lower) < 1e-15
    # Random (x, theta) samples never beat SCIP's upper bounds.
    rng = np.random.default_rng(1)
    lo, hi = box
    xs = rng.uniform(lo, hi, size=(20000, 2))
    d = rng.choice([-delta, delta], size=(20000, 3)) * rng.uniform(0.5, 1, size=(20000, 3))
    z = C0 + C1 * xs[:, 0] + C2 * xs[:, 1]
    zp = z + d[:, 0] + d[:, 1] * xs[:, 0] + d[:, 2] * xs[:, 1]
    fn, fp = _sig(z), _sig(zp)
    down, up = (fn >= 0.5) & (fp < 0.5), (fn < 0.5) & (fp >= 0.5)
    assert down.any() and up.any()
    assert (fn[down] - 0.5).max() <= s.above.upper
    assert (0.5 - fn[up]).max() <= s.below.upper
    f = exact.flip(cat, _radius(cat, delta), box=box)
    assert f.status == "falsified" and f.lower > 0


def _mlp(seed: int = 0) -> Network:
    gen = torch.Generator().manual_seed(seed)
    w1, b1 = (
        torch.randn(3, 2, generator=gen, dtype=DTYPE),
        torch.randn(3, generator=gen, dtype=DTYPE),
    )
    w2, b2 = (
        torch.randn(1, 3, generator=gen, dtype=DTYPE),
        torch.randn(1, generator=gen, dtype=DTYPE),
    )
    nodes = [
        Node("fc1", Affine(w1, 0.5 * b1), (INPUT,)),
        Node("act", ReLU(), ("fc1",)),
        Node("fc2", Affine(w2, 0.5 * b2), ("act",)),
        Node("out", Sigmoid(), ("fc2",)),
    ]
    return Network(nodes, (2,), head="out")


def _corner_max(net: Network, x: tuple[float, float], delta: float) -> float:
    """max |f_p - f_n| over the 2^13 corners of the parameter box, in one batch."""
    params = net.param_tensors()
    sizes = [v.numel() for v in params.values()]
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=sum(sizes))), dtype=DTYPE)
    over, at = {}, 0
    for (name, value), n in zip(params.items(), sizes, strict=True):
        block = signs[:, at : at + n].reshape(-1, *value.shape)
        over[name], at = value + delta * block, at + n
    xt = torch.tensor([x], dtype=DTYPE).expand(len(signs), 2)
    with torch.no_grad():
        return float((net(xt, over) - net(xt[:1])).abs().max())


@pytest.mark.parametrize("x", [(0.3, -0.7), (-1.0, 1.0), (0.9, 0.2)])
def test_relu_mlp_local_eps_equals_corner_enumeration(x: tuple[float, float]) -> None:
    net = _mlp()
    r = exact.max_abs_change(net, _radius(net, 0.05), point=x)
    ref = _corner_max(net, x, 0.05)
    assert abs(r.lower - ref) <= 1e-9
    assert ref <= r.upper < ref + 1e-6


def test_relu_mlp_global_eps_bounds_sampling() -> None:
    net = _mlp()
    r = exact.max_abs_change(net, _radius(net, 0.05), box=([-1, -1], [1, 1]), gap=1e-6)
    assert r.status == "optimal" and r.upper - r.lower < 1e-5
    grid = [(a, b) for a in np.linspace(-1, 1, 5) for b in np.linspace(-1, 1, 5)]
    assert max(_corner_max(net, g, 0.05) for g in grid) <= r.upper


@pytest.mark.parametrize("case", ["cat", "ath-relu", "ath-linear"])
def test_engines_agree_on_case_studies(case: str) -> None:
    """Our bound engine and the exact backend: each one's lower is within the other's upper,
    and the two intervals are both narrower than the requested gap."""
    net, (lo, hi) = load_case(case), case_domain(case)
    ex = exact.max_abs_change(net, _radius(net, 0.005), box=(lo, hi), gap=1e-5)
    ours = epsilon(net, absolute(net, 0.005), input_box(net, lo, hi), Budget(gap=1e-4, timeout=30))
    o = ours.overall
    assert ex.lower <= o.upper and o.lower <= ex.upper
    assert abs(ex.lower - o.lower) <= 1e-4 * max(1.0, ex.lower)


def _zoo() -> Network:
    """Every encodable op once: Scale, Affine, Tanh, LeakyReLU, Sum (residual), Reshape."""
    gen = torch.Generator().manual_seed(3)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=DTYPE)

    nodes = [
        Node(
            "s", Scale(torch.tensor([2.0, 0.5], dtype=DTYPE), torch.tensor([0.1, -0.2])), (INPUT,)
        ),
        Node("a1", Affine(rnd(3, 2), rnd(3)), ("s",)),
        Node("t", Tanh(), ("a1",)),
        Node("a2", Affine(rnd(3, 3), rnd(3)), ("t",)),
        Node("l", LeakyReLU(0.1), ("a2",)),
        Node("res", Sum((1.0, 0.5)), ("l", "t")),
        Node("r", Reshape((3,)), ("res",)),
        Node("a3", Affine(rnd(1, 3), rnd(1)), ("r",)),
        Node("out", Sigmoid(), ("a3",)),
    ]
    return Network(nodes, (2,), head="out")


def test_every_op_encodes_and_bounds_random_parameters() -> None:
    net = _zoo()
    rad = {"a1.weight": 0.05, "a2.bias": 0.05, "a3.weight": 0.05}  # the rest stays fixed
    x = np.array([0.4, -0.3])
    r = exact.max_abs_change(net, rad, point=x)
    assert r.status == "optimal" and set(r.witness_params) == set(rad)
    rng = np.random.default_rng(0)
    theta = net.param_tensors()
    best = 0.0
    for _ in range(300):
        over = {k: theta[k].numpy() + rng.uniform(-0.05, 0.05, theta[k].shape) for k in rad}
        f_n, f_p = _outputs(net, x, over)
        best = max(best, abs(f_p - f_n))
    assert best <= r.upper and r.lower >= best - 1e-9
    f_n, f_p = _outputs(net, x, r.witness_params)
    assert abs(abs(f_p - f_n) - r.lower) < 1e-15


def test_refuses_bad_queries(cat: Network) -> None:
    rad = _radius(cat, 0.005)
    with pytest.raises(InputError):
        exact.max_abs_change(cat, rad)  # neither a point nor a box
    with pytest.raises(InputError):
        exact.max_abs_change(cat, rad, point=(1.0, 2.0), box=([0, 0], [1, 1]))
    with pytest.raises(InputError):
        exact.max_abs_change(cat, {"nope.weight": 0.1}, point=(10.0, 3.0))
    with pytest.raises(InputError):
        exact.max_abs_change(cat, rad, point=(10.0, 3.0), engine="z3")
    conv = Network(
        [Node("c", Conv(torch.ones(1, 1, 2, 2, dtype=DTYPE), None), (INPUT,))], (1, 3, 3)
    )
    with pytest.raises(InputError, match="cannot encode"):
        exact.max_abs_change(conv, {}, point=np.zeros(9))
    if not exact.dreal_available():
        with pytest.raises(InputError, match="dReal"):
            exact.max_abs_change(cat, rad, point=(10.0, 3.0), engine="dreal")
