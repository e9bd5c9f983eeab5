"""Branch and bound over parameter boxes: sub-boxes cover the real parameter box, bounds over
every sub-box hold against sampled parameters, and the splits close gaps (against closed
forms and sampling) that input and ReLU splits leave open."""

from __future__ import annotations

from fractions import Fraction

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

import quantcert.analyses.epsilon as epsilon_module
import quantcert.analyses.flip as flip_module
from conftest import (
    check_splitting_tightens_soundly,
    conv_residual_net,
    exact_local_2layer,
    mlp,
)
from quantcert.analyses.epsilon import Budget, epsilon, input_box
from quantcert.analyses.flip import flip, labels, threshold
from quantcert.engines import perturbation
from quantcert.engines.attack import Witness, difference_objective
from quantcert.engines.bounds import Radii, bound_spec
from quantcert.engines.pair import difference_network, pair_radii
from quantcert.engines.param_split import JointSearch, choose_parameters
from quantcert.network import Network
from quantcert.ops import DTYPE, Box


def _space(net: Network, delta: float) -> JointSearch:
    pert = perturbation.absolute(net, delta)
    pair = difference_network(net)
    n_out = net.shapes()[net.output_node][0]
    signs = torch.cat([torch.eye(n_out, dtype=DTYPE), -torch.eye(n_out, dtype=DTYPE)])

    def bound_pair(moved: Network, boxes: Box, radii: Radii) -> torch.Tensor:
        return bound_spec(moved, boxes, radii, signs)[0].max(1).values

    return JointSearch(
        choose_parameters(net, pert),
        pair,
        pair_radii(pert, pair),
        bound_pair,
        difference_objective(net, signs),
        signs.shape[0],
    )


def _random_sub_boxes(root: Box, n: int, gen: torch.Generator) -> Box:
    """``n`` random sub-boxes of a joint root box (each side an interval inside the root)."""
    u = torch.rand((2, n, root.lo.shape[1]), generator=gen, dtype=DTYPE)
    a, b = u.min(0).values, u.max(0).values
    width = root.hi - root.lo
    return Box(root.lo + a * width, root.lo + b * width)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), delta=st.sampled_from([1e-3, 0.1, 7.0]))
def test_parameter_sub_boxes_cover_their_intervals_exactly(seed: int, delta: float) -> None:
    """In exact rational arithmetic: the root contains ``[theta0 - D, theta0 + D]``, and each
    sub-box's centre and radius cover the sub-interval they stand for."""
    net = mlp([2, 3, 1], "relu", seed=seed, scale=10.0)
    space = _space(net, delta)
    layout = space.layout
    x = torch.zeros((1, 2), dtype=DTYPE)
    root = layout.root(Box(x, x))
    t0 = torch.cat([v.flatten() for v in net.param_tensors().values()])
    for i, t in enumerate(t0.tolist()):
        lo, hi = Fraction(float(root.lo[0, 2 + i])), Fraction(float(root.hi[0, 2 + i]))
        assert lo <= Fraction(t) - Fraction(delta) and hi >= Fraction(t) + Fraction(delta)
    subs = _random_sub_boxes(root, 16, torch.Generator().manual_seed(seed))
    centres, radii = layout.parameter_boxes(subs)
    for k, name in enumerate(layout.names):
        c, r = centres[name].flatten(1), radii[name].flatten(1)
        start = 2 + sum(int(i.numel()) for i in layout.index[:k])
        for row in range(16):
            for j in layout.index[k].tolist():
                a = Fraction(float(subs.lo[row, start + j]))
                b = Fraction(float(subs.hi[row, start + j]))
                cj, rj = Fraction(float(c[row, j])), Fraction(float(r[row, j]))
                assert cj - rj <= a and cj + rj >= b


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "leaky"])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), delta=st.sampled_from([0.01, 0.2]))
def test_no_sampled_parameter_beats_a_sub_box_bound(act: str, seed: int, delta: float) -> None:
    net = mlp([2, 4, 3, 2], act, seed=seed)
    space = _space(net, delta)
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn((1, 2), generator=gen, dtype=DTYPE)
    subs = _random_sub_boxes(space.layout.root(Box(centre - 0.5, centre + 0.5)), 6, gen)
    upper = space.bound(subs)
    limits = space.layout.attack_limits(subs)
    inputs = space.layout.inputs(subs)
    n = 300
    for row in range(6):
        u = torch.rand((n, 2), generator=gen, dtype=DTYPE)
        x = inputs.lo[row] + u * (inputs.hi[row] - inputs.lo[row])
        params = {}
        for name, (lo, hi) in limits.items():
            corner = torch.randint(0, 2, (n, *lo.shape[1:]), generator=gen).to(DTYPE)
            params[name] = lo[row] + corner * (hi[row] - lo[row])
            assert bool((lo[row] <= hi[row]).all())
        with torch.no_grad():
            values = space.objective(x, params).max(1).values
        assert float(values.max()) <= float(upper[row]) + 1e-12
        # Gradient ascent inside the same sub-box (from the sampled best) does not beat it.
        i = int(values.argmax())
        start = Witness(float(values[i]), x[i], {k: v[i] for k, v in params.items()})
        one = Box(subs.lo[row : row + 1], subs.hi[row : row + 1])
        attacked = space.attack([start])(one, 40)
        assert attacked.value <= float(upper[row]) + 1e-12


