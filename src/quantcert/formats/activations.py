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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

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
from quantcert.ops.base import DTYPE, Box, Op
from quantcert.ops.quantizer import FakeQuant

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


def sites(
    net: Network,
    activations: Format | None,
    input_fmt: Format | None,
    only: frozenset[str] | None = None,
) -> list[Site]:
    """The quantized tensors in topological order (``only``: just the activation sites whose
    source node is named there; the input is chosen by ``input_fmt`` alone)."""
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
                chosen = only is None or src in only
                if not _is_input(net, src) and src not in seen and chosen:
                    seen.add(src)
                    out.append(Site(src, qname(src), activations))
        order = {n.name: i for i, n in enumerate(net.nodes)}
        out.sort(key=lambda s: -1 if s.source == INPUT else order[s.source])
    return out


def _insert(net: Network, chosen: list[Site], ops: Mapping[str, Op] | None = None) -> Network:
    """``net`` with a node after each site's source (``ops[qnode]``, by default a
    ``QuantNoise``); the source's readers read it."""
    shapes = net.shapes()
    rename = {s.source: s.qnode for s in chosen}
    ops = ops or {}

    def op_for(source: str) -> Op:
        return ops.get(rename[source]) or QuantNoise(shapes[source])

    nodes: list[Node] = []
    if INPUT in rename:
        nodes.append(Node(rename[INPUT], op_for(INPUT), (INPUT,)))
    for node in net.nodes:
        layer = isinstance(node.op, Affine | Conv)
        inputs = tuple(
            rename[src] if src in rename and (src == INPUT or layer) else src for src in node.inputs
        )
        nodes.append(Node(node.name, node.op, inputs))
        if node.name in rename:
            nodes.append(Node(rename[node.name], op_for(node.name), (node.name,)))
    if net.head is not None and nodes[-1].name != net.output_node:
        raise InputError("cannot quantize the input of the network's head")
    return Network(nodes, net.input_shape, net.head, net.name, net.sources, net.fixed, net.origin)


def _calibrated_range(net: Network, data: np.ndarray, source: str) -> tuple[float, float]:
    """min and max over every value of ``source`` on ``data``, as ``MinMaxCalibrater``."""
    with torch.no_grad():
        values = net.evaluate(torch.as_tensor(data, dtype=DTYPE), upto=source)[source]
    return float(values.min()), float(values.max())


def _int_grid(fmt: IntFormat, rng: tuple[float, float]) -> tuple[float, float, int, int]:
    """The float32 scale, the zero point and the clip range onnxruntime uses for ``rng``."""
    if fmt.granularity != "tensor":
        raise InputError(f"activations: {fmt.describe()}: only per-tensor integer formats")
    rows = np.array([[rng[0], rng[1]]], dtype=np.float32)
    scale32, zp = fmt.scale_zero_point(rows)
    qmin, qmax = fmt.clip_range()
    return float(scale32[0]), float(zp[0]), qmin, qmax


def _int_radii(fmt: IntFormat, rng: tuple[float, float], box: Box) -> tuple[Tensor, Tensor]:
    s, z, qmin, qmax = _int_grid(fmt, rng)
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


#: Batch elements per bound pass when the node bounds deciding saturation are computed.
_CHUNK = 256


def _source_box(qnet: Network, box: Box, radii: Mapping[str, Tensor], site: Site) -> Box:
    """The hull over the query's batch of the site's source node bounds (CROWN, in chunks),
    without the batch dimension."""
    from quantcert.engines.bounds import bound_nodes

    per_node: dict[str, dict[str, Tensor]] = {}
    for name, r in radii.items():
        node, _, param = name.partition(".")
        per_node.setdefault(node, {})[param] = r
    lo: Tensor | None = None
    hi: Tensor | None = None
    for start in range(0, box.lo.shape[0], _CHUNK):
        part = Box(box.lo[start : start + _CHUNK], box.hi[start : start + _CHUNK])
        with torch.no_grad():
            b = bound_nodes(qnet, part, per_node, "crown", upto=site.qnode)[site.source]
        lo = b.lo.amin(0) if lo is None else torch.minimum(lo, b.lo.amin(0))
        hi = b.hi.amax(0) if hi is None else torch.maximum(hi, b.hi.amax(0))
    assert lo is not None and hi is not None
    return Box(lo, hi)


