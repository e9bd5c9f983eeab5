"""PyTorch intake: an ``nn.Sequential`` tree (nested Sequentials are flattened) of

    Linear, Conv2d (zero, symmetric padding), ReLU, LeakyReLU, Sigmoid, Tanh, Identity,
    Dropout (eval: identity), Flatten, MaxPool2d, AvgPool2d, BatchNorm1d/2d, Softmax

becomes a float64 ``Network``. BatchNorm (eval-mode running statistics) folds into the
preceding Linear/Conv2d, or becomes a constant ``Scale`` where there is none. A final
Sigmoid or Softmax is the network's head. ``input_shape`` excludes the batch dimension:
(N,) for an MLP, (C, H, W) for a convolutional network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from quantcert.errors import InputError
from quantcert.network import INPUT, Network, Node
from quantcert.ops import (
    DTYPE,
    Affine,
    AvgPool,
    Conv,
    Identity,
    LeakyReLU,
    MaxPool,
    Op,
    ReLU,
    Reshape,
    Scale,
    Sigmoid,
    Softmax,
    Tanh,
)

SUPPORTED = (
    "Linear, Conv2d, ReLU, LeakyReLU, Sigmoid, Tanh, Identity, Dropout, Flatten, MaxPool2d, "
    "AvgPool2d, BatchNorm1d, BatchNorm2d, Softmax"
)
_SKIP = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)


def _t(x: Tensor) -> Tensor:
    return x.detach().to(DTYPE).clone()


def _pair(v: int | tuple[int, ...], what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if len(v) != 2:
        raise InputError(f"{what}: expected two values, got {v}")
    return (int(v[0]), int(v[1]))


def _layers(module: nn.Module) -> Iterator[nn.Module]:
    """The leaf layers of a Sequential tree, in order."""
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _layers(child)
    else:
        yield module


class _Builder:
    """IR nodes so far and the output shape (without batch) of the last one."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.nodes: list[Node] = []
        self.shape = tuple(input_shape)

    @property
    def last(self) -> str:
        return self.nodes[-1].name if self.nodes else INPUT

    def add(self, kind: str, op: Op) -> None:
        name = f"{kind}{len(self.nodes) + 1}"
        with torch.no_grad():
            try:
                out = op.forward([torch.zeros((1, *self.shape), dtype=DTYPE)], op.params)
            except RuntimeError as exc:
                msg = str(exc).splitlines()[0]
                where = f"layer {len(self.nodes) + 1} ({op}) on shape {self.shape}"
                raise InputError(f"{where}: {msg}") from None
        self.nodes.append(Node(name, op, (self.last,)))
        self.shape = tuple(out.shape[1:])


def _linear(b: _Builder, m: nn.Linear) -> None:
    if len(b.shape) != 1 or b.shape[0] != m.in_features:
        raise InputError(f"Linear({m.in_features}, {m.out_features}) applied to shape {b.shape}")
    b.add("fc", Affine(_t(m.weight), None if m.bias is None else _t(m.bias)))


