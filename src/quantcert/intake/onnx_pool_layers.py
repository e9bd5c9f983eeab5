"""Translation of ONNX MaxPool and AveragePool (2-D): explicit or automatic (VALID, SAME_*)
padding, symmetric or not, and ``ceil_mode``.

Output sizes follow onnxruntime's pool kernels: ``out = floor_or_ceil((size + pads - span) /
stride) + 1`` with ``span = dilation * (kernel - 1) + 1``; in ``ceil_mode`` a last window
that would start past the input and its leading padding is dropped. SAME_* padding needs
``(ceil(size / stride) - 1) * stride + kernel - size`` in total (the undilated kernel, as
onnxruntime computes it), the odd one at the end (UPPER) or the start (LOWER).

The extra windows of ``ceil_mode`` read past the end padding: for MaxPool that is more
-inf padding (every window must still hold an input value); for AveragePool more zeros, and
each window's divisor is computed as onnxruntime computes it: the window clipped to the
input plus its stated padding (``count_include_pad=1``), or to the input alone.
Symmetric, torch-compatible configurations keep the plain ``MaxPool``/``AvgPool`` ops.
"""

from __future__ import annotations

import onnx
import torch

from quantcert.intake.onnx_attributes import attributes
from quantcert.intake.onnx_builder import Builder, one_activation, refuse
from quantcert.ops import DTYPE, AvgPool, MaxPool, Op, PaddedAvgPool, PaddedMaxPool


def _pair(n: onnx.NodeProto, values: list[int] | None, default: int) -> tuple[int, int]:
    if not values:
        return (default, default)
    if len(values) != 2:
        raise refuse(n, f"only 2-D pooling is supported, got {list(values)}")
    return (int(values[0]), int(values[1]))


def _out_size(
    n: onnx.NodeProto, size: int, k: int, s: int, d: int, pb: int, pe: int, ceil: bool
) -> int:
    span = d * (k - 1) + 1
    room = size + pb + pe - span
    if room < 0 or s < 1 or k < 1 or d < 1:
        raise refuse(n, f"a window of {k} taps (dilation {d}) does not fit {size} + pads")
    out = (-(-room // s) if ceil else room // s) + 1
    if ceil and (out - 1) * s >= size + pb:
        out -= 1
    return out


def _pads(
    n: onnx.NodeProto,
    a: dict[str, object],
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
) -> list[int]:
    """(top, left, bottom, right) as stated or as auto_pad computes them."""
    mode = a.get("auto_pad", "NOTSET")
    if mode == "VALID":
        return [0, 0, 0, 0]
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for sz, k, st in zip(size, kernel, stride, strict=True):
            total = (-(-sz // st) - 1) * st + k - sz
            if total < 0:
                raise refuse(n, f"auto_pad={mode} with stride {st} > kernel {k} is not supported")
            small, large = total // 2, total - total // 2
            begin.append(small if mode == "SAME_UPPER" else large)
            end.append(large if mode == "SAME_UPPER" else small)
        return [*begin, *end]
    pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]  # type: ignore[attr-defined]
    if len(pads) != 4 or min(pads) < 0:
        raise refuse(n, f"pads {pads} are not 4 non-negative values")
    return pads


def _divisor(
    size: tuple[int, int],
    out: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: list[int],
    include_pad: bool,
) -> torch.Tensor:
    """onnxruntime's AveragePool divisor of every output window, (out_h, out_w)."""
    per_dim = []
    for axis in range(2):
        sz, k, s = size[axis], kernel[axis], stride[axis]
        pb, pe = pads[axis], pads[axis + 2]
        counts = []
        for o in range(out[axis]):
            start = o * s - pb
            end = min(start + k, sz + pe)
            counts.append(end - start if include_pad else min(end, sz) - max(start, 0))
        per_dim.append(torch.tensor(counts, dtype=DTYPE))
    return per_dim[0].reshape(-1, 1) * per_dim[1].reshape(1, -1)


def _windows_hold_input(size: int, out: int, k: int, s: int, d: int, pb: int) -> bool:
    return all(any(0 <= o * s - pb + j * d < size for j in range(k)) for o in range(out))


def _pool(b: Builder, n: onnx.NodeProto) -> None:
    a = attributes(n)
    src, _ = one_activation(b, n)
    if len(n.output) > 1 and n.output[1] and b.uses[n.output[1]]:
        raise refuse(n, "the Indices output is not supported")
    if len(b.shape[src]) != 3 or not b.batched:
        raise refuse(n, f"input of shape {list(b.full(src))} is not (1, C, H, W)")
    if "kernel_shape" not in a:
        raise refuse(n, "kernel_shape is required")
    kernel, stride = _pair(n, a["kernel_shape"], 1), _pair(n, a.get("strides"), 1)
    dilation = _pair(n, a.get("dilations"), 1)
    maxpool = n.op_type == "MaxPool"
    if not maxpool and dilation != (1, 1):
        raise refuse(n, f"attribute dilations={list(dilation)} is not supported")
    size = (int(b.shape[src][1]), int(b.shape[src][2]))
    pads = _pads(n, a, size, kernel, stride)
    ceil = bool(a.get("ceil_mode", 0))
    out = tuple(
        _out_size(n, size[i], kernel[i], stride[i], dilation[i], pads[i], pads[i + 2], ceil)
        for i in range(2)
    )
    spans = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    # ceil_mode: the last windows reach past the end padding by ``extra``.
    extra = [
        max(0, (out[i] - 1) * stride[i] + spans[i] - (size[i] + pads[i] + pads[i + 2]))
        for i in range(2)
    ]
    pads4 = (pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1])
    symmetric = pads4[0] == pads4[2] and pads4[1] == pads4[3]
    op: Op
    if maxpool:
        if not all(
            _windows_hold_input(size[i], out[i], kernel[i], stride[i], dilation[i], pads[i])
            for i in range(2)
        ):
            raise refuse(n, "a pooling window lies entirely in the padding")
        if symmetric and all(pads4[i] <= spans[i] // 2 for i in range(2)):
            op = MaxPool(kernel, stride, (pads4[0], pads4[1]), dilation)
        else:
            op = PaddedMaxPool(kernel, stride, pads4, dilation)
    else:
        include = bool(a.get("count_include_pad", 0))
        if symmetric and pads4 == tuple(pads) and all(pads[i] <= kernel[i] // 2 for i in range(2)):
            op = AvgPool(kernel, stride, (pads[0], pads[1]), include)
        else:
            divisor = _divisor(size, out, kernel, stride, pads, include)  # type: ignore[arg-type]
            if bool((divisor <= 0).any()):
                raise refuse(n, "a pooling window lies entirely in the padding")
            op = PaddedAvgPool(kernel, stride, pads4, divisor)
    name = b.add(n, op, [src])
    if b.shape[name][1:] != out:
        raise refuse(n, f"output size {list(b.shape[name][1:])} differs from onnxruntime's {out}")
