"""Seed 003's analytic bound (Eq. 3.8) from per-layer L2 operator norms, and the plain
product Lipschitz bound that soundly bounds ``|dy| / |dx|`` for one input perturbation.

Per operation (``y = op(z)``), ``estimate`` is attained (power iteration returns a unit
vector ``v`` with ``|op v| = estimate``, so it is a lower bound on the operator norm) and
``upper`` is sound (float64 rounding covered by a relative margin ``REL_MARGIN``):

- ``Affine``: the spectral norm of the weight by SVD (estimate = upper up to the margin).
- ``Conv``: power iteration on the convolution and its transpose (the convolution as a
  linear operator, never the kernel tensor's norm); ``upper`` = min of the circulant bound
  (the zero-padded, strided convolution is a submatrix of the circular convolution on the
  padded grid, whose norm is the largest singular value of the kernel's 2-D DFT over all
  frequencies) and Hoelder's ``sqrt(|A|_1 |A|_inf)``.
- ``AvgPool``: power iteration; ``upper`` by Hoelder (its coefficients are non-negative).
- ``Scale``: ``max |scale|`` (diagonal); ``Reshape``, zero ``Pad``: 1 (isometries).
- ReLU, LeakyReLU (slope <= 1), Identity, Tanh: 1-Lipschitz; Sigmoid: 1/4.
- ``MaxPool``: ``|max(a) - max(b)| <= |a - b|_inf <= |a - b|_2`` per window, and each input
  lies in at most ``m`` windows, so ``sqrt(m)`` (1 without overlap; overlapping windows are
  not 1-Lipschitz in L2 in general).
- ``Sum`` (residual add): the Lipschitz constant of a sum is at most the sum over branches.

On the DAG, ``lip[node]`` bounds the map input -> node (composition multiplies, ``Sum`` adds
branches) and ``suffix[node]`` bounds the map node -> logits with every node that does not
depend on it held fixed (reverse accumulation). ``product = suffix[input]`` is the sound bound.

Eq. 3.8 as printed, ``sum_i prod_{j<i} |theta_{n-j}|``, sums the products of the last ``i``
layer norms: one term per point where rounding error enters a layer (the network input, then
the input of every later weighted layer), each the gain from that point to the output. On a
DAG we sum ``suffix`` over the distinct input nodes of weighted layers (Affine, Conv), those
with no weighted layer upstream counted once as the network input. It is never smaller than
``product`` (the product is its first term): it bounds the accumulated effect of a unit
perturbation at every layer at once, not the gain of one input perturbation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from quantcert.errors import InputError
from quantcert.network import INPUT, Network, Node
from quantcert.ops import (
    Affine,
    AvgPool,
    BatchNorm,
    Conv,
    Identity,
    LeakyReLU,
    MaxPool,
    Op,
    Pad,
    Reshape,
    Scale,
    Sigmoid,
    Sum,
    Tanh,
)
from quantcert.ops.base import DTYPE

#: Relative margin on every computed norm: SVD, FFT and sums in float64 err far less.
REL_MARGIN = 1e-9

Linear = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LayerNorm:
    """One node's L2 gain: ``estimate`` attained (lower bound), ``upper`` sound."""

    node: str
    op: str
    estimate: float
    upper: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op": self.op,
            "estimate": self.estimate,
            "upper": self.upper,
            "method": self.method,
        }


@dataclass(frozen=True)
class LipschitzBound:
    """Per-layer norms, the sound product bound (input -> logits), Eq. 3.8 as printed, the
    same two from the attained estimates, and ``suffix``: node -> logits bounds."""

    layers: tuple[LayerNorm, ...]
    product: float
    eq_3_8: float
    product_estimate: float
    eq_3_8_estimate: float
    suffix: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "lipschitz_product": self.product,
            "eq_3_8": self.eq_3_8,
            "lipschitz_product_estimate": self.product_estimate,
            "eq_3_8_estimate": self.eq_3_8_estimate,
            "layers": [layer.to_dict() for layer in self.layers],
            "suffix": dict(self.suffix),
        }


