"""Certified kappa: a sound upper bound on max |f(x0 + dx) - f(x0)|_2 over |dx|_2 <= r.

Golden value: on a linear network the maximum is sigma_max(W) r exactly (numpy SVD). On random
small ReLU, convolutional and residual networks no sampled or gradient-ascent perturbation in
the ball beats the bound. On mnist-net_256x2, DeepFool's kappa <= certified kappa per image.
"""

from __future__ import annotations

import json

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

import quantcert.analyses.certified_ball as cb
from conftest import PACKAGED, mlp
from quantcert.analyses.certified_ball import ascent, crown_bytes_per_image
from quantcert.analyses.certified_kappa import certified_kappa
from quantcert.analyses.kappa import kappa
from quantcert.analyses.kappa_data import load_images
from quantcert.analyses.thesis import MNIST
from quantcert.engines.bounds import engine_threads
from quantcert.errors import InputError
from quantcert.intake import load
from quantcert.network import INPUT, Network, Node
from quantcert.ops import DTYPE, Affine, Conv, ReLU, Reshape, Sum

MLP = PACKAGED / "mnistfc" / "mnist-net_256x2.onnx"


def _linear(w: np.ndarray, b: np.ndarray) -> Network:
    return Network([Node("fc", Affine(torch.tensor(w), torch.tensor(b)), (INPUT,))], (w.shape[1],))


