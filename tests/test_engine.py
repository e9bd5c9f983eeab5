"""The bound engine against independent truths: sampling and attacks never beat ``upper``,
closed forms sit inside ``[lower, upper]``, and float rounding cannot push a bound the wrong
way."""

from __future__ import annotations

from fractions import Fraction

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from conftest import (
    ACTIVATIONS,
    cat_network,
    check_splitting_tightens_soundly,
    conv_residual_net,
    exact_local_2layer,
    mlp,
    sampled_max,
)
from quantcert.analyses.epsilon import Budget, epsilon, input_box
from quantcert.engines import perturbation
from quantcert.engines.attack import difference_objective, search
from quantcert.engines.bounds import bound_spec
from quantcert.engines.pair import difference_network, pair_radii
from quantcert.network import INPUT, Network, Node
from quantcert.ops import DTYPE, Affine, Box, Identity


@settings(max_examples=25, deadline=None)
@given(
    act=st.sampled_from(sorted(ACTIVATIONS)),
    seed=st.integers(0, 1000),
    width=st.floats(0.0, 1.0),
    delta=st.floats(1e-4, 0.1),
    method=st.sampled_from(["ibp", "crown"]),
)
def test_no_sample_or_attack_beats_the_bound(
    act: str, seed: int, width: float, delta: float, method: str
) -> None:
    net = mlp([3, 6, 5, 2], act, seed=seed, head=False)
    pert = perturbation.absolute(net, delta)
    center = torch.randn((1, 3), generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    box = Box(center - width, center + width)
    pair = difference_network(net)
    signs = torch.cat([torch.eye(2, dtype=DTYPE), -torch.eye(2, dtype=DTYPE)])
    upper, _ = bound_spec(pair, box, pair_radii(pert, pair), signs, method)  # type: ignore[arg-type]
    eps_upper = torch.maximum(upper[0, :2], upper[0, 2:])
    assert bool((sampled_max(net, delta, box) <= eps_upper).all())
    attacked = search(net, pert, box, difference_objective(net, signs), 4, restarts=3, steps=30)
    assert all(w.value <= float(upper[0, k]) for k, w in enumerate(attacked))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), relu=st.booleans(), delta=st.floats(1e-4, 0.05))
def test_local_epsilon_contains_the_exact_two_layer_value(
    seed: int, relu: bool, delta: float
) -> None:
    net = mlp([2, 3, 1], "relu" if relu else "identity", seed=seed, head=True, scale=2.0)
    x = np.random.default_rng(seed).uniform(-1, 1, 2)
    res = epsilon(net, perturbation.absolute(net, delta), input_box(net, x, x), Budget(gap=1e-6))
    exact = exact_local_2layer(net, x, delta, relu)
    assert res.overall.lower <= exact + 1e-12 <= res.overall.upper + 2e-12
    assert res.overall.lower >= exact - 1e-9  # the witness finds the corner


def test_global_epsilon_closes_the_gap_on_a_two_layer_net() -> None:
    net = mlp([2, 3, 1], "relu", seed=3, head=True, scale=2.0)
    delta = 0.01
    res = epsilon(
        net,
        perturbation.absolute(net, delta),
        input_box(net, -np.ones(2), np.ones(2)),
        Budget(gap=1e-4, timeout=30),
    )
    grid = np.linspace(-1, 1, 121)
    reference = max(
        exact_local_2layer(net, np.array([a, b]), delta, True) for a in grid for b in grid
    )
    assert res.overall.status == "optimal"
    assert res.overall.gap <= 1e-4
    assert reference <= res.overall.upper
    assert res.overall.lower >= reference - 1e-4


def test_cat_global_epsilon_matches_the_closed_form() -> None:
    """Single sigmoid neuron: at each x the change is largest at t = +-delta (1 + H + W)."""
    net = cat_network()
    c0, c1, c2 = -3.51518067, 0.07577862, 1.18118408
    lo, hi = np.array([6.3, 2.0]), np.array([20.5, 3.9])
    res = epsilon(net, perturbation.absolute(net, 0.005), input_box(net, lo, hi), Budget(gap=1e-5))
    h, w = np.meshgrid(np.linspace(6.3, 20.5, 1001), np.linspace(2.0, 3.9, 1001))
    z, t = c0 + c1 * h + c2 * w, 0.005 * (1 + h + w)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    reference = max((sig(z + t) - sig(z)).max(), (sig(z) - sig(z - t)).max())
    assert res.overall.lower - 1e-12 <= reference <= res.overall.upper
    assert res.overall.gap <= 1e-5