Quantizer = Callable[[Tensor], Tensor]


def _quantizer(fmt: Format, rng: tuple[float, float] | None, src_box: Box) -> Quantizer:
    """The real quantizer of one site, as the radii assume it: onnxruntime's float32
    QuantizeLinear/DequantizeLinear with the site's scale for integers, the format's cast of
    float32 values for floating formats, exact rounding for fixed point."""
    if isinstance(fmt, IntFormat):
        if rng is None:
            rng = (float(src_box.lo.min()), float(src_box.hi.max()))
        s, z, qmin, qmax = _int_grid(fmt, rng)
        fake = FakeQuant(torch.tensor(s, dtype=DTYPE), torch.tensor(z, dtype=DTYPE), qmin, qmax)
        return fake.quantize
    if isinstance(fmt, FloatFormat):
        return lambda t: torch.as_tensor(fmt.quantize(t.detach().cpu().numpy()), dtype=DTYPE)
    return lambda t: torch.as_tensor(fmt.quantize(t.detach().cpu().numpy()), dtype=DTYPE)


def _valid(fmt: Format, rng: tuple[float, float] | None) -> tuple[float, float]:
    """The values of a site's source where its radius without saturation holds: within half
    a step (a step for ``rounding="any"``) of the representable range for integers, the
    finite range for floating formats, inside the range for fixed point."""
    if isinstance(fmt, IntFormat):
        assert rng is not None
        s, z, qmin, qmax = _int_grid(fmt, rng)
        step = (1.0 if fmt.rounding == "any" else 0.5) * s
        return (qmin - z) * s - step, (qmax - z) * s + step
    if isinstance(fmt, FloatFormat):
        return -float(fmt.spec.max), float(fmt.spec.max)
    if isinstance(fmt, FixedFormat):
        lo, hi = fmt.bounds()
        half = 2.0 ** -(fmt.frac_bits + (0 if fmt.rounding == "any" else 1))
        return float(np.nextafter(lo - half, np.inf)), float(np.nextafter(hi + half, -np.inf))
    raise InputError(f"{fmt.describe()}: no activation format")


def _staircases(chosen: list[Site], ranges: Mapping[str, tuple[float, float]]) -> dict[str, Op]:
    """The exact quantizer op of every calibrated integer site that rounds to nearest:
    ``FakeQuant`` at the site's scale (onnxruntime's float32 QuantizeLinear/DequantizeLinear),
    whose staircase the engine bounds directly instead of a noise box."""
    out: dict[str, Op] = {}
    for site in chosen:
        fmt, rng = site.fmt, ranges.get(site.qnode)
        if isinstance(fmt, IntFormat) and fmt.rounding == "nearest" and rng is not None:
            s, z, qmin, qmax = _int_grid(fmt, rng)
            out[site.qnode] = FakeQuant(
                torch.tensor(s, dtype=DTYPE), torch.tensor(z, dtype=DTYPE), qmin, qmax
            )
    return out


@dataclass(frozen=True)
class ActivationPlan:
    """The network with a ``QuantNoise`` node per quantized tensor (``net``), their radii
    (``"<qnode>.rel"``, ``"<qnode>.abs"``), the real quantizer of each noise node (float64
    tensors of any shape), and the calibrated ``(min, max)`` of each (empty without data).

    ``valid``: with ``saturation="check"``, per noise node ``(source, lo, hi)``: the radii
    hold (no saturation charged) only where the source node lies in ``[lo, hi]``; a query is
    sound at a point whose node bounds stay there (``within``)."""

    net: Network
    noise: dict[str, Tensor]
    quantizers: dict[str, Quantizer]
    ranges: dict[str, tuple[float, float]]
    valid: dict[str, tuple[str, float, float]]
    #: Noise-free sites: the exact ``FakeQuant`` staircase stands in the network there.
    staircases: tuple[str, ...] = ()

    def within(self, bounds: Mapping[str, Box]) -> Tensor:
        """(B,) bool: every site's source bounds lie where its radius holds."""
        ok: Tensor | None = None
        for source, lo, hi in self.valid.values():
            b = bounds[source]
            inside = ((b.lo >= lo) & (b.hi <= hi)).flatten(1).all(1)
            ok = inside if ok is None else ok & inside
        if ok is None:
            return torch.ones(next(iter(bounds.values())).lo.shape[0], dtype=torch.bool)
        return ok


