"""Per-layer sensitivity (beyond seed 003, its future work): perturb the output ``z`` of one
layer and measure the condition number of the rest of the network,
``kappa_l = (|dy| / |y|) / (|dz| / |z|)``, as input to per-layer activation bit-widths.

For each layer, DeepFool runs on the map ``z -> logits`` (every node that does not depend on
``z``, e.g. the other branch of a residual block, held at its clean value), then ``draws``
random perturbations of the same norm; and the analytic bound ``suffix_l |z| / |y|`` from
the Lipschitz bound of the rest of the network (``analytic.lipschitz``) holds for every
``dz``. Bits follow Eq. 5.1 from the largest kappa per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from quantcert.analyses.kappa import min_bits, stats, two_logits
from quantcert.analyses.lipschitz import LipschitzBound, lipschitz_bound, logit_nodes
from quantcert.engines.deepfool import LogitsFn, deepfool
from quantcert.network import INPUT, Network, Node
from quantcert.ops import Pad, Reshape, Scale
from quantcert.ops.base import DTYPE

#: Nodes whose output is not a layer output of its own (data movement, normalisation).
_SKIP = (Reshape, Pad, Scale)


@dataclass(frozen=True)
class LayerKappa:
    """One layer: its output shape, kappa statistics over the images (DeepFool, random,
    analytic bound) and the bits (Eq. 5.1) implied by the largest of each."""

    node: str
    op: str
    shape: tuple[int, ...]
    deepfool: dict[str, float]
    random: dict[str, float]
    analytic: dict[str, float]
    flipped: int

    @property
    def bits(self) -> dict[str, int]:
        return {
            "deepfool": min_bits(self.deepfool["max"]),
            "random": min_bits(self.random["max"]),
            "analytic": min_bits(self.analytic["max"]),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op": self.op,
            "shape": list(self.shape),
            "kappa_deepfool": self.deepfool,
            "kappa_random": self.random,
            "kappa_analytic": self.analytic,
            "flipped": self.flipped,
            "min_bits": self.bits,
        }


@dataclass(frozen=True)
class LayerKappaResult:
    model: str
    images: int
    layers: tuple[LayerKappa, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "images": self.images,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_markdown(self) -> str:
        rows = [
            "| layer | op | kappa DeepFool (max) | kappa random (max) | analytic bound (max) "
            "| bits DF / random / analytic |",
            "|---|---|---|---|---|---|",
        ]
        for layer in self.layers:
            b = layer.bits
            rows.append(
                f"| {layer.node} | {layer.op} | {layer.deepfool['max']:.4g} | "
                f"{layer.random['max']:.4g} | {layer.analytic['max']:.4g} | "
                f"{b['deepfool']} / {b['random']} / {b['analytic']} |"
            )
        return "\n".join(rows)


def downstream(net: Network, start: str) -> list[Node]:
    """The nodes (up to the logits) that depend on ``start``, in topological order."""
    dirty = {start}
    out = []
    for node in logit_nodes(net):
        if any(s in dirty for s in node.inputs):
            dirty.add(node.name)
            out.append(node)
    return out


def tail_function(net: Network, clean: dict[str, Tensor], start: str) -> LogitsFn:
    """``(z, index) -> logits`` with ``start``'s value replaced by ``z`` (N, *shape) and
    every other input taken from the clean values ``clean`` of the images ``index``."""
    nodes = downstream(net, start)
    recomputed = {n.name for n in nodes} | {start}
    frozen = {s for n in nodes for s in n.inputs if s not in recomputed}

    def fn(z: Tensor, index: Tensor) -> Tensor:
        values = {name: clean[name][index] for name in frozen}
        values[start] = z
        for node in nodes:
            values[node.name] = node.op.forward([values[s] for s in node.inputs], node.op.params)
        return values[net.logits_node] if nodes else z

    return fn


def layer_nodes(net: Network) -> list[str]:
    """The input and every layer output the logits depend on (not the logits themselves)."""
    names = [INPUT]
    for node in logit_nodes(net):
        if node.name != net.logits_node and not isinstance(node.op, _SKIP):
            names.append(node.name)
    return names


def _norms(t: Tensor) -> Tensor:
    out: Tensor = torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)
    return out


def _layer(
    net: Network,
    clean: dict[str, Tensor],
    name: str,
    bound: LipschitzBound,
    draws: int,
    gen: torch.Generator,
) -> LayerKappa:
    z, y = clean[name], clean[net.logits_node]
    fn = tail_function(net, clean, name)
    everyone = torch.arange(z.shape[0])
    df = deepfool(two_logits(fn) if y.shape[1] == 1 else fn, z)
    ratio = _norms(z) / _norms(y)
    with torch.no_grad():
        k_df = _norms(fn(z + df.perturbation, everyone) - y) / df.norm * ratio
        k_rand = torch.full_like(k_df, -math.inf)
        for _ in range(draws):
            r = torch.randn(z.shape, generator=gen, dtype=DTYPE)
            r = r * (df.norm / _norms(r)).reshape(-1, *[1] * (z.dim() - 1))
            k = _norms(fn(z + r, everyone) - y) / df.norm * ratio
            k_rand = torch.maximum(k_rand, torch.nan_to_num(k, nan=-math.inf))
    analytic = bound.suffix[name] * ratio
    op = "input" if name == INPUT else net.node(name).op.describe()
    return LayerKappa(
        name,
        op,
        tuple(z.shape[1:]),
        stats(k_df.numpy()),
        stats(k_rand.numpy()),
        stats(analytic.numpy()),
        int(df.flipped.sum()),
    )


def layer_kappa(
    net: Network,
    images: Tensor,
    draws: int = 10,
    seed: int = 0,
    nodes: list[str] | None = None,
    bound: LipschitzBound | None = None,
) -> LayerKappaResult:
    """Kappa of the rest of the network from each layer's output, over ``images``
    (N, *input_shape) float64 (keep N small: one DeepFool run per layer)."""
    x = torch.as_tensor(images, dtype=DTYPE)
    bound = lipschitz_bound(net) if bound is None else bound
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = net.evaluate(x, upto=net.logits_node)
    names = layer_nodes(net) if nodes is None else nodes
    layers = tuple(_layer(net, clean, name, bound, draws, gen) for name in names)
    return LayerKappaResult(net.name, int(x.shape[0]), layers)


def per_layer_bits(result: LayerKappaResult, method: str = "deepfool") -> dict[str, int]:
    """Bits per layer output (Eq. 5.1 on the largest kappa of ``method``)."""
    return {layer.node: layer.bits[method] for layer in result.layers}
