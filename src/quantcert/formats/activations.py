"""Formats on activations and on the input: ``--activations FORMAT`` and ``--input FORMAT``.

Quantizing a tensor ``z`` is an additive error ``e`` with ``|e| <= u |z| + f``: a
``QuantNoise`` node after it (``out = z + z rel + abs``) with the parameter box
``|rel| <= u``, ``|abs| <= f`` covers every such error, and the new network computes the same
function at the nominal noise 0. The sites are those onnxruntime's QDQ quantizer quantizes:
the network input (``--input``) and the input of every Gemm/MatMul (``Affine``) and ``Conv``
that does not read the network input (``--activations``; a reshape of the input, such as a
Flatten, counts as the input). A tensor read by several layers is quantized once.

Radii per site:

- integer formats (per tensor): the scale and zero point come from the tensor's range,
  min/max over ``calibration`` data as onnxruntime's ``MinMaxCalibrater`` computes it (min and
  max over every value of the tensor on the data, then ``compute_scale_zp``), else from the
  engine's own bounds on the node over the box. ``f`` is half a step (a full step for
  ``rounding="any"``), or, where the node's bounds over the box pass the representable range
  ``[(qmin - zp) s, (qmax - zp) s]``, the distance beyond it when larger (saturation); ``u``
  and a tiny floor cover the float32 roundings of the cast, the quotient and the
  dequantization.
- floating formats: ``u = 2^-(m+1)`` (``2^-m`` for ``rounding="any"``) plus float32's cast,
  ``f`` the subnormal floor, plus the excess over the largest finite value where a
  saturating format's node bounds pass it; a format that overflows to inf (fp16, bf16) there
  is refused.
- fixed point ``Qm.n``: ``f = 2^-(n+1)``; node bounds outside the range are refused.

The node bounds include every radius before the node (weights, biases, earlier noise), so
saturation is charged for every value the perturbed network can take.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from quantcert.errors import InputError
from quantcert.formats.base import Format
from quantcert.formats.fixed import FixedFormat
from quantcert.formats.floating import FloatFormat, elem_radius
from quantcert.formats.integer import IntFormat
from quantcert.network import INPUT, Network, Node
from quantcert.ops import Affine, Conv, QuantNoise, Reshape
from quantcert.ops.base import DTYPE, Box

#: float32 rounding of the cast of ``z``, the quotient ``z / s`` and the dequantization,
#: relative to ``|z|``, with room for the float64 arithmetic of the radius itself.
_REL32 = 2.0**-21
#: Absolute floor of those roundings (float32 subnormals), with room to spare.
_FLOOR32 = 2.0**-140
_SAFE = 1.0 + 2.0**-20


@dataclass(frozen=True)
class Site:
    """One quantized tensor: the node it reads (or ``INPUT``), its noise node, its format."""

    source: str
    qnode: str
    fmt: Format


def _up(x: float) -> float:
    return float(np.nextafter(x * _SAFE, np.inf))


def _is_input(net: Network, name: str) -> bool:
    """``name`` holds the network input's values: the input, or reshapes of it (Flatten)."""
    while name != INPUT:
        node = net.node(name)
        if not isinstance(node.op, Reshape):
            return False
        name = node.inputs[0]
    return True


def sites(net: Network, activations: Format | None, input_fmt: Format | None) -> list[Site]:
    """The quantized tensors in topological order."""
    names = {n.name for n in net.nodes} | {INPUT}

    def qname(source: str) -> str:
        base = f"{source}_q"
        name, i = base, 1
        while name in names:
            name, i = f"{base}{i}", i + 1
        names.add(name)
        return name

    out: list[Site] = []
    if input_fmt is not None:
        out.append(Site(INPUT, qname(INPUT), input_fmt))
    if activations is not None:
        seen: set[str] = set()
        for node in net.nodes:
            if isinstance(node.op, Affine | Conv):
                src = node.inputs[0]
                if not _is_input(net, src) and src not in seen:
                    seen.add(src)
                    out.append(Site(src, qname(src), activations))
        order = {n.name: i for i, n in enumerate(net.nodes)}
        out.sort(key=lambda s: -1 if s.source == INPUT else order[s.source])
    return out


