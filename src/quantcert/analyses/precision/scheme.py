"""A quantization scheme (formats for weights, biases, activations and the input) applied to
one network: the certified box every real quantization lies in, and that real quantization.

``prepare`` gives both views of one scheme, built from the same scales:

- ``net`` and ``pert``: the network with a ``QuantNoise`` node per quantized tensor and the
  box of every weight, bias and noise value (``format_perturbation`` + ``plan_activations``);
  the certificates bound this.
- ``run``: the network actually quantized: weights and biases rounded by their formats
  (``quantized_parameters``, bit-exact against onnxruntime / ml_dtypes), each quantized
  tensor passed through its real quantizer. ``run`` also returns the noise each quantizer
  added, so one real rounding is a point ``(theta, e)`` of the certified box: a witness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from quantcert.engines.perturbation import Perturbation, explicit
from quantcert.errors import InputError
from quantcert.formats import parse_format, parse_layer_map
from quantcert.formats.activations import ActivationPlan, Quantizer, plan_activations
from quantcert.formats.apply import format_perturbation, quantized_parameters
from quantcert.formats.base import Format
from quantcert.network import INPUT, Network
from quantcert.ops.base import DTYPE, Box


@dataclass(frozen=True)
class Scheme:
    """Formats per tensor kind; ``None`` keeps that kind at float. ``weights`` and ``biases``
    map layer (or initializer) names to formats, ``"*"`` for every other layer."""

    weights: Mapping[str, Format] = field(default_factory=dict)
    biases: Mapping[str, Format] = field(default_factory=dict)
    activations: Format | None = None
    input: Format | None = None
    #: Quantize only the activations read from these nodes (``None``: every site).
    activation_sources: frozenset[str] | None = None

    @classmethod
    def parse(
        cls,
        weights: str | None = None,
        biases: str | None = None,
        activations: str | None = None,
        input: str | None = None,
    ) -> Scheme:
        """From the CLI's strings (``--weights conv1=int4,*=int8`` and so on)."""
        scheme = cls(
            parse_layer_map(weights) if weights else {},
            parse_layer_map(biases) if biases else {},
            parse_format(activations) if activations else None,
            parse_format(input) if input else None,
        )
        if scheme.is_float():
            raise InputError("give at least one of --weights, --biases, --activations, --input")
        return scheme

    def is_float(self) -> bool:
        return (
            not self.weights
            and not self.biases
            and self.activations is None
            and (self.input is None)
        )

    def describe(self) -> dict[str, object]:
        return {
            "weights": {k: v.describe() for k, v in self.weights.items()},
            "biases": {k: v.describe() for k, v in self.biases.items()},
            "activations": None if self.activations is None else self.activations.describe(),
            "input": None if self.input is None else self.input.describe(),
            "activation_sources": None
            if self.activation_sources is None
            else sorted(self.activation_sources),
        }


def logit_network(net: Network) -> Network:
    """``net`` without its sigmoid/softmax head: labels and margins are read on logits."""
    if net.head is None:
        return net
    nodes = list(net.nodes)[:-1]
    return Network(nodes, net.input_shape, None, net.name, net.sources, net.fixed, net.origin)


@dataclass(frozen=True)
class Quantized:
    """One scheme on one network (see the module docstring). ``params`` holds the real
    quantized parameters (IR values), ``quantizers`` the real quantizer of each noise node."""

    scheme: Scheme
    net: Network
    pert: Perturbation
    params: dict[str, Tensor]
    plan: ActivationPlan

    @property
    def quantizers(self) -> dict[str, Quantizer]:
        return self.plan.quantizers

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        return self.plan.ranges

    def within(self, bounds: Mapping[str, Box]) -> Tensor:
        """(B,) bool: no activation saturates at these node bounds, so the box's noise
        radii (half a step, no saturation charged) hold there (``ActivationPlan.within``)."""
        return self.plan.within(bounds)

    def run(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The really quantized network on ``x`` (B, *input_shape): its output (B, *out)
        and, per noise node, the noise ``e = q(z) - z`` (B, *shape) it added (``.abs``)."""
        values: dict[str, Tensor] = {INPUT: x.to(DTYPE)}
        noise: dict[str, Tensor] = {}
        with torch.no_grad():
            for node in self.net.nodes:
                xs = [values[src] for src in node.inputs]
                if node.name in self.quantizers:
                    y = self.quantizers[node.name](xs[0])
                    noise[f"{node.name}.abs"] = y - xs[0]
                else:
                    y = node.op.forward(xs, self.net.node_params(node, self.params))
                values[node.name] = y
        return values[self.net.output_node], noise

    def rounding_point(self, x: Tensor) -> dict[str, Tensor]:
        """The real rounding at each row of ``x`` as a point of the box: the rounded weights
        and biases (unbatched, shared by every row) and per row the noise ``abs = e``,
        ``rel = 0`` (B, *shape)."""
        _, noise = self.run(x)
        params = dict(self.params)
        for key, e in noise.items():
            params[key] = e
            params[key[: -len(".abs")] + ".rel"] = torch.zeros_like(e)
        return params

    def outside(self, params: Mapping[str, Tensor], rows: int) -> Tensor:
        """(rows,) bool: the row's parameters leave the certified box (never, if sound).
        Unbatched parameters are shared by every row."""
        nominal = self.net.param_tensors()
        bad = torch.zeros(rows, dtype=torch.bool)
        for name, value in params.items():
            r = self.pert.radius.get(name, torch.zeros_like(nominal[name]))
            dev = (value - nominal[name]).abs() > r
            if value.dim() == nominal[name].dim():
                bad |= bool(dev.any())
            else:
                bad |= dev.flatten(1).any(1)
        return bad

    def describe(self) -> dict[str, object]:
        """The formats, the perturbed tensors, the quantized activations and their ranges."""
        return {
            **self.scheme.describe(),
            "tensors": sorted(self.pert.radius),
            "activation_noise_sites": sorted(self.quantizers),
            "activation_staircase_sites": sorted(self.plan.staircases),
            "activation_ranges": {k: list(v) for k, v in self.ranges.items()},
        }


def prepare(
    net: Network, scheme: Scheme, points: np.ndarray, calibration: np.ndarray | None = None
) -> Quantized:
    """``scheme`` on ``net`` (without its head) for queries at ``points`` (N, *input_shape).
    Activation scales come from ``calibration`` (onnxruntime's MinMax), or from ``points``
    themselves when none is given. Integer activations that round to nearest stand in the
    network as their exact staircase (``FakeQuant``, clipping included); other formats as a
    noise box whose radii leave saturation out: a certificate holds at a point only where
    ``within`` accepts its node bounds."""
    base = logit_network(net)
    x = torch.as_tensor(np.asarray(points, dtype=np.float64)).reshape(-1, *base.input_shape)
    weights = format_perturbation(base, scheme.weights, scheme.biases)
    params = quantized_parameters(base, scheme.weights, scheme.biases)
    data = calibration if calibration is not None else x.numpy()
    plan = plan_activations(
        base,
        scheme.activations,
        scheme.input,
        Box(x, x),
        data,
        weights.radius,
        "check",
        True,
        scheme.activation_sources,
    )
    merged = explicit(plan.net, {**weights.radius, **plan.noise})
    description = {**weights.description, **scheme.describe(), "kind": "formats"}
    return Quantized(
        scheme,
        plan.net,
        Perturbation(merged.radius, description),
        params,
        plan,
    )
