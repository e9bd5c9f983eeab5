"""Label flips (Defs. 3-4) against closed forms: a verified answer is never beaten by a real
flip, and a falsified answer carries a witness whose labels really differ."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import torch
from hypothesis import given, settings

from conftest import CAT, PACKAGED, cat_network, mlp
from quantcert import load
from quantcert.analyses.epsilon import Budget, input_box
from quantcert.analyses.flip import flip, labels, threshold
from quantcert.engines import perturbation


@settings(max_examples=40, deadline=None)
@given(h=st.floats(6.3, 20.5), w=st.floats(2.0, 3.9), delta=st.floats(1e-4, 0.02))
def test_cat_local_flip_matches_the_closed_form(h: float, w: float, delta: float) -> None:
    """One sigmoid neuron: the logit moves by at most r = delta (1 + H + W), reached at a
    corner, so the label can flip iff the nominal logit lies within r of 0."""
    c0, c1, c2 = CAT
    z = c0 + c1 * h + c2 * w
    r = delta * (1 + h + w)
    net = cat_network()
    x = np.array([h, w])
    res = flip(net, perturbation.absolute(net, delta), input_box(net, x, x), Budget(timeout=10))
    can_flip = (z >= 0 and z - r < 0) or (z < 0 and z + r >= 0)
    if abs(abs(z) - r) > 1e-9:  # away from the exact tie, the answer is decided and right
        assert res.overall.status == ("falsified" if can_flip else "verified")


def _really_flips(net, res) -> bool:  # type: ignore[no-untyped-def]
    w = res.overall.witness
    x = torch.as_tensor(w.x, dtype=torch.float64).reshape(1, *net.input_shape)
    nominal = net.param_tensors()
    params = {k: (nominal[k] + torch.as_tensor(v)).unsqueeze(0) for k, v in w.param_offsets.items()}
    t = threshold(net, None)
    return bool(labels(net.logits(x, params), t) != labels(net.logits(x), t))


def test_mnist_flip_answers_are_backed() -> None:
    net = load(PACKAGED / "mnistfc" / "mnist-net_256x2.onnx")
    img = np.load(PACKAGED.parent / "mnist_test.npz")["images"][0].reshape(-1) / 255.0
    box = input_box(net, img, img)
    small = flip(net, perturbation.absolute(net, 1e-3), box, Budget(timeout=30))
    large = flip(net, perturbation.absolute(net, 2e-2), box, Budget(timeout=30))
    assert small.overall.status == "verified" and small.overall.upper < 0
    assert large.overall.status == "falsified" and _really_flips(net, large)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 500))
def test_verified_global_flip_is_never_beaten_by_sampling(seed: int) -> None:
    net = mlp([2, 4, 3], "relu", seed=seed)
    delta = 0.01
    lo, hi = np.array([0.5, 0.5]), np.array([0.6, 0.6])
    res = flip(net, perturbation.absolute(net, delta), input_box(net, lo, hi), Budget(timeout=10))
    if res.overall.status == "falsified":
        assert _really_flips(net, res)
        return
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(lo) + torch.as_tensor(hi - lo) * torch.rand(
        3000, 2, generator=gen, dtype=torch.float64
    )
    params = {
        k: v + delta * (2 * torch.randint(0, 2, (3000, *v.shape), generator=gen).to(v) - 1)
        for k, v in net.param_tensors().items()
    }
    flips = (net(x, params).argmax(1) != net(x).argmax(1)).any()
    if res.overall.status == "verified":
        assert not bool(flips)