def _insert(net: Network, chosen: list[Site]) -> Network:
    """``net`` with a ``QuantNoise`` node after each site's source; its readers read it."""
    shapes = net.shapes()
    rename = {s.source: s.qnode for s in chosen}
    nodes: list[Node] = []
    if INPUT in rename:
        nodes.append(Node(rename[INPUT], QuantNoise(shapes[INPUT]), (INPUT,)))
    for node in net.nodes:
        layer = isinstance(node.op, Affine | Conv)
        inputs = tuple(
            rename[src] if src in rename and (src == INPUT or layer) else src for src in node.inputs
        )
        nodes.append(Node(node.name, node.op, inputs))
        if node.name in rename:
            nodes.append(Node(rename[node.name], QuantNoise(shapes[node.name]), (node.name,)))
    if net.head is not None and nodes[-1].name != net.output_node:
        raise InputError("cannot quantize the input of the network's head")
    return Network(nodes, net.input_shape, net.head, net.name, net.sources, net.fixed, net.origin)


def _calibrated_range(net: Network, data: np.ndarray, source: str) -> tuple[float, float]:
    """min and max over every value of ``source`` on ``data``, as ``MinMaxCalibrater``."""
    with torch.no_grad():
        values = net.evaluate(torch.as_tensor(data, dtype=DTYPE), upto=source)[source]
    return float(values.min()), float(values.max())


def _int_radii(fmt: IntFormat, rng: tuple[float, float], box: Box) -> tuple[Tensor, Tensor]:
    if fmt.granularity != "tensor":
        raise InputError(f"activations: {fmt.describe()}: only per-tensor integer formats")
    rows = np.array([[rng[0], rng[1]]], dtype=np.float32)
    scale32, zp = fmt.scale_zero_point(rows)
    s, z = float(scale32[0]), float(zp[0])
    qmin, qmax = fmt.clip_range()
    rep_lo, rep_hi = (qmin - z) * s, (qmax - z) * s  # exact: |q - zp| < 2^17, s has 24 bits
    step = (1.0 if fmt.rounding == "any" else 0.5) * s
    excess = torch.maximum(box.hi - rep_hi, rep_lo - box.lo).clamp(min=0)
    excess = torch.nextafter(excess, torch.full_like(excess, torch.inf))
    f = torch.maximum(excess, torch.full_like(excess, step)) * _SAFE + _FLOOR32 * (1 + s)
    return torch.full_like(f, _REL32), f


def _float_radii(fmt: FloatFormat, box: Box, where: str) -> tuple[Tensor, Tensor]:
    if fmt.scaled:
        raise InputError(f"activations: {fmt.describe()}: no per-tensor scale for activations")
    spec = fmt.spec
    steps = spec.mant if fmt.rounding == "any" else spec.mant + 1
    absmax = box.absmax
    worst = float(absmax.max()) if absmax.numel() else 0.0
    # The format's own bound at the largest magnitude decides overflow (inf) for fp16/bf16.
    if not np.isfinite(elem_radius(np.array([worst]), spec, fmt.rounding)).all():
        raise InputError(
            f"{where}: {fmt.describe()} overflows to inf: the node reaches {worst!r} on the box"
        )
    u = _up(2.0**-steps + 2.0**-24)
    excess = (absmax - spec.max).clamp(min=0) if spec.saturates else torch.zeros_like(absmax)
    excess = torch.nextafter(excess, torch.full_like(excess, torch.inf))
    f = excess * _SAFE + _up(2.0 ** (spec.emin - steps) + 2.0**-149)
    return torch.full_like(f, u), f


