"""Shared fixtures: small networks built by hand, and the paths of shipped test models."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

import witness_replay
from quantcert.network import INPUT, Network, Node
from quantcert.ops import DTYPE, Affine, Box, Identity, LeakyReLU, ReLU, Sigmoid, Tanh

# CI runs a fixed, reproducible set of examples; local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

DATA = Path(__file__).parent / "data"
MODELS = DATA / "models"
#: The networks the package ships (seed 003's networks), also used as test models.
PACKAGED = Path(__file__).resolve().parents[1] / "src" / "quantcert" / "data" / "models"
SHARED = Path(__file__).resolve().parents[2] / "shared"

ACTIVATIONS = {
    "relu": ReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "identity": Identity,
    "leaky": lambda: LeakyReLU(0.1),
}

CAT = (-3.51518067, 0.07577862, 1.18118408)


def mlp(
    sizes: list[int], act: str, seed: int = 0, head: bool = False, scale: float = 1.0
) -> Network:
    """A random fully connected network; ``head`` adds a sigmoid output."""
    gen = torch.Generator().manual_seed(seed)
    nodes, prev = [], INPUT
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = torch.randn(b, a, generator=gen, dtype=DTYPE) * scale / a**0.5
        nodes.append(
            Node(f"fc{i}", Affine(w, torch.randn(b, generator=gen, dtype=DTYPE) * 0.5), (prev,))
        )
        prev = f"fc{i}"
        if i < len(sizes) - 2:
            nodes.append(Node(f"act{i}", ACTIVATIONS[act](), (prev,)))
            prev = f"act{i}"
    if head:
        nodes.append(Node("out", Sigmoid(), (prev,)))
    return Network(nodes, (sizes[0],), head="out" if head else None)


def cat_network() -> Network:
    c0, c1, c2 = CAT
    w = torch.tensor([[c1, c2]], dtype=DTYPE)
    b = torch.tensor([c0], dtype=DTYPE)
    return Network(
        [Node("fc", Affine(w, b), (INPUT,)), Node("out", Sigmoid(), ("fc",))], (2,), head="out"
    )


def exact_local_2layer(net: Network, x: np.ndarray, delta: float, relu: bool) -> float:
    """Exact max over the parameter box of |sigmoid(z2) change| for a 2-h-1 net at ``x``.

    Each hidden unit has its own parameters, so the maximum separates: unit j's value ranges
    over ``act([pre_j - r, pre_j + r])`` with ``r = delta (|x|_1 + 1)`` and its outgoing weight
    over ``[w_j - delta, w_j + delta]``; their product is extreme at a corner.
    """
    p = {k: v.numpy() for k, v in net.param_tensors().items()}
    w1, b1, w2, b2 = p["fc0.weight"], p["fc0.bias"], p["fc1.weight"][0], float(p["fc1.bias"][0])
    pre = w1 @ x + b1
    r = delta * (np.abs(x).sum() + 1)
    act = (lambda v: np.maximum(v, 0)) if relu else (lambda v: v)
    a_lo, a_hi = act(pre - r), act(pre + r)
    corners = np.stack([(w2 + s * delta) * a for s in (-1, 1) for a in (a_lo, a_hi)])
    z_max = b2 + delta + corners.max(0).sum()
    z_min = b2 - delta + corners.min(0).sum()
    z0 = w2 @ act(pre) + b2
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    return max(sig(z_max) - sig(z0), sig(z0) - sig(z_min))


def sampled_max(net: Network, delta: float, box: Box, n: int = 4000, seed: int = 0) -> torch.Tensor:
    """Largest |f_theta(x) - f_theta0(x)| per output over random corners of the parameter box."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = box.lo[0], box.hi[0]
    x = lo + (hi - lo) * torch.rand((n, *lo.shape), generator=gen, dtype=DTYPE)
    params = {
        k: v + delta * (2 * torch.randint(0, 2, (n, *v.shape), generator=gen).to(DTYPE) - 1)
        for k, v in net.param_tensors().items()
    }
    with torch.no_grad():
        return (net(x, params) - net(x)).abs().max(0).values


def conv_residual_net(seed: int) -> Network:
    """conv -> relu -> conv (+ skip) -> relu -> maxpool -> flatten -> affine."""
    from quantcert.ops import Conv, MaxPool, ReLU, Reshape, Sum

    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=DTYPE) * 0.5

    nodes = [
        Node("c1", Conv(rnd(3, 1, 3, 3), rnd(3), padding=(1, 1)), (INPUT,)),
        Node("r1", ReLU(), ("c1",)),
        Node("c2", Conv(rnd(3, 3, 3, 3), rnd(3), padding=(1, 1)), ("r1",)),
        Node("add", Sum((1.0, 1.0)), ("c2", "r1")),
        Node("r2", ReLU(), ("add",)),
        Node("pool", MaxPool((2, 2), (2, 2)), ("r2",)),
        Node("flat", Reshape((12,)), ("pool",)),
        Node("fc", Affine(rnd(2, 12), rnd(2)), ("flat",)),
    ]
    return Network(nodes, (1, 4, 4))


def check_splitting_tightens_soundly(net: Network, box: Box, delta: float, samples: int) -> None:
    """At a point, branch and bound (1 s) may only lower the root's upper bound, never below
    a sampled change, and keeps lower <= upper."""
    from quantcert.analyses.epsilon import Budget, epsilon
    from quantcert.engines import perturbation

    pert = perturbation.absolute(net, delta)
    root = epsilon(net, pert, box, Budget(gap=1e9)).overall
    split = epsilon(net, pert, box, Budget(gap=1e-6, timeout=1)).overall
    assert split.upper <= root.upper + 1e-12
    assert float(sampled_max(net, delta, box, n=samples).max()) <= split.upper
    assert split.lower <= split.upper


# Every epsilon and flip witness the suite produces is replayed when the session ends.
witness_replay.install()


@pytest.fixture(scope="session", autouse=True)
def replay_every_witness() -> Iterator[None]:
    yield
    problems = witness_replay.check_all()
    assert not problems, f"{len(problems)} witnesses do not replay: " + "; ".join(problems[:10])
