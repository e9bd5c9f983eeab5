"""Per-layer operator norms and the analytic bounds (seed 003 Eq. 3.8, product Lipschitz).

Golden values come from numpy SVDs of explicitly assembled matrices (the convolution's matrix
is built column by column from ``torch.nn.functional.conv2d`` on basis vectors), never from
the power iteration under test. A hypothesis property checks that random and gradient-ascent
perturbations never beat the product bound on random small nets with conv, pooling and
residual sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings

from quantcert.analyses.lipschitz import (
    circulant_bound,
    layer_norm,
    lipschitz_bound,
    maxpool_windows,
)
from quantcert.network import INPUT, Network, Node
from quantcert.ops import DTYPE, Affine, AvgPool, Conv, Identity, MaxPool, ReLU, Reshape, Scale, Sum


def _dense(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of a linear map on tensors of ``in_shape`` (batch excluded)."""
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=DTYPE).reshape(n, *in_shape)
    matrix: np.ndarray = fn(basis).reshape(n, -1).T.numpy()
    return matrix


def _sigma(matrix: np.ndarray) -> float:
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------- single layers
def test_affine_chain_matches_numpy_svd() -> None:
    g = _gen(0)
    w1 = torch.randn(7, 5, generator=g, dtype=DTYPE)
    w2 = torch.randn(3, 7, generator=g, dtype=DTYPE)
    net = Network(
        [
            Node("a", Affine(w1, torch.ones(7, dtype=DTYPE)), (INPUT,)),
            Node("id", Identity(), ("a",)),
            Node("b", Affine(w2), ("id",)),
        ],
        (5,),
    )
    s1, s2 = _sigma(w1.numpy()), _sigma(w2.numpy())
    bound = lipschitz_bound(net)
    assert bound.product == pytest.approx(s1 * s2, rel=1e-8)
    assert bound.product >= s1 * s2
    # Eq. 3.8 as printed: |theta_2| + |theta_2| |theta_1|.
    assert bound.eq_3_8 == pytest.approx(s2 + s1 * s2, rel=1e-8)
    # A linear net: the true gain is the norm of the product, below the product of norms.
    assert _sigma(w2.numpy() @ w1.numpy()) <= bound.product


CONVS = [
    dict(c_in=2, c_out=3, k=3, stride=1, padding=0, dilation=1, groups=1, size=6),
    dict(c_in=2, c_out=4, k=3, stride=2, padding=1, dilation=1, groups=1, size=7),
    dict(c_in=4, c_out=4, k=2, stride=1, padding=1, dilation=2, groups=2, size=6),
    dict(c_in=3, c_out=2, k=3, stride=3, padding=0, dilation=1, groups=1, size=9),
    dict(c_in=1, c_out=2, k=1, stride=2, padding=0, dilation=1, groups=1, size=5),
]


@pytest.mark.parametrize("cfg", CONVS)
def test_conv_operator_norm_matches_dense_svd(cfg: dict[str, int]) -> None:
    g = _gen(cfg["size"])
    w = torch.randn(
        cfg["c_out"], cfg["c_in"] // cfg["groups"], cfg["k"], cfg["k"], generator=g, dtype=DTYPE
    )
    op = Conv(
        w, None, (cfg["stride"],) * 2, (cfg["padding"],) * 2, (cfg["dilation"],) * 2, cfg["groups"]
    )
    shape = (cfg["c_in"], cfg["size"], cfg["size"])
    dense = _dense(
        lambda x: F.conv2d(
            x, w, None, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"]
        ),
        shape,
    )
    true = _sigma(dense)
    norm = layer_norm(Node("c", op, (INPUT,)), (1, *shape), iters=2000)
    assert norm.estimate == pytest.approx(true, rel=1e-6)
    assert norm.estimate <= true * (1 + 1e-12)
    assert norm.upper >= true
    assert circulant_bound(op, (1, *shape)) >= true * (1 - 1e-12)


def test_avgpool_norm_matches_dense_svd() -> None:
    op = AvgPool((3, 3), (2, 2), (1, 1), count_include_pad=False)
    shape = (2, 7, 7)
    true = _sigma(_dense(op.lin, shape))
    norm = layer_norm(Node("p", op, (INPUT,)), (1, *shape), iters=2000)
    assert norm.estimate == pytest.approx(true, rel=1e-6)
    assert norm.upper >= true


