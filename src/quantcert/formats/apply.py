"""Formats as parameter perturbations: ``--weights FORMAT`` and ``--biases FORMAT`` (or
per-layer maps) become the radii ``Perturbation.explicit`` takes.

The radius is computed on the tensor as the model file stores it (the one a quantizer
rounds), laid out as the layer's ``(out, in, ...)``: per-channel scales run along the output
channel (axis 0) and blocks along the input (axis 1) unless the format names another axis;
a transposed initializer (MatMul's ``(in, out)``, Gemm with ``transB=0``) gives the same
channels. A Gemm ``alpha`` or ``beta`` scales the radius (``ParamSource.radius``).
Weights are the weight tensors of Gemm, MatMul and Conv; biases their biases. A tensor that
neither map names stays at float.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch

from quantcert.engines.perturbation import Perturbation, explicit
from quantcert.errors import InputError
from quantcert.formats.base import Format
from quantcert.formats.integer import IntFormat
from quantcert.network import Network
from quantcert.ops import Affine, Conv
from quantcert.ops.base import DTYPE


def _for_layer(fmt: Format, is_weight: bool) -> Format:
    """Default axes of per-channel and block formats on a layer's (out, in, ...) layout."""
    if not isinstance(fmt, IntFormat) or not is_weight:
        return fmt
    if fmt.granularity == "group" and fmt.axis == -1:
        return dataclasses.replace(fmt, axis=1)
    return fmt


def _pick(layer_map: Mapping[str, Format], node: str, initializer: str | None) -> Format | None:
    for key in (node, initializer):
        if key is not None and key in layer_map:
            return layer_map[key]
    return layer_map.get("*")


def _stored(net: Network, name: str, value: torch.Tensor) -> tuple[np.ndarray, float]:
    """The file's tensor in the IR layout (without the source's factor), and that factor."""
    src = net.sources.get(name)
    if src is None:
        return value.detach().cpu().to(DTYPE).numpy(), 1.0
    file_value = src.to_file(value)
    if file_value is None:  # factor 0: the tensor has no effect
        return np.zeros(tuple(value.shape)), 0.0
    laid = file_value.T if src.transpose else file_value
    return np.asarray(laid).reshape(
        tuple(value.shape)
    ) if laid.size == value.numel() else laid, src.factor


def _radius(net: Network, name: str, value: torch.Tensor, fmt: Format) -> torch.Tensor:
    laid, factor = _stored(net, name, value)
    try:
        r = np.asarray(fmt.radius(laid), dtype=np.float64)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    src = net.sources.get(name)
    if src is None or laid.shape == tuple(value.shape):
        out = torch.as_tensor(r, dtype=DTYPE) * abs(factor)
        return torch.nextafter(out, torch.full_like(out, torch.inf)) if abs(factor) != 1 else out
    file_r = r.T if src.transpose else r
    return src.radius(
        torch.as_tensor(np.ascontiguousarray(file_r), dtype=DTYPE), tuple(value.shape)
    )


def _formats(
    net: Network,
    weights: Mapping[str, Format] | None,
    biases: Mapping[str, Format] | None,
) -> dict[str, Format]:
    """The format of each IR parameter that the maps name (``"*"``: every other layer)."""
    weights, biases = weights or {}, biases or {}
    layers = {n.name for n in net.nodes if isinstance(n.op, Affine | Conv)}
    known = layers | {s.initializer for s in net.sources.values()} | {"*"}
    for key in [*weights, *biases]:
        if key not in known:
            raise InputError(
                f"format given for {key!r}, which is no layer or initializer; have {sorted(layers)}"
            )
    out: dict[str, Format] = {}
    for node in net.nodes:
        if not isinstance(node.op, Affine | Conv):
            continue
        for pname, layer_map in (("weight", weights), ("bias", biases)):
            name = f"{node.name}.{pname}"
            src = net.sources.get(name)
            fmt = _pick(layer_map, node.name, None if src is None else src.initializer)
            if node.op.params.get(pname) is not None and fmt is not None:
                out[name] = _for_layer(fmt, pname == "weight")
    return out


def quantized_parameters(
    net: Network,
    weights: Mapping[str, Format] | None = None,
    biases: Mapping[str, Format] | None = None,
) -> dict[str, torch.Tensor]:
    """The IR value of every parameter the maps name after real quantization: the file's
    tensor rounded by its format (``Format.quantize``), laid out and scaled as the IR holds
    it (``ir = factor * view(file)``). Each lies within ``format_perturbation``'s radius."""
    params = net.param_tensors()
    out: dict[str, torch.Tensor] = {}
    for name, fmt in _formats(net, weights, biases).items():
        value = params[name]
        laid, factor = _stored(net, name, value)
        try:
            q = np.asarray(fmt.quantize(laid), dtype=np.float64)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
        src = net.sources.get(name)
        if src is None or laid.shape == tuple(value.shape):
            out[name] = torch.as_tensor(q, dtype=DTYPE).reshape(value.shape) * factor
            continue
        file_q = torch.as_tensor(np.ascontiguousarray(q.T if src.transpose else q), dtype=DTYPE)
        out[name] = src.view(file_q, tuple(value.shape)).to(DTYPE) * factor
    return out


def format_perturbation(
    net: Network,
    weights: Mapping[str, Format] | None = None,
    biases: Mapping[str, Format] | None = None,
) -> Perturbation:
    """Radii of the weights and biases that the maps name (``"*"``: every other layer)."""
    params = net.param_tensors()
    radius = {
        name: _radius(net, name, params[name], fmt)
        for name, fmt in _formats(net, weights, biases).items()
    }
    pert = explicit(net, radius)
    weights, biases = weights or {}, biases or {}
    description = {
        **pert.description,
        "kind": "formats",
        "weights": {k: v.describe() for k, v in weights.items()},
        "biases": {k: v.describe() for k, v in biases.items()},
    }
    return Perturbation(pert.radius, description)