def test_bounds_survive_float_rounding() -> None:
    """Huge and tiny weights: the exact (rational) maximum must not exceed the float bound."""
    w = torch.tensor([[1e16, 1.0, -1e16, 3.0, 1e-8]], dtype=DTYPE)
    net = Network(
        [
            Node("fc", Affine(w, torch.tensor([1.0], dtype=DTYPE)), (INPUT,)),
            Node("id", Identity(), ("fc",)),
        ],
        (5,),
    )
    x = np.array([1.0, 1.0, 1.0, 1.0, 3.0])
    delta = 1e-3
    # The float64 witness value is noise here (terms of 1e16), so its honest lower is 0 and
    # the gap cannot close: a short budget.
    budget = Budget(timeout=2.0)
    res = epsilon(net, perturbation.absolute(net, delta), input_box(net, x, x), budget)
    exact = Fraction(delta) * (sum(Fraction(abs(v)) for v in x) + 1)  # max |change| of z
    assert Fraction(res.overall.upper) >= exact
    # The hazard is real: float32 arithmetic on the same sum rounds it away entirely.
    naive = np.float32(1e16) + np.float32(1.0) - np.float32(1e16) + np.float32(3.0)
    assert Fraction(float(naive)) != Fraction(1e16) + 1 - Fraction(1e16) + 3


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), width=st.floats(0.0, 0.3), delta=st.floats(1e-4, 0.05))
def test_conv_residual_bounds_are_not_beaten(seed: int, width: float, delta: float) -> None:
    net = conv_residual_net(seed)
    center = torch.rand((1, 1, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    box = Box(center - width, center + width)
    res = epsilon(net, perturbation.absolute(net, delta), box, Budget(gap=1e9))
    assert bool((sampled_max(net, delta, box, n=2000) <= res.overall.upper).all())
    assert res.overall.lower <= res.overall.upper


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000))
def test_relu_splitting_tightens_soundly(seed: int) -> None:
    """At a point, splitting unstable ReLUs may only lower the upper bound, never below a
    sampled change."""
    net = mlp([3, 16, 16, 1], "relu", seed=seed)
    x = np.random.default_rng(seed).uniform(-1, 1, 3)
    box = input_box(net, x, x)
    check_splitting_tightens_soundly(net, box, 0.05, 5000)


def test_gradient_scores_are_width_times_the_bound_slope() -> None:
    from quantcert.engines.bab import gradient_scored

    a = torch.tensor([1.0, -2.0, 0.0, 3.0], dtype=DTYPE)
    b = torch.tensor([0.5, 0.5, 0.0, -1.0], dtype=DTYPE)
    scored = gradient_scored(lambda boxes: (boxes.hi * a).sum(1) - (boxes.lo * b).sum(1))
    lo = torch.zeros((2, 4), dtype=DTYPE)
    hi = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.1, 5.0, 0.5]], dtype=DTYPE)
    upper, score = scored(Box(lo, hi))
    torch.testing.assert_close(upper, (hi * a).sum(1))
    expected = (a + b).abs() * hi
    assert float((score - expected).abs().max()) < 1e-8
    assert score.argmax(1).tolist() == [3, 0]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000), act=st.sampled_from(["relu", "tanh"]))
def test_global_eps_over_five_inputs_is_not_beaten(seed: int, act: str) -> None:
    """Five inputs: splits pick sides by the bound's gradient; sampled and attacked changes
    stay under the upper bound, and the witness attains the lower one."""
    net = mlp([5, 8, 2], act, seed=seed)
    delta = 0.01
    box = input_box(net, -np.ones(5), np.ones(5))
    res = epsilon(net, perturbation.absolute(net, delta), box, Budget(gap=1e-3, timeout=5))
    assert float(sampled_max(net, delta, box).max()) <= res.overall.upper
    w = res.overall.witness
    assert w is not None
    params = {
        k: torch.as_tensor(v).unsqueeze(0) + net.param_tensors()[k]
        for k, v in w.param_offsets.items()
    }
    x = torch.as_tensor(w.x).reshape(1, 5)
    with torch.no_grad():
        change = float((net(x, params) - net(x)).abs().max())
    assert change == pytest.approx(res.overall.lower, rel=1e-9, abs=1e-12)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 1000),
    act=st.sampled_from(["relu", "leaky"]),
    width=st.floats(0.0, 0.5),
    delta=st.sampled_from([1e-3, 0.03]),
)
def test_alpha_bounds_are_sound_and_never_looser_than_crown(
    seed: int, act: str, width: float, delta: float
) -> None:
    net = mlp([3, 12, 12, 2], act, seed=seed)
    pert = perturbation.absolute(net, delta)
    centre = torch.randn((1, 3), generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    box = Box(centre - width, centre + width)
    pair = difference_network(net)
    radii = pair_radii(pert, pair)
    signs = torch.cat([torch.eye(2, dtype=DTYPE), -torch.eye(2, dtype=DTYPE)])
    crown, _ = bound_spec(pair, box, radii, signs, "crown")
    alpha, _ = bound_spec(pair, box, radii, signs, "alpha")
    assert bool((alpha <= crown + 1e-12).all())
    eps_alpha = torch.maximum(alpha[0, :2], alpha[0, 2:])
    assert bool((sampled_max(net, delta, box) <= eps_alpha).all())
    found = search(net, pert, box, difference_objective(net, signs), 4, restarts=3, steps=30)
    assert all(w.value <= float(alpha[0, k]) for k, w in enumerate(found))