def _conv_net(seed: int, residual: bool) -> Network:
    """Conv -> ReLU -> Conv (+ the ReLU's output when ``residual``) -> ReLU -> Affine."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(3, 1, 3, 3, generator=g, dtype=DTYPE) * 0.6
    w2 = torch.randn(3, 3, 3, 3, generator=g, dtype=DTYPE) * 0.3
    fc = torch.randn(4, 3 * 25, generator=g, dtype=DTYPE) * 0.3
    b1 = torch.randn(3, generator=g, dtype=DTYPE) * 0.3
    nodes = [
        Node("c1", Conv(w1, b1, padding=(1, 1)), (INPUT,)),
        Node("r1", ReLU(), ("c1",)),
        Node("c2", Conv(w2, None, padding=(1, 1)), ("r1",)),
    ]
    last = "c2"
    if residual:
        nodes.append(Node("add", Sum((1.0, 1.0)), ("c2", "r1")))
        last = "add"
    nodes += [
        Node("r2", ReLU(), (last,)),
        Node("flat", Reshape((75,)), ("r2",)),
        Node("fc", Affine(fc, torch.randn(4, generator=g, dtype=DTYPE)), ("flat",)),
    ]
    return Network(nodes, (1, 5, 5))


def _sampled_dy(net: Network, x0: torch.Tensor, r: torch.Tensor, draws: int) -> torch.Tensor:
    """Largest |dy| (B,) over ``draws`` random points in each ball (on and inside the sphere)."""
    g = torch.Generator().manual_seed(0)
    best = torch.zeros(len(x0), dtype=DTYPE)
    shape = (-1, *([1] * (x0.dim() - 1)))
    with torch.no_grad():
        y0 = net.logits(x0)
        for i in range(draws):
            d = torch.randn(x0.shape, generator=g, dtype=DTYPE)
            scale = r if i % 2 == 0 else r * torch.rand(len(x0), generator=g, dtype=DTYPE)
            d = d * (scale / d.flatten(1).norm(dim=1)).reshape(shape)
            best = torch.maximum(best, (net.logits(x0 + d) - y0).norm(dim=1))
    return best


def _check_sound(net: Network, x0: torch.Tensor, r: torch.Tensor, method: str = "crown") -> None:
    cert = certified_kappa(net, x0, r, method=method, ascent_steps=40)  # type: ignore[arg-type]
    upper = cert.dy_upper
    with engine_threads(net):  # one thread: tiny tensors
        with torch.no_grad():
            y0 = net.logits(x0)
        attacked, _ = ascent(net, x0, r, y0, steps=60, seed=1)
        sampled = _sampled_dy(net, x0, r, 200)
    for found in (attacked.numpy(), sampled.numpy(), cert.ascent_dy):
        assert (found <= upper).all(), (found, upper)
    assert (cert.dy_upper <= cert.dy_lipschitz * (1 + 1e-6) + 1e-9).all()


# ----------------------------------------------------------------------- closed form
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), classes=st.integers(1, 5), dim=st.integers(1, 12))
def test_linear_network_bound_is_sigma_max_r(seed: int, classes: int, dim: int) -> None:
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(classes, dim)), rng.normal(size=classes)
    x0, r = rng.normal(size=(3, dim)), rng.uniform(0.01, 3.0, size=3)
    cert = certified_kappa(_linear(w, b), x0, r, ascent_steps=50)
    exact = np.linalg.svd(w, compute_uv=False)[0] * r  # max |W dx| over |dx| <= r
    assert (cert.dy_upper >= exact).all()
    # Tight up to the engine's stated float margin (relative 2**-32 of the magnitudes summed).
    margin = 1e-8 * (1 + np.abs(w).sum() * np.abs(x0).max() + np.abs(b).sum())
    np.testing.assert_allclose(cert.dy_upper, exact, rtol=1e-6, atol=margin)
    # The ascent is power iteration here: below the maximum, and close to it.
    assert (cert.ascent_dy <= exact * (1 + 1e-9)).all()
    np.testing.assert_allclose(cert.ascent_dy, exact, rtol=1e-2)
    y = x0 @ w.T + b
    scale = np.linalg.norm(x0, axis=1) / (np.linalg.norm(y, axis=1) * r)
    assert (cert.kappa >= exact * scale * (1 - 1e-12)).all()  # sound
    np.testing.assert_allclose(cert.kappa, exact * scale, rtol=1e-6, atol=margin * scale.max())


# ----------------------------------------------------------------------- random networks
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    width=st.integers(2, 12),
    depth=st.integers(1, 3),
    radius=st.floats(0.01, 3.0),
)
def test_no_perturbation_beats_the_bound_on_random_relu_mlps(
    seed: int, width: int, depth: int, radius: float
) -> None:
    net = mlp([4] + [width] * depth + [3], "relu", seed=seed, scale=1.5)
    x0 = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    _check_sound(net, x0, torch.full((4,), radius, dtype=DTYPE))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    residual=st.booleans(),
    radius=st.floats(0.05, 2.0),
    method=st.sampled_from(["crown", "ibp"]),
)
def test_no_perturbation_beats_the_bound_on_random_conv_and_residual_nets(
    seed: int, residual: bool, radius: float, method: str
) -> None:
    net = _conv_net(seed, residual)
    x0 = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    r = radius * torch.tensor([1.0, 0.5, 0.1], dtype=DTYPE)
    _check_sound(net, x0, r, method)


def test_crown_over_the_ball_beats_intervals_and_the_domain_restricts_it() -> None:
    net = mlp([6, 10, 10, 3], "relu", seed=3)
    x0 = torch.rand(5, 6, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    r = torch.full((5,), 0.2, dtype=DTYPE)
    crown, ibp = certified_kappa(net, x0, r), certified_kappa(net, x0, r, method="ibp")
    assert (crown.dy_engine <= ibp.dy_engine * (1 + 1e-9)).all()
    assert (crown.dy_engine < ibp.dy_engine).any()
    clipped = certified_kappa(net, x0, r, domain=(0.0, 1.0))
    assert (clipped.dy_engine <= crown.dy_engine * (1 + 1e-9)).all()
    y0 = net.logits(x0).detach()
    found, dx = ascent(net, x0, r, y0, steps=40, domain=(0.0, 1.0))
    assert ((x0 + dx >= 0) & (x0 + dx <= 1)).all()
    assert (dx.norm(dim=1) <= r * (1 + 1e-12)).all()
    assert (found.numpy() <= clipped.dy_upper).all()


def test_inputs_and_the_memory_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _conv_net(0, True)
    x0 = torch.randn(2, 25, dtype=DTYPE)  # flat images are reshaped to the input shape
    with pytest.raises(InputError, match="radii"):
        certified_kappa(net, x0, torch.tensor([1.0, -1.0]))
    with pytest.raises(InputError, match="do not fit"):
        certified_kappa(net, torch.zeros(2, 7), 1.0)
    with pytest.raises(InputError, match="outside the domain"):
        certified_kappa(net, x0, 1.0, domain=(10.0, 11.0))
    assert crown_bytes_per_image(net) > 0
    monkeypatch.setattr(cb, "MEMORY_BUDGET", 1000)
    cert = certified_kappa(net, x0, 0.5)
    assert cert.engine.startswith("ibp (crown would need")
    zero = certified_kappa(net, x0, 0.0)
    assert np.isnan(zero.kappa).all() and (zero.dy_upper < 1e-6).all()


# ----------------------------------------------------------------------- a real network
def test_measured_kappa_is_below_certified_kappa_on_mnist_net_256x2() -> None:
    net = load(MLP)
    data = load_images(MNIST, net.input_shape, 12)
    res = kappa(net, data.images, data.labels, method="certified", progress=False)
    cert = res.certified
    assert cert is not None and res.status == "certified"
    assert cert.engine == "crown" and cert.images == 12
    finite = np.isfinite(res.kappa)
    assert finite.all() and (res.kappa <= cert.kappa).all()
    assert (cert.ascent_kappa <= cert.kappa).all()
    assert res.lower is not None and res.upper is not None and res.lower <= res.upper
    d = json.loads(json.dumps(res.to_dict()))
    for key in ("mean", "median", "min", "max"):
        assert d["certified"]["kappa"][key] >= d["kappa"][key]
        assert d["certified"]["min_bits"][key] >= d["min_bits"][key]
    assert d["certified"]["violations"] == 0 and d["status"] == "certified"
    assert len(d["per_image"]["certified_kappa"]) == 12
    assert "measured <= certified on all 12 images: yes" in res.to_text()


def test_certified_kappa_at_a_chosen_radius_is_not_beaten() -> None:
    """``radius``: every image's ball has that L2 radius; random perturbations of that norm
    (and the ascent) never exceed the certified kappa."""
    from quantcert.analyses.kappa import kappa_of

    net = load(MLP)
    data = load_images(MNIST, net.input_shape, 4)
    res = kappa(net, data.images, None, method="certified", progress=False, radius=0.5)
    cert = res.certified
    assert cert is not None and np.all(cert.radius == 0.5)
    x = torch.as_tensor(data.images, dtype=DTYPE).reshape(4, *net.input_shape)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        dx = torch.randn(x.shape, generator=gen, dtype=DTYPE)
        dx = 0.5 * dx / dx.flatten(1).norm(dim=1).reshape(-1, *[1] * (x.dim() - 1))
        k, _ = kappa_of(net, x, dx)
        assert bool((k.numpy() <= cert.kappa).all())
    assert (cert.ascent_kappa <= cert.kappa).all()
    for method, radius in (("deepfool", 0.5), ("certified", 0.0), ("certified", -1.0)):
        with pytest.raises(InputError, match="--radius"):
            kappa(net, data.images, None, method=method, progress=False, radius=radius)
