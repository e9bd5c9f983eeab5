"""The difference network ``f_theta(x) - f_theta0(x)``: the perturbed copy (nodes ``p/...``)
and the nominal copy (``n/...``) share the input ``x``, and a final ``Sum`` subtracts them.
Bounding this one graph keeps the correlation through ``x`` that subtracting two separately
bounded output ranges loses."""

from __future__ import annotations

from torch import Tensor

from quantcert.engines.perturbation import Perturbation
from quantcert.network import INPUT, Network, Node
from quantcert.ops import Sum

PERTURBED, NOMINAL, DIFF = "p/", "n/", "diff"


def _copy(net: Network, prefix: str, upto: str) -> list[Node]:
    def rename(src: str) -> str:
        return src if src == INPUT else prefix + src

    nodes = []
    for node in net.nodes:
        nodes.append(Node(prefix + node.name, node.op, tuple(rename(s) for s in node.inputs)))
        if node.name == upto:
            break
    return nodes


def difference_network(net: Network, logits: bool = False) -> Network:
    """``diff = f_p(x) - f_n(x)`` on the output (or on the logits when ``logits``)."""
    end = net.logits_node if logits else net.output_node
    nodes = _copy(net, PERTURBED, end) + _copy(net, NOMINAL, end)
    nodes.append(Node(DIFF, Sum((1.0, -1.0)), (PERTURBED + end, NOMINAL + end)))
    return Network(nodes, net.input_shape, name=f"{net.name}:difference")


def pair_radii(pert: Perturbation, pair: Network) -> dict[str, dict[str, Tensor]]:
    """Per-node radii of a difference network: the perturbed copy only."""
    return {
        node.name: pert.for_node(node.name[len(PERTURBED) :])
        for node in pair.nodes
        if node.name.startswith(PERTURBED)
    }


def plain_radii(pert: Perturbation, net: Network) -> dict[str, dict[str, Tensor]]:
    return {node.name: pert.for_node(node.name) for node in net.nodes}
