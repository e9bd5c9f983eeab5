"""ONNX intake: read a graph with the ``onnx`` package and translate it node by node into
the IR (``onnx_layers``: one function per operator, attributes checked against
``onnx_attributes``).

Parameters are the file's initializers as stored: the weights and biases of Gemm, MatMul and
Conv (an Add of a constant that broadcasts as one value per output channel is that layer's
bias), and BatchNormalization's scale, B, mean and var. Each IR parameter records its
initializer (``Network.sources``), so radii are stated on the file's tensors and witnesses map
back to them. Other constants (input normalisation, standalone elementwise constants) are
fixed and listed in ``Network.fixed``. ``perturb="folded"`` folds BatchNormalization into the
layer before it and states radii on the folded IR parameters instead.

Unless ``self_check=False``, the loaded network is compared with onnxruntime on random
inputs: an intake mistake is a refusal, never a certificate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx

from quantcert.errors import InputError
from quantcert.intake.onnx_builder import Builder
from quantcert.intake.onnx_layers import HANDLERS
from quantcert.intake.qdq import FAKE_QUANT, FAKE_QUANT_DOMAIN
from quantcert.network import INPUT, Network, Node
from quantcert.ops import Sigmoid, Softmax

Perturb = Literal["file", "folded"]


def _read(path: Path) -> onnx.ModelProto:
    if path.is_dir():
        raise InputError(f"model path {path} is a directory, not an ONNX file")
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # the onnx package raises several types for bad bytes
        raise InputError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise InputError(f"{path} is not a readable ONNX model (empty graph)")
    return model


def translate(model: onnx.ModelProto, name: str = "network", perturb: Perturb = "file") -> Network:
    """The IR of an in-memory ONNX model."""
    if perturb not in ("file", "folded"):
        raise InputError(f"--perturb must be 'file' or 'folded', got {perturb!r}")
    b = Builder(model, fold_batchnorm=perturb == "folded")
    for n in model.graph.node:
        handler = HANDLERS.get(n.op_type)
        # FakeQuant exists only in the QDQ rewrite's own domain, never in a user's file.
        domains = (FAKE_QUANT_DOMAIN,) if n.op_type == FAKE_QUANT else ("", "ai.onnx")
        if handler is None or n.domain not in domains:
            raise InputError(f"unsupported ONNX operator {n.op_type} (node {n.name!r})")
        try:
            handler(b, n)
        except (IndexError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise InputError(
                f"cannot translate ONNX node {n.name!r} ({n.op_type}): {exc}"
            ) from None
    if len(model.graph.output) != 1:
        names = ", ".join(o.name for o in model.graph.output)
        raise InputError(
            f"the ONNX graph has {len(model.graph.output)} outputs ({names}): one is supported"
        )
    out = model.graph.output[0].name
    if out not in b.alias or b.alias[out] == INPUT:
        raise InputError(f"ONNX graph output {out!r} is not computed by a supported node")
    nodes = _prune(b.nodes, b.alias[out])
    head = nodes[-1].name if isinstance(nodes[-1].op, Sigmoid | Softmax) else None
    kept = {n.name for n in nodes}
    sources = (
        {}
        if perturb == "folded"
        else {k: v for k, v in b.sources.items() if k.split(".")[0] in kept}
    )
    return Network(
        nodes, b.input_shape, head=head, name=name, sources=sources, fixed=tuple(sorted(b.fixed))
    )


def from_onnx(path: str | Path, perturb: Perturb = "file", self_check: bool = True) -> Network:
    """Load an ONNX file into a ``Network`` (float64)."""
    path = Path(path)
    model = _read(path)
    net = translate(model, path.stem, perturb)
    net.origin = str(path)
    if self_check:
        from quantcert.intake.self_check import check_against_onnxruntime

        check_against_onnxruntime(model, net)
    return net


def _prune(nodes: list[Node], output: str) -> list[Node]:
    """Keep the nodes the output depends on, ending with the output node."""
    needed = {output}
    for node in reversed(nodes):
        if node.name in needed:
            needed.update(node.inputs)
    kept = [n for n in nodes if n.name in needed]
    end = next(i for i, n in enumerate(kept) if n.name == output)
    return kept[: end + 1]
