"""``quantcert info``: what a model is made of."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from quantcert.network import Network


@dataclass(frozen=True)
class LayerInfo:
    name: str
    op: str
    inputs: tuple[str, ...]
    output_shape: tuple[int, ...]


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple[int, ...]
    count: int
    min: float
    max: float


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    head: str | None
    layers: tuple[LayerInfo, ...]
    params: tuple[ParamInfo, ...]
    total_params: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        lines = [
            f"model {self.name}: input {self.input_shape} -> output {self.output_shape}"
            + (f" (head: {self.head})" if self.head else " (logits)"),
            "",
            f"{'layer':<28} {'operation':<36} output shape",
        ]
        lines += [f"{ly.name:<28} {ly.op:<36} {ly.output_shape}" for ly in self.layers]
        lines += ["", f"{'parameter':<32} {'shape':<20} {'count':>9} {'min':>12} {'max':>12}"]
        lines += [
            f"{p.name:<32} {p.shape!s:<20} {p.count:>9} {p.min:>12.5g} {p.max:>12.5g}"
            for p in self.params
        ]
        lines.append(f"total parameters: {self.total_params}")
        return "\n".join(lines)


def describe(net: Network) -> ModelInfo:
    shapes = net.shapes()
    layers = tuple(LayerInfo(n.name, n.op.describe(), n.inputs, shapes[n.name]) for n in net.nodes)
    params = tuple(
        ParamInfo(name, tuple(t.shape), int(t.numel()), float(t.min()), float(t.max()))
        for name, t in net.param_tensors().items()
    )
    return ModelInfo(
        net.name,
        net.input_shape,
        shapes[net.output_node],
        net.head,
        layers,
        params,
        net.num_params(),
    )