def plan_activations(
    net: Network,
    activations: Format | None,
    input: Format | None,
    box: Box,
    calibration: np.ndarray | None = None,
    radius: Mapping[str, Tensor] | None = None,
    saturation: Literal["charge", "check"] = "charge",
    staircase: bool = False,
    only: frozenset[str] | None = None,
) -> ActivationPlan:
    """Noise nodes, radii and quantizers of ``--activations`` and ``--input``. ``box`` is the
    query's batch of boxes (B, *input_shape). ``saturation="charge"``: saturation is charged
    for every value the perturbed network takes on any of them (node bounds including
    ``radius``, the parameter radii already chosen). ``"check"`` (needs calibration data for
    integer formats): no bounds are computed; the radii leave saturation out and ``valid``
    states where they hold, for the caller to check per point."""
    chosen = sites(net, activations, input, only)
    if not chosen:
        return ActivationPlan(net, {}, {}, {}, {})
    ranges = calibration_scales(net, chosen, calibration)
    stairs = _staircases(chosen, ranges) if staircase else {}
    qnet = _insert(net, chosen, stairs)
    shapes = qnet.shapes()
    all_radii: dict[str, Tensor] = dict(radius or {})
    noise: dict[str, Tensor] = {}
    quantizers: dict[str, Quantizer] = {}
    valid: dict[str, tuple[str, float, float]] = {}
    for site in chosen:
        rng = ranges.get(site.qnode)
        if site.qnode in stairs:
            continue
        if saturation == "check":
            if rng is None and isinstance(site.fmt, IntFormat):
                raise InputError("integer activation formats need calibration data here")
            zero = torch.zeros(shapes[site.qnode], dtype=DTYPE)
            lo_v, hi_v = rng if rng is not None else (0.0, 0.0)
            src_box = Box(zero + lo_v, zero + hi_v)
            valid[site.qnode] = (site.source, *_valid(site.fmt, rng))
        else:
            src_box = _source_box(qnet, box, all_radii, site)
        if not bool(torch.isfinite(src_box.lo).all() and torch.isfinite(src_box.hi).all()):
            raise InputError(f"{site.source}: bounds are not finite; no activation format")
        where = "the input" if site.source == INPUT else f"activation {site.source}"
        rel, f = _radii(site.fmt, src_box, rng, where)
        noise[f"{site.qnode}.rel"] = rel.to(DTYPE)
        noise[f"{site.qnode}.abs"] = f.to(DTYPE)
        quantizers[site.qnode] = _quantizer(site.fmt, rng, src_box)
        all_radii.update(noise)
    return ActivationPlan(qnet, noise, quantizers, ranges, valid, tuple(stairs))


def quantize_activations(
    net: Network,
    activations: Format | None,
    input: Format | None,
    box: Box,
    calibration: np.ndarray | None = None,
    radius: Mapping[str, Tensor] | None = None,
) -> tuple[Network, dict[str, Tensor]]:
    """The network with quantization noise nodes, and their radii (``plan_activations``)."""
    plan = plan_activations(net, activations, input, box, calibration, radius)
    return plan.net, plan.noise


def describe_sites(net: Network, activations: Format | None, input: Format | None) -> list[str]:
    """The tensors quantized, by source node name."""
    return [s.source for s in sites(net, activations, input)]