@pytest.mark.parametrize("delta", [0.1, 0.3])
@pytest.mark.parametrize("seed", [1, 2, 5])
def test_local_eps_reaches_the_closed_form_at_large_delta(delta: float, seed: int) -> None:
    net = mlp([2, 3, 1], "relu", seed=seed, head=True)
    x = np.random.default_rng(seed).uniform(-1, 1, 2)
    res = epsilon(net, perturbation.absolute(net, delta), input_box(net, x, x), Budget(gap=1e-4))
    exact = exact_local_2layer(net, x, delta, relu=True)
    assert res.overall.lower <= exact + 1e-12 <= res.overall.upper + 2e-12
    assert res.overall.status == "optimal" and res.overall.gap <= 1e-4


def _sampled_change(net: Network, delta: float, x: torch.Tensor, n: int = 20_000) -> float:
    gen = torch.Generator().manual_seed(0)
    params = {
        k: v + delta * (2 * torch.rand((n, *v.shape), generator=gen, dtype=DTYPE) - 1).sign()
        for k, v in net.param_tensors().items()
    }
    with torch.no_grad():
        return float((net(x.expand(n, -1), params) - net(x)).abs().max())


def test_parameter_splits_close_a_tanh_gap_that_relu_splits_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = mlp([2, 4, 4, 1], "tanh", seed=1, head=True)
    pert = perturbation.absolute(net, 0.1)
    x = np.array([-0.5, 0.3])
    box = input_box(net, x, x)
    split = epsilon(net, pert, box, Budget(gap=1e-4, timeout=60)).overall
    with monkeypatch.context() as m:
        m.setattr(epsilon_module, "splits_parameters", lambda p: False)
        plain = epsilon(net, pert, box, Budget(gap=1e-4, timeout=60)).overall
    assert plain.status == "bounded" and plain.gap > 1e-2
    assert split.status == "optimal" and split.gap <= 1e-4
    assert _sampled_change(net, 0.1, box.lo) <= split.upper
    assert split.lower >= plain.lower


def test_global_eps_closes_where_input_splits_run_out() -> None:
    """2-3-1 ReLU net, delta 0.1 on [-1, 1]^2: input splits alone stop at 200k boxes with a
    gap of about 4e-3; with the parameters split too the gap closes. The reference maximises
    the closed-form local value over a grid (a lower estimate of the true maximum)."""
    net = mlp([2, 3, 1], "relu", seed=3, head=True, scale=2.0)
    box = input_box(net, -np.ones(2), np.ones(2))
    res = epsilon(net, perturbation.absolute(net, 0.1), box, Budget(gap=1e-4, timeout=60))
    grid = np.linspace(-1, 1, 121)
    reference = max(
        exact_local_2layer(net, np.array([a, b]), 0.1, True) for a in grid for b in grid
    )
    assert res.overall.status == "optimal" and res.overall.gap <= 1e-4
    assert reference <= res.overall.upper
    assert res.overall.lower >= reference - 1e-4


def test_parameter_splits_decide_a_flip_left_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    net = mlp([2, 4, 4, 1], "tanh", seed=1, head=True)
    pert = perturbation.absolute(net, 0.09)
    x = torch.tensor([[-0.5, 0.3]], dtype=DTYPE)
    with monkeypatch.context() as m:
        m.setattr(flip_module, "splits_parameters", lambda p: False)
        plain = flip(net, pert, Box(x, x), Budget(timeout=30)).overall
    split = flip(net, pert, Box(x, x), Budget(timeout=30)).overall
    assert plain.status == "unknown" and split.status == "verified"
    assert split.upper < 0
    # No sampled corner of the parameter box changes the label.
    n, t = 20_000, threshold(net, None)
    gen = torch.Generator().manual_seed(1)
    params = {
        k: v + 0.09 * (2 * torch.randint(0, 2, (n, *v.shape), generator=gen).to(DTYPE) - 1)
        for k, v in net.param_tensors().items()
    }
    with torch.no_grad():
        flipped = labels(net.logits(x.expand(n, -1), params), t) != labels(net.logits(x), t)
    assert not bool(flipped.any())


def test_parameter_splits_verify_a_three_class_flip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three classes, argmax labels: unknown without parameter splits, verified with them; no
    sampled parameter corner changes the label."""
    net = mlp([3, 6, 6, 3], "relu", seed=1)
    x = np.random.default_rng(1).uniform(-1, 1, 3)
    box = input_box(net, x, x)
    pert = perturbation.absolute(net, 0.05)
    with monkeypatch.context() as m:
        m.setattr(flip_module, "splits_parameters", lambda p: False)
        plain = flip(net, pert, box, Budget(timeout=30)).overall
    split = flip(net, pert, box, Budget(timeout=30)).overall
    assert plain.status == "unknown" and split.status == "verified"
    n = 20_000
    gen = torch.Generator().manual_seed(2)
    params = {
        k: v + 0.05 * (2 * torch.randint(0, 2, (n, *v.shape), generator=gen).to(DTYPE) - 1)
        for k, v in net.param_tensors().items()
    }
    xs = box.lo.expand(n, -1)
    with torch.no_grad():
        assert bool((net.logits(xs, params).argmax(1) == net.logits(box.lo).argmax(1)).all())


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000))
def test_conv_residual_net_with_parameter_splits_is_not_beaten(seed: int) -> None:
    """Conv -> ReLU -> conv + skip -> max-pool -> affine, 140 perturbed scalars: the point
    query runs parameter splits through batched convolution kernels; sampled corners never
    beat the upper bound, which only tightens."""
    net = conv_residual_net(seed)
    x = torch.rand((1, 1, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    box = Box(x, x)
    check_splitting_tightens_soundly(net, box, 0.05, 3000)
