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

Shape arithmetic on constants is folded at load (``onnx_fold``). A graph with several outputs
loads one of them, named by ``output``.

Unless ``self_check=False``, the loaded network is compared with onnxruntime on random
inputs: an intake mistake is a refusal, never a certificate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx

from quantcert.errors import InputError
from quantcert.intake.onnx_builder import Builder
from quantcert.intake.onnx_fold import fold
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


def select_output(model: onnx.ModelProto, output: str | None = None) -> onnx.ModelProto:
    """The model with one graph output, ``output`` (by name), and only the nodes it needs;
    the model itself when it has that one output already. Without ``output``, a model with
    several outputs is refused with their names."""
    names = [o.name for o in model.graph.output]
    if output is None:
        if len(names) == 1:
            return model
        raise InputError(
            f"the ONNX graph has {len(names)} outputs ({', '.join(names)}): choose one "
            "(from_onnx(..., output=NAME); the command line takes single-output graphs)"
        )
    if output not in names:
        raise InputError(f"the ONNX graph has no output {output!r} (it has {', '.join(names)})")
    needed, kept = {output}, []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    chosen = onnx.ModelProto()
    chosen.CopyFrom(model)
    del chosen.graph.node[:]
    chosen.graph.node.extend(reversed(kept))
    del chosen.graph.output[:]
    chosen.graph.output.extend(o for o in model.graph.output if o.name == output)
    return chosen


def translate(
    model: onnx.ModelProto,
    name: str = "network",
    perturb: Perturb = "file",
    output: str | None = None,
) -> Network:
    """The IR of an in-memory ONNX model (of its graph output ``output``, see
    ``select_output``)."""
    if perturb not in ("file", "folded"):
        raise InputError(f"--perturb must be 'file' or 'folded', got {perturb!r}")
    model = select_output(model, output)
    b = Builder(model, fold_batchnorm=perturb == "folded")
    for n in model.graph.node:
        handler = HANDLERS.get(n.op_type)
        # FakeQuant exists only in the QDQ rewrite's own domain, never in a user's file.
        domains = (FAKE_QUANT_DOMAIN,) if n.op_type == FAKE_QUANT else ("", "ai.onnx")
        try:
            if fold(b, n):
                continue
            if handler is None or n.domain not in domains:
                raise InputError(f"unsupported ONNX operator {n.op_type} (node {n.name!r})")
            handler(b, n)
        except (IndexError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise InputError(
                f"cannot translate ONNX node {n.name!r} ({n.op_type}): {exc}"
            ) from None
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


def from_onnx(
    path: str | Path,
    perturb: Perturb = "file",
    self_check: bool = True,
    output: str | None = None,
) -> Network:
    """Load an ONNX file into a ``Network`` (float64); ``output`` names the graph output to
    load when the graph has several."""
    path = Path(path)
    model = select_output(_read(path), output)
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