@pytest.mark.parametrize(
    "kernel,stride,padding,size",
    [
        (3, 1, 0, 6),
        (3, 2, 1, 7),
        (2, 2, 0, 6),
        (4, 4, 0, 8),
        (3, 1, 1, 5),
    ],
)
def test_maxpool_bound_counts_windows_and_is_attained(
    kernel: int, stride: int, padding: int, size: int
) -> None:
    op = MaxPool((kernel, kernel), (stride, stride), (padding, padding))
    counts = np.zeros((size, size))  # brute force: windows covering each input
    n_out = (size + 2 * padding - kernel) // stride + 1
    for a in range(n_out):
        for b in range(n_out):
            r0, c0 = a * stride - padding, b * stride - padding
            counts[max(r0, 0) : r0 + kernel, max(c0, 0) : c0 + kernel] += 1
    m = int(counts.max())
    assert maxpool_windows(op, (1, 1, size, size)) == m
    bound = layer_norm(Node("m", op, (INPUT,)), (1, 1, size, size)).upper
    assert bound == pytest.approx(math.sqrt(m))
    # A spike on the most covered input (over a very negative background) moves every
    # window it is in by its height: gain sqrt(m), so the bound is attained.
    i, j = np.unravel_index(np.argmax(counts), counts.shape)
    base = torch.full((1, 1, size, size), -10.0, dtype=DTYPE)
    spike = base.clone()
    spike[0, 0, i, j] = 0.0
    gain = float((op.forward([spike], {}) - op.forward([base], {})).norm() / 10.0)
    assert gain == pytest.approx(math.sqrt(m))


def test_residual_sum_adds_branches_and_scale_uses_max() -> None:
    g = _gen(3)
    a = torch.randn(4, 4, generator=g, dtype=DTYPE)
    scale = torch.tensor([0.5, -3.0, 2.0, 1.0], dtype=DTYPE)
    net = Network(
        [
            Node("s", Scale(scale, torch.zeros(4, dtype=DTYPE)), (INPUT,)),
            Node("fc", Affine(a), ("s",)),
            Node("add", Sum((1.0, 1.0)), ("fc", "s")),
        ],
        (4,),
    )
    bound = lipschitz_bound(net)
    assert bound.product == pytest.approx(3.0 * (1.0 + _sigma(a.numpy())), rel=1e-8)
    true = _sigma((np.eye(4) + a.numpy()) @ np.diag(scale.numpy()))
    assert true <= bound.product


# --------------------------------------------------------------------- property
def _random_net(seed: int, residual: bool, pool: str) -> Network:
    g = _gen(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=DTYPE) / math.sqrt(shape[1] * 2)

    pool_op = MaxPool((2, 2), (1, 1)) if pool == "max" else AvgPool((2, 2), (2, 2))
    nodes = [
        Node("c1", Conv(rnd(3, 1, 3, 3), rnd(3, 3)[0], padding=(1, 1)), (INPUT,)),
        Node("r1", ReLU(), ("c1",)),
        Node("c2", Conv(rnd(3, 3, 3, 3), None, padding=(1, 1)), ("r1",)),
    ]
    last = "c2"
    if residual:
        nodes.append(Node("add", Sum((1.0, 1.0)), ("c2", "r1")))
        last = "add"
    nodes += [Node("r2", ReLU(), (last,)), Node("p", pool_op, ("r2",))]
    out = 3 * (5 * 5 if pool == "max" else 3 * 3)
    nodes += [Node("flat", Reshape((out,)), ("p",)), Node("fc", Affine(rnd(4, out) * 3), ("flat",))]
    return Network(nodes, (1, 6, 6))


def _ascent(net: Network, x: torch.Tensor, d: torch.Tensor, steps: int) -> float:
    """Maximise |f(x + d) - f(x)| / |d| over d by gradient ascent; the best ratio seen."""
    d = d.clone().requires_grad_(True)
    opt = torch.optim.Adam([d], lr=0.05 * float(d.detach().norm()))
    y0 = net.logits(x).detach()
    best = 0.0
    for _ in range(steps):
        ratio = (net.logits(x + d) - y0).norm() / d.norm()
        best = max(best, float(ratio.detach()))
        opt.zero_grad()
        (-ratio).backward()
        opt.step()
    return best


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    residual=st.booleans(),
    pool=st.sampled_from(["max", "avg"]),
    scale=st.sampled_from([1e-3, 0.1, 1.0]),
)
def test_bound_never_beaten_by_sampled_perturbations(
    seed: int, residual: bool, pool: str, scale: float
) -> None:
    net = _random_net(seed, residual, pool)
    bound = lipschitz_bound(net, iters=200)
    assert bound.eq_3_8 >= bound.product
    g = _gen(seed + 1)
    x = torch.randn(8, 1, 6, 6, generator=g, dtype=DTYPE)
    d = torch.randn(8, 1, 6, 6, generator=g, dtype=DTYPE) * scale
    with torch.no_grad():
        dy = net.logits(x + d) - net.logits(x)
        gains = dy.flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)
    assert float(gains.max()) <= bound.product
    assert _ascent(net, x[:1], d[:1], 40) <= bound.product
