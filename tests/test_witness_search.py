"""Witnesses: the reported ``lower`` is attained in exact arithmetic (rational replay of the
witness at tiny ``delta``, where float64 cancellation dominates), and the witness search on
smooth deep networks reaches what a strong outside attack finds."""

from __future__ import annotations

from fractions import Fraction

import hypothesis.strategies as st
import numpy as np
import torch
from hypothesis import given, settings
from torch import Tensor

from conftest import mlp
from quantcert.analyses.epsilon import Budget, epsilon
from quantcert.engines import perturbation
from quantcert.engines.attack import difference_objective, evaluation_error
from quantcert.engines.bounds import engine_threads
from quantcert.network import Network
from quantcert.ops import DTYPE, Affine, Box, ReLU


def _exact_relu_mlp(net: Network, x: np.ndarray, params: dict[str, np.ndarray]) -> list[Fraction]:
    """The network (Affine and ReLU nodes in a chain) in exact rational arithmetic at the
    float64 input and parameters given."""
    z = [Fraction(float(v)) for v in x.ravel()]
    for node in net.nodes:
        if isinstance(node.op, Affine):
            w = params[f"{node.name}.weight"]
            b = params[f"{node.name}.bias"]
            z = [
                sum((Fraction(float(w[o, i])) * z[i] for i in range(w.shape[1])), Fraction(0))
                + Fraction(float(b[o]))
                for o in range(w.shape[0])
            ]
        else:
            assert isinstance(node.op, ReLU)
            z = [max(v, Fraction(0)) for v in z]
    return z


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), delta=st.sampled_from([1e-15, 1e-14, 1e-13]))
def test_lower_is_attained_in_exact_arithmetic(seed: int, delta: float) -> None:
    """At delta <= 1e-13 the float64 change is mostly cancellation noise: the exact change at
    the witness is still >= the reported lower (per output and overall)."""
    net = mlp([3, 16, 16, 2], "relu", seed=seed, scale=3.0)
    gen = np.random.default_rng(seed)
    x0 = gen.uniform(-1, 1, (1, 3))
    box = Box(torch.as_tensor(x0), torch.as_tensor(x0))
    res = epsilon(net, perturbation.absolute(net, delta), box, Budget(timeout=1.0))
    nominal = {k: v.numpy() for k, v in net.param_tensors().items()}
    for cert in (res.overall, *res.per_output):
        w = cert.witness
        assert w is not None
        theta = {k: nominal[k] + w.param_offsets.get(k, 0.0) for k in nominal}
        for k, t in theta.items():  # inside the box, in exact arithmetic
            gap = np.abs(t - nominal[k]).max() if t.size else 0.0
            assert Fraction(float(gap)) <= Fraction(delta)
        exact = [
            abs(p - n)
            for p, n in zip(
                _exact_relu_mlp(net, w.x, theta), _exact_relu_mlp(net, w.x, nominal), strict=True
            )
        ]
        assert max(exact) >= Fraction(cert.lower), (float(max(exact)), cert.lower)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_evaluation_error_bounds_the_exact_difference(seed: int) -> None:
    """The stated error of the difference objective covers the distance between the float64
    columns and their exact rational values, at random points and parameters."""
    net = mlp([3, 12, 12, 2], "relu", seed=seed, scale=4.0)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((4, 3), generator=gen, dtype=DTYPE) * 2 - 1
    params = {
        k: v + 1e-13 * torch.randn((4, *v.shape), generator=gen, dtype=DTYPE)
        for k, v in net.param_tensors().items()
    }
    signs = torch.cat([torch.eye(2, dtype=DTYPE), -torch.eye(2, dtype=DTYPE)])
    objective = difference_objective(net, signs)
    values, errors = objective(x, params), objective.error(x, params)
    _, node_errors = evaluation_error(net, x, params)
    assert bool((node_errors > 0).all()) and bool((errors > 0).all())
    nominal = {k: v.numpy() for k, v in net.param_tensors().items()}
    for b in range(4):
        theta = {k: v[b].numpy() for k, v in params.items()}
        p = _exact_relu_mlp(net, x[b].numpy(), theta)
        n = _exact_relu_mlp(net, x[b].numpy(), nominal)
        exact = [p[0] - n[0], p[1] - n[1], n[0] - p[0], n[1] - p[1]]
        for k in range(4):
            miss = abs(Fraction(float(values[b, k])) - exact[k])
            assert miss <= Fraction(float(errors[b, k])), (b, k, float(miss))