def _conv_padding(m: nn.Conv2d) -> tuple[int, int]:
    if m.padding_mode != "zeros":
        raise InputError(f"Conv2d with padding_mode={m.padding_mode!r} is not supported")
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            raise InputError("Conv2d padding='same' with asymmetric padding is not supported")
        return (total[0] // 2, total[1] // 2)
    if isinstance(m.padding, str):
        raise InputError(f"Conv2d padding={m.padding!r} is not supported")
    return _pair(m.padding, "Conv2d padding")


def _conv(b: _Builder, m: nn.Conv2d) -> None:
    op = Conv(
        _t(m.weight),
        None if m.bias is None else _t(m.bias),
        _pair(m.stride, "stride"),
        _conv_padding(m),
        _pair(m.dilation, "dilation"),
        m.groups,
    )
    b.add("conv", op)


def _batchnorm(b: _Builder, m: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
    """Fold ``(z - mean) * gamma / sqrt(var + eps) + beta`` into the previous layer."""
    if m.running_mean is None or m.running_var is None:
        raise InputError(f"{type(m).__name__} without running statistics is not supported")
    scale = 1.0 / torch.sqrt(_t(m.running_var) + m.eps)
    if m.weight is not None:
        scale = scale * _t(m.weight)
    shift = -_t(m.running_mean) * scale
    if m.bias is not None:
        shift = shift + _t(m.bias)
    prev = b.nodes[-1].op if b.nodes else None
    if isinstance(prev, Affine | Conv) and prev.params["weight"].shape[0] == scale.numel():
        w = prev.params["weight"]
        prev.params["weight"] = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
        prev.params["bias"] = prev.bias * scale + shift
        return
    extra = [1] * (len(b.shape) - 1)
    b.add("bn", Scale(scale.reshape(-1, *extra), shift.reshape(-1, *extra)))


def _flatten(b: _Builder, m: nn.Flatten) -> None:
    if m.start_dim in (0, -len(b.shape) - 1):
        raise InputError("Flatten over the batch dimension (start_dim=0) is not supported")
    probe = torch.zeros((1, *b.shape)).flatten(m.start_dim, m.end_dim)
    b.add("flatten", Reshape(tuple(probe.shape[1:])))


def _pool(b: _Builder, m: nn.MaxPool2d | nn.AvgPool2d) -> None:
    if m.ceil_mode:
        raise InputError(f"{type(m).__name__} with ceil_mode=True is not supported")
    kernel = _pair(m.kernel_size, "pool kernel")
    stride = _pair(m.stride, "pool stride") if m.stride else kernel
    padding = _pair(m.padding, "pool padding")
    if isinstance(m, nn.MaxPool2d):
        if _pair(m.dilation, "pool dilation") != (1, 1) or m.return_indices:
            raise InputError("MaxPool2d with dilation or return_indices is not supported")
        b.add("maxpool", MaxPool(kernel, stride, padding))
    else:
        if m.divisor_override is not None:
            raise InputError("AvgPool2d with divisor_override is not supported")
        b.add("avgpool", AvgPool(kernel, stride, padding, m.count_include_pad))


def _leaky(b: _Builder, m: nn.LeakyReLU) -> None:
    if not math.isfinite(m.negative_slope):
        raise InputError(f"LeakyReLU slope {m.negative_slope} is not finite")
    b.add("act", LeakyReLU(float(m.negative_slope)))


def _softmax(b: _Builder, m: nn.Softmax) -> None:
    if len(b.shape) != 1 or m.dim not in (None, 1, -1):
        raise InputError(f"Softmax over dim {m.dim} of shape {b.shape} is not supported")
    b.add("softmax", Softmax())


_HANDLERS: dict[type[nn.Module], Callable[[_Builder, Any], None]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv,
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.Flatten: _flatten,
    nn.MaxPool2d: _pool,
    nn.AvgPool2d: _pool,
    nn.LeakyReLU: _leaky,
    nn.Softmax: _softmax,
    nn.ReLU: lambda b, m: b.add("act", ReLU()),
    nn.Sigmoid: lambda b, m: b.add("sigmoid", Sigmoid()),
    nn.Tanh: lambda b, m: b.add("act", Tanh()),
    nn.Identity: lambda b, m: b.add("identity", Identity()),
}


def _handler(layer: nn.Module) -> Callable[[_Builder, Any], None]:
    for cls, handler in _HANDLERS.items():
        if isinstance(layer, cls):
            return handler
    raise InputError(f"unsupported torch layer {type(layer).__name__} (use {SUPPORTED})")


def from_torch(module: nn.Module, input_shape: tuple[int, ...]) -> Network:
    """Translate ``module`` (input (B, *input_shape)) into a float64 ``Network`` whose
    forward equals ``module.double().eval()(x)``: output (B, out) or (B, C, H, W)."""
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise InputError(f"invalid input shape {input_shape}")
    b = _Builder(shape)
    for layer in _layers(module):
        if not isinstance(layer, _SKIP):
            _handler(layer)(b, layer)
    if not b.nodes:
        raise InputError("the torch module has no layers")
    if any(isinstance(node.op, Softmax) for node in b.nodes[:-1]):
        raise InputError("Softmax is supported only as the final layer")
    head = b.nodes[-1].name if isinstance(b.nodes[-1].op, Sigmoid | Softmax) else None
    return Network(b.nodes, shape, head=head, name=type(module).__name__.lower())


def _infer_shape(module: nn.Module) -> tuple[int, ...]:
    """``module.input_shape`` when set, else (in_features,) of a leading Linear."""
    given = getattr(module, "input_shape", None)
    if given is not None:
        try:
            return tuple(int(d) for d in given)
        except (TypeError, ValueError):
            raise InputError(f"module.input_shape {given!r} is not a tuple of ints") from None
    first = next((m for m in _layers(module) if not isinstance(m, (*_SKIP, nn.Identity))), None)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise InputError(
        "cannot infer the input shape: set module.input_shape = (C, H, W) before torch.save"
    )


def load_torch(path: str | Path, input_shape: tuple[int, ...] | None = None) -> Network:
    """Load a module saved with ``torch.save(module)`` (a full module, not a state_dict).
    ``input_shape`` defaults to ``module.input_shape`` or the first Linear's input size."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        module = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # unpickling raises many types for bad bytes
        raise InputError(f"{path} is not a readable torch model ({type(exc).__name__})") from None
    if not isinstance(module, nn.Module):
        kind = "a state_dict" if isinstance(module, dict) else type(module).__name__
        raise InputError(f"{path} holds {kind}, not a module saved with torch.save(module)")
    net = from_torch(module, input_shape if input_shape is not None else _infer_shape(module))
    net.name = path.stem
    return net