# ----------------------------------------------------------------------- linear operators
def power_iteration(
    apply: Linear,
    adjoint: Linear,
    shape: tuple[int, ...],
    iters: int = 300,
    tol: float = 1e-12,
    seed: int = 0,
) -> tuple[float, Tensor]:
    """Largest singular value of a linear map on tensors of ``shape`` (with batch 1):
    iterate ``v <- A^T A v / |A^T A v|``. Returns ``(|A v|, v)`` with ``|v| = 1``: an
    attained value, so a lower bound on the operator norm."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=gen, dtype=DTYPE)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(iters):
        u = apply(v)
        new = float(u.norm())
        w = adjoint(u)
        norm = float(w.norm())
        if norm == 0.0:
            return 0.0, v
        v = w / norm
        if abs(new - sigma) <= tol * max(new, 1e-300):
            sigma = new
            break
        sigma = new
    return float(apply(v).norm()), v


def _vjp_adjoint(fn: Linear, shape: tuple[int, ...]) -> Linear:
    vjp = torch.func.vjp(fn, torch.zeros(shape, dtype=DTYPE))[1]
    return lambda u: vjp(u)[0]


def holder_bound(
    abs_apply: Linear, abs_adjoint: Linear, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> float:
    """``sqrt(|A|_1 |A|_inf)`` given ``|A|`` and ``|A|^T``: max column and row sums."""
    rows = float(abs_apply(torch.ones(in_shape, dtype=DTYPE)).max())
    cols = float(abs_adjoint(torch.ones(out_shape, dtype=DTYPE)).max())
    return math.sqrt(rows * cols)


def _dense_kernel(op: Conv) -> Tensor:
    """The kernel (O, C, kh, kw) of all channels, zero between groups."""
    w = op.params["weight"]
    o, ipg = w.shape[:2]
    opg = o // op.groups
    dense = torch.zeros((o, ipg * op.groups, *w.shape[2:]), dtype=DTYPE)
    for g in range(op.groups):
        dense[g * opg : (g + 1) * opg, g * ipg : (g + 1) * ipg] = w[g * opg : (g + 1) * opg]
    return dense


def _phase_kernel(op: Conv) -> Tensor:
    """The strided, dilated kernel as a stride-1 kernel on the polyphase channels: tap
    ``(i, j)`` reads padded input ``(a s + i d, ...)`` = phase ``(i d mod s)`` at offset
    ``floor(i d / s)``. Returns (O, C * sh * sw, qh, qw)."""
    w = _dense_kernel(op)
    o, c, kh, kw = w.shape
    (sh, sw), (dh, dw) = op.stride, op.dilation
    qh, qw = (dh * (kh - 1)) // sh + 1, (dw * (kw - 1)) // sw + 1
    out = torch.zeros((o, c, sh, sw, qh, qw), dtype=DTYPE)
    for i in range(kh):
        for j in range(kw):
            ri, qi = (i * dh) % sh, (i * dh) // sh
            rj, qj = (j * dw) % sw, (j * dw) // sw
            out[:, :, ri, rj, qi, qj] = w[:, :, i, j]
    return out.reshape(o, c * sh * sw, qh, qw)


def circulant_bound(op: Conv, in_shape: tuple[int, ...]) -> float:
    """An upper bound on the convolution's norm (``in_shape`` = (1, C, H, W)): zero padding
    and the polyphase split are isometries, and the stride-1 correlation on the phase grid
    is a submatrix of the circular one, whose norm is the largest singular value of the
    kernel's 2-D DFT over all frequencies."""
    kernel = _phase_kernel(op)
    grid_h = -(-(in_shape[-2] + 2 * op.padding[0]) // op.stride[0])
    grid_w = -(-(in_shape[-1] + 2 * op.padding[1]) // op.stride[1])
    grid = torch.zeros((*kernel.shape[:2], grid_h, grid_w), dtype=DTYPE)
    grid[:, :, : kernel.shape[2], : kernel.shape[3]] = kernel
    spectrum = torch.fft.fft2(grid).permute(2, 3, 0, 1)  # (Q_h, Q_w, O, C s^2)
    return float(torch.linalg.matrix_norm(spectrum, ord=2).max())


def _conv_norm(node: Node, in_shape: tuple[int, ...], iters: int, seed: int) -> LayerNorm:
    op = node.op
    assert isinstance(op, Conv)
    w = op.params["weight"]
    out_shape = (1, *op._conv(torch.zeros(in_shape, dtype=DTYPE), w).shape[1:])
    size = torch.Size(in_shape)

    def apply(v: Tensor) -> Tensor:
        return op._conv(v, w)

    def adjoint(u: Tensor) -> Tensor:
        return op._transpose(u.unsqueeze(0), w, size)[0]

    est, _ = power_iteration(apply, adjoint, in_shape, iters, seed=seed)
    holder = holder_bound(
        lambda v: op._conv(v, w.abs()),
        lambda u: op._transpose(u.unsqueeze(0), w.abs(), size)[0],
        in_shape,
        out_shape,
    )
    upper = min(holder, circulant_bound(op, in_shape))
    return LayerNorm(
        node.name,
        op.describe(),
        est,
        max(upper, est) * (1 + REL_MARGIN),
        "power iteration; circulant/Hoelder upper",
    )


def maxpool_windows(op: MaxPool, in_shape: tuple[int, ...]) -> int:
    """Largest number of pooling windows that one input element belongs to."""
    worst = 1
    dims = zip(in_shape[-2:], op.kernel, op.stride, op.padding, op.dilation, strict=True)
    for size, k, s, p, d in dims:
        n_out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        counts = [sum(1 for a in range(n_out) if _tap(i - (a * s - p), k, d)) for i in range(size)]
        worst *= max(counts)
    return worst


def _tap(offset: int, kernel: int, dilation: int) -> bool:
    """Whether an input ``offset`` places after a window's start is one of its taps."""
    return 0 <= offset <= dilation * (kernel - 1) and offset % dilation == 0


def _fixed(node: Node, value: float, method: str) -> LayerNorm:
    return LayerNorm(node.name, node.op.describe(), value, value, method)


def _activation_norm(node: Node) -> LayerNorm | None:
    op = node.op
    if isinstance(op, LeakyReLU):
        return _fixed(node, op.lipschitz, "LeakyReLU: max(1, |slope|)")
    if isinstance(op, Identity | Tanh):
        return _fixed(node, 1.0, "1-Lipschitz activation")
    if isinstance(op, Sigmoid):
        return _fixed(node, 0.25, "sigmoid: |s'| <= 1/4")
    return None


def layer_norm(node: Node, in_shape: tuple[int, ...], iters: int = 300, seed: int = 0) -> LayerNorm:
    """The L2 gain of one single-input node; ``in_shape`` includes a batch dimension of 1."""
    op: Op = node.op
    act = _activation_norm(node)
    if act is not None:
        return act
    if isinstance(op, Affine):
        w = op.params["weight"]
        sigma = float(torch.linalg.matrix_norm(w, ord=2))
        return LayerNorm(node.name, op.describe(), sigma, sigma * (1 + REL_MARGIN), "SVD")
    if isinstance(op, Conv):
        return _conv_norm(node, in_shape, iters, seed)
    if isinstance(op, Reshape | Pad):
        return _fixed(node, 1.0, "isometry")
    if isinstance(op, Scale):
        return _fixed(node, float(op.scale.abs().max()), "max |scale|")
    if isinstance(op, BatchNorm):
        bound = float(op.scale().abs().max()) * (1 + REL_MARGIN)
        return _fixed(node, bound, "batch norm: max |gamma / sqrt(var + eps)|")
    if isinstance(op, MaxPool):
        m = maxpool_windows(op, in_shape)
        return _fixed(node, math.sqrt(m), f"sqrt({m} windows per input)")
    if isinstance(op, AvgPool):
        out_shape = (1, *op.lin(torch.zeros(in_shape, dtype=DTYPE)).shape[1:])
        adjoint = _vjp_adjoint(op.lin, in_shape)
        est, _ = power_iteration(op.lin, adjoint, in_shape, iters, seed=seed)
        upper = max(holder_bound(op.lin, adjoint, in_shape, out_shape), est)
        return LayerNorm(
            node.name,
            op.describe(),
            est,
            upper * (1 + REL_MARGIN),
            "power iteration; Hoelder upper",
        )
    raise InputError(f"no Lipschitz bound for operation {op.describe()} (node {node.name})")


# ----------------------------------------------------------------------- the network
def logit_nodes(net: Network) -> list[Node]:
    """The nodes the logits depend on, in topological order."""
    needed = {net.logits_node}
    for node in reversed(net.nodes):
        if node.name in needed:
            needed.update(node.inputs)
    return [n for n in net.nodes if n.name in needed]


def _gains(node: Node, norms: dict[str, float]) -> list[float]:
    """The gain from each input of ``node`` to its output."""
    if isinstance(node.op, Sum):
        return [abs(c) for c in node.op.coeffs]
    return [norms[node.name]]


def suffix_bounds(net: Network, norms: dict[str, float]) -> dict[str, float]:
    """Per node (and ``INPUT``): a bound on the gain from that node's value to the logits."""
    nodes = logit_nodes(net)
    suffix = {n.name: 0.0 for n in nodes}
    suffix[INPUT] = 0.0
    suffix[net.logits_node] = 1.0
    for node in reversed(nodes):
        for src, gain in zip(node.inputs, _gains(node, norms), strict=True):
            suffix[src] += gain * suffix[node.name]
    return suffix


def eq_3_8(net: Network, suffix: dict[str, float]) -> float:
    """Eq. 3.8 as printed, generalised to a DAG (see the module docstring)."""
    weighted_above: dict[str, bool] = {INPUT: False}
    points: set[str] = set()
    for node in logit_nodes(net):
        upstream = any(weighted_above[s] for s in node.inputs)
        if isinstance(node.op, Affine | Conv):
            points.add(node.inputs[0] if upstream else INPUT)
        weighted_above[node.name] = upstream or isinstance(node.op, Affine | Conv)
    return sum(suffix[p] for p in points)


def lipschitz_bound(net: Network, iters: int = 300, seed: int = 0) -> LipschitzBound:
    """Per-layer norms, the product bound on ``|dy|/|dx|`` (input -> logits) and Eq. 3.8."""
    shapes = net.shapes()
    layers = []
    for node in logit_nodes(net):
        if isinstance(node.op, Sum):
            continue
        layers.append(layer_norm(node, (1, *shapes[node.inputs[0]]), iters, seed))
    upper = {layer.node: layer.upper for layer in layers}
    est = {layer.node: layer.estimate for layer in layers}
    suffix, suffix_est = suffix_bounds(net, upper), suffix_bounds(net, est)
    return LipschitzBound(
        layers=tuple(layers),
        product=suffix[INPUT],
        eq_3_8=eq_3_8(net, suffix),
        product_estimate=suffix_est[INPUT],
        eq_3_8_estimate=eq_3_8(net, suffix_est),
        suffix=suffix,
    )