def smooth_mlp(
    seed: int = 0, width: int = 20, depth: int = 6, outputs: int = 1, act: str = "tanh"
) -> Network:
    """2 inputs, ``depth`` layers of ``width`` tanh (or sigmoid) units, ``outputs`` outputs;
    torch's default init."""
    from quantcert.intake.torch_module import from_torch

    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    prev = 2
    for _ in range(depth):
        layers += [
            torch.nn.Linear(prev, width),
            torch.nn.Tanh() if act == "tanh" else torch.nn.Sigmoid(),
        ]
        prev = width
    layers.append(torch.nn.Linear(prev, outputs))
    return from_torch(torch.nn.Sequential(*layers).double(), (2,))


def tanh_mlp(seed: int = 0, width: int = 20, depth: int = 6) -> Network:
    """2 inputs, ``depth`` layers of ``width`` tanh units, one output; torch's default init."""
    return smooth_mlp(seed, width, depth)


def outside_attack(
    net: Network, x: Tensor, pert: perturbation.Perturbation, restarts: int, steps: int
) -> float:
    """An independent attack at the input ``x`` (1, *in): projected Adam over theta in the box
    ``theta0 +- pert.radius``, cosine learning rate, half the starts near theta0 and half
    uniform in the box, maximising max_k |f_theta(x) - f_theta0(x)|_k."""
    gen = torch.Generator().manual_seed(1)
    nominal = net.param_tensors()
    near = (torch.arange(restarts) < restarts // 2).to(DTYPE)
    radius = {k: torch.as_tensor(r, dtype=DTYPE) for k, r in pert.radius.items()}
    starts = {}
    for k, v in ((k, nominal[k]) for k in radius):
        u = 2 * torch.rand((restarts, *v.shape), generator=gen, dtype=DTYPE) - 1
        starts[k] = (u * (1 - 0.99 * near.reshape(-1, *[1] * v.dim()))).requires_grad_()
    opt = torch.optim.Adam(list(starts.values()), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xs = x.expand(restarts, *x.shape[1:])
    base = net(xs).detach()
    best = 0.0
    for _ in range(steps):
        params = {k: nominal[k] + radius[k] * u for k, u in starts.items()}
        d = (net(xs, params) - base).flatten(1).abs().max(1).values
        best = max(best, float(d.detach().max()))
        opt.zero_grad()
        (-d.sum()).backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for u in starts.values():
                u.clamp_(-1, 1)
    return best


def test_witness_search_reaches_an_outside_attack_on_a_deep_tanh_net() -> None:
    """Deep tanh MLP (7 x 60, 10 outputs, about 23k parameters), delta 0.1 at a point: our
    lower is within 1% of (or above) a many-restart Adam attack over theta. (The search before
    the smooth-net search, a11daff: 8.90; this attack: 10.2; ours: 10.18; upper 10.41.)"""
    net = smooth_mlp(width=60, depth=7, outputs=10)
    x = torch.tensor([[-0.5, 0.3]], dtype=DTYPE)
    pert = perturbation.absolute(net, 0.1)
    with engine_threads(net):  # one thread, as the engine runs: 2 threads under load cost 15x
        reference = outside_attack(net, x, pert, restarts=16, steps=60)
    res = epsilon(net, pert, Box(x, x), Budget(timeout=2.0)).overall
    assert res.lower >= 0.99 * reference, (res.lower, reference)
    assert res.lower <= res.upper