def _fixed_radii(fmt: FixedFormat, box: Box, where: str) -> tuple[Tensor, Tensor]:
    lo, hi = fmt.bounds()
    half = 2.0 ** -(fmt.frac_bits + (0 if fmt.rounding == "any" else 1))
    top = hi if fmt.rounding == "any" else hi + half
    bottom = lo if fmt.rounding == "any" else lo - half
    if bool((box.hi >= top).any()) or bool((box.lo <= bottom).any()):
        raise InputError(
            f"{where}: {fmt.describe()} saturates: the node reaches "
            f"[{float(box.lo.min())!r}, {float(box.hi.max())!r}] on the box"
        )
    f = torch.full_like(box.lo, half)
    return torch.zeros_like(f), f


def _radii(
    fmt: Format, box: Box, rng: tuple[float, float] | None, where: str
) -> tuple[Tensor, Tensor]:
    if isinstance(fmt, IntFormat):
        if rng is None:
            rng = (float(box.lo.min()), float(box.hi.max()))
        return _int_radii(fmt, rng, box)
    if isinstance(fmt, FloatFormat):
        return _float_radii(fmt, box, where)
    if isinstance(fmt, FixedFormat):
        return _fixed_radii(fmt, box, where)
    raise InputError(
        f"{where}: {fmt.describe()} is a block format; activations take integer (per "
        "tensor), floating or fixed-point formats"
    )


def calibration_scales(
    net: Network, chosen: list[Site], calibration: np.ndarray | None
) -> dict[str, tuple[float, float]]:
    """The calibrated ``(min, max)`` of each site's tensor (empty without data)."""
    if calibration is None:
        return {}
    data = np.asarray(calibration, dtype=np.float64)
    if data.ndim < 1 or data.shape[0] == 0 or data[0].size != int(np.prod(net.input_shape)):
        raise InputError(
            f"calibration data of shape {data.shape} does not fit the model input {net.input_shape}"
        )
    data = data.reshape(data.shape[0], *net.input_shape)
    if not np.isfinite(data).all():
        raise InputError("calibration data holds NaN or Inf values")
    out: dict[str, tuple[float, float]] = {}
    for site in chosen:
        if site.source == INPUT:
            out[site.qnode] = (float(data.min()), float(data.max()))
        else:
            out[site.qnode] = _calibrated_range(net, data, site.source)
    return out


def quantize_activations(
    net: Network,
    activations: Format | None,
    input: Format | None,
    box: Box,
    calibration: np.ndarray | None = None,
    radius: Mapping[str, Tensor] | None = None,
) -> tuple[Network, dict[str, Tensor]]:
    """The network with quantization noise nodes, and their radii (``"<qnode>.rel"``,
    ``"<qnode>.abs"``). ``radius`` holds the parameter radii already chosen (weights,
    biases): the node bounds that decide saturation include them."""
    from quantcert.engines.bounds import bound_nodes

    chosen = sites(net, activations, input)
    if not chosen:
        return net, {}
    ranges = calibration_scales(net, chosen, calibration)
    qnet = _insert(net, chosen)
    all_radii: dict[str, Tensor] = dict(radius or {})
    noise: dict[str, Tensor] = {}
    for site in chosen:
        per_node: dict[str, dict[str, Tensor]] = {}
        for name, r in all_radii.items():
            node, _, param = name.partition(".")
            per_node.setdefault(node, {})[param] = r
        with torch.no_grad():
            bounds = bound_nodes(qnet, box, per_node, "crown", upto=site.qnode)
        src_box = bounds[site.source]
        # One box over the query's batch (its hull), without the batch dimension.
        src_box = Box(src_box.lo.amin(0), src_box.hi.amax(0))
        if not bool(torch.isfinite(src_box.lo).all() and torch.isfinite(src_box.hi).all()):
            raise InputError(f"{site.source}: bounds are not finite; no activation format")
        where = "the input" if site.source == INPUT else f"activation {site.source}"
        rel, f = _radii(site.fmt, src_box, ranges.get(site.qnode), where)
        noise[f"{site.qnode}.rel"] = rel.to(DTYPE)
        noise[f"{site.qnode}.abs"] = f.to(DTYPE)
        all_radii.update(noise)
    return qnet, noise


def describe_sites(net: Network, activations: Format | None, input: Format | None) -> list[str]:
    """The tensors quantized, by source node name."""
    return [s.source for s in sites(net, activations, input)]
