"""The IR: a directed acyclic graph of ``Op`` nodes in topological order, one input, one output.

A ``Network`` is a ``torch.nn.Module``: ``net(x)`` returns what the source model returns
(probabilities after a sigmoid or softmax head, logits otherwise) for a batch ``x`` of shape
``(B, *input_shape)``. ``net.logits(x)`` returns the pre-head output seed 003 needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from quantcert.errors import InputError
from quantcert.ops.base import DTYPE, Op

INPUT = "input"


@dataclass(frozen=True)
class Node:
    """One operation: ``name = op(*inputs)``; ``inputs`` name earlier nodes or ``INPUT``."""

    name: str
    op: Op
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class ParamSource:
    """Where an IR parameter lives in the model file: ``ir = factor * view(file)``, where
    ``view`` transposes a 2-D tensor (``transpose``), then reshapes or broadcasts it to the IR
    shape. ``initializer`` names the file's tensor as stored, the one a quantizer rounds.

    Radii given on the file tensor map to the IR exactly (``radius``), and a witness maps
    back (``to_file``), so perturbations and witnesses are stated in the file's own terms.
    """

    initializer: str
    file_shape: tuple[int, ...]
    factor: float = 1.0
    transpose: bool = False

    def view(self, t: Tensor, ir_shape: tuple[int, ...]) -> Tensor:
        """A file-shaped tensor ``t`` laid out as the IR parameter (without the factor)."""
        t = t.reshape(self.file_shape)
        if self.transpose:
            t = t.T
        if t.numel() == 1:
            t = t.reshape(())
        if t.numel() == int(np.prod(ir_shape)):
            return t.reshape(ir_shape)
        return torch.broadcast_to(t, ir_shape)

    def radius(self, file_radius: Tensor, ir_shape: tuple[int, ...]) -> Tensor:
        """The IR radius of a file radius: ``|factor| * view(r)``, rounded up."""
        r = self.view(file_radius, ir_shape)
        if abs(self.factor) == 1.0:
            return r.clone()
        scaled = abs(self.factor) * r
        return torch.nextafter(scaled, torch.full_like(scaled, torch.inf))

    def to_file(self, ir_value: Tensor) -> np.ndarray | None:
        """The file tensor that gives ``ir_value`` (float64), or ``None`` for factor 0 (any
        value does). Broadcast entries take the last IR entry that reads them."""
        if self.factor == 0.0:
            return None
        v = (ir_value.detach().cpu().to(DTYPE) / self.factor).numpy()
        size = int(np.prod(self.file_shape))
        index = np.arange(size).reshape(self.file_shape)
        if self.transpose:
            index = index.T
        if size == 1:
            index = index.reshape(())
        index = index.reshape(v.shape) if index.size == v.size else np.broadcast_to(index, v.shape)
        out = np.zeros(size, dtype=np.float64)
        out[index.ravel()] = v.ravel()
        return out.reshape(self.file_shape)


class Network(torch.nn.Module):
    """A DAG of ops. ``input_shape`` excludes the batch dimension.

    ``head`` names the final node when it is a sigmoid/softmax head (``logits_node`` is then
    its input); otherwise ``logits_node`` is the output node.

    ``sources`` maps parameter names (``"<node>.<param>"``) to their tensors in the model file
    (ONNX intake); ``fixed`` names the file's constants that are not parameters (input
    normalisation, standalone elementwise constants), which no perturbation moves.
    ``origin`` is the model file's path, where there is one.
    """

    def __init__(
        self,
        nodes: list[Node],
        input_shape: tuple[int, ...],
        head: str | None = None,
        name: str = "network",
        sources: Mapping[str, ParamSource] | None = None,
        fixed: tuple[str, ...] = (),
        origin: str | None = None,
    ) -> None:
        super().__init__()
        self.sources: dict[str, ParamSource] = dict(sources or {})
        self.fixed = fixed
        self.origin = origin
        if not nodes:
            raise InputError("the network has no operations")
        self.nodes = nodes
        self.input_shape = tuple(input_shape)
        self.name = name
        self.output_node = nodes[-1].name
        self.head = head
        self.logits_node = nodes[-1].inputs[0] if head is not None else self.output_node
        self._check()

    # ----------------------------------------------------------------- structure
    def _check(self) -> None:
        seen = {INPUT}
        for node in self.nodes:
            for src in node.inputs:
                if src not in seen:
                    raise InputError(f"node {node.name!r} reads {src!r} before it is computed")
            seen.add(node.name)
            for pname, value in node.op.params.items():
                if not torch.isfinite(value).all():
                    raise InputError(f"parameter {node.name}.{pname} holds NaN or Inf values")

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def consumers(self) -> dict[str, list[str]]:
        """For each node (and ``INPUT``), the names of the nodes that read it."""
        users: dict[str, list[str]] = {INPUT: []}
        for node in self.nodes:
            users.setdefault(node.name, [])
            for src in node.inputs:
                users[src].append(node.name)
        return users

    def param_tensors(self) -> dict[str, Tensor]:
        """All parameter tensors, named ``"<node>.<param>"`` (weights and biases)."""
        return {
            f"{node.name}.{pname}": value
            for node in self.nodes
            for pname, value in node.op.params.items()
        }

    def map_ops(self, change: Callable[[Node], Op]) -> Network:
        """The same graph with each node's op replaced by ``change(node)``; the network itself
        when every op comes back unchanged."""
        ops = [change(n) for n in self.nodes]
        if all(op is n.op for op, n in zip(ops, self.nodes, strict=True)):
            return self
        nodes = [Node(n.name, op, n.inputs) for op, n in zip(ops, self.nodes, strict=True)]
        return Network(
            nodes, self.input_shape, self.head, self.name, self.sources, self.fixed, self.origin
        )

    def with_params(self, per_node: Mapping[str, Mapping[str, Tensor]]) -> Network:
        """The same graph with some nodes' parameters replaced (values may be batched: one
        parameter setting per batch element, for bounds over many parameter boxes)."""
        return self.map_ops(
            lambda n: n.op.with_params(per_node[n.name]) if n.name in per_node else n.op
        )

    def to_device(self, device: torch.device) -> Network:
        """The same graph with every op's tensors on ``device`` (itself when they are)."""
        return self.map_ops(lambda n: n.op.to(device))

    def file_params(self, ir_params: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
        """The model file's initializers (by name, float64) that give these IR parameter
        values; IR parameters without a source in the file are left out."""
        out: dict[str, np.ndarray] = {}
        for name, value in ir_params.items():
            src = self.sources.get(name)
            if src is None:
                continue
            mapped = src.to_file(value)
            if mapped is not None:
                out[src.initializer] = mapped
        return out

    def num_params(self) -> int:
        return sum(int(t.numel()) for t in self.param_tensors().values())

    def node_params(self, node: Node, overrides: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
        """The parameters ``node`` runs with: its own, replaced by any of ``overrides``."""
        own = node.op.params
        if not overrides:
            return own
        return {p: overrides.get(f"{node.name}.{p}", v) for p, v in own.items()}

    # ----------------------------------------------------------------- evaluation
    def evaluate(
        self, x: Tensor, params: Mapping[str, Tensor] | None = None, upto: str | None = None
    ) -> dict[str, Tensor]:
        """Every node's output (up to and including ``upto``) for input batch ``x``."""
        values: dict[str, Tensor] = {INPUT: x.to(DTYPE)}
        for node in self.nodes:
            xs = [values[src] for src in node.inputs]
            values[node.name] = node.op.forward(xs, self.node_params(node, params))
            if node.name == upto:
                break
        return values

    def forward(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        return self.evaluate(x, params)[self.output_node]

    def logits(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        return self.evaluate(x, params, upto=self.logits_node)[self.logits_node]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Output shape (without batch) of every node, found by one forward pass."""
        with torch.no_grad():
            values = self.evaluate(torch.zeros((1, *self.input_shape), dtype=DTYPE))
        return {name: tuple(v.shape[1:]) for name, v in values.items()}

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)
