"""Load-time self-check: the IR must compute what onnxruntime computes on the same graph.

An intake mistake (a constant broadcast along the wrong axis, an attribute ignored) turns into
a certificate for another function, so ``check_against_onnxruntime`` runs the ONNX model in
onnxruntime at a few random inputs of the domain and compares with the float64 IR there.

The reference is onnxruntime on a **float64 copy** of the graph (float32 initializers widened
exactly, so the copy computes the file's function without float32 rounding); the IR and the
reference then agree to ~1e-12 and the tolerance is ``rtol`` (default 1e-6). Where onnxruntime
has no float64 kernel for an op (Conv, AveragePool and LeakyRelu on the CPU provider), the
reference is the graph as stored, in float32, and the tolerance is ``max(rtol, FLOAT32_RTOL)``:
float32 evaluation of the bundled networks differs from float64 by up to ~6e-6 relative.
An intake mistake differs by order 1, far above both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import DTYPE

#: Tolerance (relative to ``max(1, max|output|)``) when the reference runs in float32.
FLOAT32_RTOL = 1e-4
#: Samples are drawn inside ``[-CLIP, CLIP]`` as well as inside the domain, so that float32
#: evaluation stays finite and meaningful on very wide domains.
CLIP = 1e6


@dataclass(frozen=True)
class InputLayout:
    """How the ONNX graph takes its input: ``name``, numpy ``dtype``, whether the leading axis
    is a batch axis (rank >= 2 and size 1 or symbolic, as the intake decides), and ``sample``,
    the shape of one sample (the IR's ``input_shape``)."""

    name: str
    dtype: np.dtype[Any]
    batched: bool
    sample: tuple[int, ...]

    def feed(self, x: np.ndarray) -> np.ndarray:
        """One sample of shape ``sample`` (or of its size) as the graph takes it: shape
        ``(1, *sample)`` when batched, else ``sample``; in the graph's dtype."""
        arr = np.asarray(x).reshape(self.sample).astype(self.dtype)
        return arr[None] if self.batched else arr


def input_layout(model: onnx.ModelProto) -> InputLayout:
    """The single graph input that is not an initializer, as ``InputLayout``."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise InputError(f"expected one ONNX graph input, found {len(inputs)}")
    tensor_type = inputs[0].type.tensor_type
    dims = [d.dim_value if d.dim_value > 0 else -1 for d in tensor_type.shape.dim]
    batched = len(dims) >= 2 and dims[0] in (1, -1)
    sample = tuple(dims[1:] if batched else dims)
    if any(d <= 0 for d in sample):
        raise InputError(f"ONNX input has an unknown dimension: {dims}")
    if tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        name = TensorProto.DataType.Name(tensor_type.elem_type)
        raise InputError(f"ONNX input {inputs[0].name!r} has type {name}, not float or double")
    dtype = np.dtype(np.float32 if tensor_type.elem_type == TensorProto.FLOAT else np.float64)
    return InputLayout(inputs[0].name, dtype, batched, sample)


def _widen(t: TensorProto) -> TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name)


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` computing in float64: float32 graph inputs, outputs, value infos,
    initializers, tensor attributes (Constant values) and ``Cast(to=FLOAT)`` become float64.
    Values widen exactly, so the copy computes the same function without float32 rounding."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    for i, t in enumerate(graph.initializer):
        if t.data_type == TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(_widen(t))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(_widen(attr.t))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
            elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                value = np.array(onnx.helper.get_attribute_value(attr), dtype=np.float64)
                attr.CopyFrom(onnx.helper.make_attribute("value", numpy_helper.from_array(value)))
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:240]}"


class Reference:
    """onnxruntime on the graph: on its float64 copy when onnxruntime has the kernels, else
    on the graph as stored. ``tolerance`` is the one that applies to the session in use."""

    def __init__(self, model: onnx.ModelProto, rtol: float) -> None:
        self.model = model
        self.layout = input_layout(model)
        self.output = model.graph.output[0].name
        self.rtol = rtol
        self.session: Any = None
        self.float64 = False
        if self.layout.dtype != np.float64:
            try:  # onnxruntime lacks float64 kernels for some ops: then use float32
                self.session = self._session(as_float64(model))
                self.float64 = True
            except Exception:
                self.session = None
        if self.session is None:
            self._stored()

    @staticmethod
    def _session(model: onnx.ModelProto) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        return ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])

    def _stored(self) -> None:
        self.float64 = self.layout.dtype == np.float64
        try:
            self.session = self._session(self.model)
        except Exception as exc:
            raise InputError(
                f"self-check: onnxruntime cannot load the model ({_one_line(exc)})"
            ) from None

    @property
    def tolerance(self) -> float:
        return self.rtol if self.float64 else max(self.rtol, FLOAT32_RTOL)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The graph's first output (flattened, float64) at one sample ``x`` (shape
        ``sample``, already rounded to the graph's input dtype)."""
        feed = self.layout.feed(x).astype(np.float64 if self.float64 else self.layout.dtype)
        try:
            out = self.session.run([self.output], {self.layout.name: feed})[0]
        except Exception as exc:
            if self.float64 and self.layout.dtype != np.float64:
                self._stored()  # the float64 copy loaded but does not run: use the graph
                return self(x)
            raise InputError(
                f"self-check: onnxruntime cannot run the model ({_one_line(exc)})"
            ) from None
        return np.asarray(out, dtype=np.float64).ravel()


def _box(
    sample: tuple[int, ...], lo: np.ndarray | None, hi: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The sampling box, shape ``sample``: the domain (default [-1, 1] per input, so that both
    signs reach every op), intersected with ``[-CLIP, CLIP]``."""
    size = math.prod(sample)

    def flat(bound: np.ndarray | None, default: float) -> np.ndarray:
        arr = np.full(size, default) if bound is None else np.asarray(bound, dtype=np.float64)
        if arr.size not in (1, size):
            raise InputError(f"self-check: the domain has {arr.size} bounds, the input {size}")
        return np.broadcast_to(arr.reshape(-1), size)

    lo_arr, hi_arr = flat(lo, -1.0), flat(hi, 1.0)
    if np.any(lo_arr > hi_arr) or np.isnan(lo_arr).any() or np.isnan(hi_arr).any():
        raise InputError("self-check: the domain has a lower bound above its upper bound")
    lo_c = np.clip(lo_arr, -CLIP, CLIP)
    hi_c = np.clip(hi_arr, -CLIP, CLIP)
    return lo_c.reshape(sample), hi_c.reshape(sample)


def _difference(ours: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
    """Largest ``|ours - ref| / max(1, max|ref|)`` and the flat output index where it is;
    non-finite values match only an identical non-finite value."""
    same = (ours == ref) | (np.isnan(ours) & np.isnan(ref))
    diff = np.where(same, 0.0, np.abs(ours - ref))
    diff = np.where(np.isnan(diff), np.inf, diff)
    finite = ref[np.isfinite(ref)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    k = int(np.argmax(diff))
    return float(diff[k] / scale), k


def check_against_onnxruntime(
    model: onnx.ModelProto,
    net: Network,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
    samples: int = 4,
    rtol: float = 1e-6,
    seed: int = 0,
) -> float:
    """Compare ``net`` with onnxruntime on ``model`` at ``samples`` random inputs.

    ``lo``/``hi``: the domain, shape ``net.input_shape`` or its size (or scalars); default
    [-1, 1] everywhere. Each sample is drawn uniformly in the box, rounded to the graph's input
    dtype, and fed to both (onnxruntime with the batch axis the graph expects, the IR as
    ``(1, *net.input_shape)`` in float64). Returns the largest relative difference
    ``max|ir - ort| / max(1, max|ort|)`` over the samples; NaN when onnxruntime is not
    importable. Raises ``InputError`` (one line) when it exceeds the tolerance (see the
    module docstring), when the output sizes differ, or when onnxruntime cannot run the model.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return math.nan
    ref = Reference(model, rtol)
    layout = ref.layout
    if layout.sample != tuple(net.input_shape):
        raise InputError(
            f"self-check: the IR takes inputs of shape {net.input_shape}, "
            f"the ONNX graph {layout.sample}"
        )
    box_lo, box_hi = _box(layout.sample, lo, hi)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(samples):
        x = box_lo + (box_hi - box_lo) * rng.random(layout.sample)
        x = x.astype(layout.dtype).astype(np.float64)  # the very input the graph sees
        expected = ref(x)
        try:
            with torch.no_grad():
                got = net(torch.from_numpy(x).to(DTYPE)[None]).cpu().numpy().ravel()
        except RuntimeError as exc:
            raise InputError(f"self-check: the IR cannot evaluate ({_one_line(exc)})") from None
        if got.size != expected.size:
            raise InputError(
                f"self-check: the IR has {got.size} outputs, onnxruntime {expected.size}"
            )
        diff, k = _difference(got, expected)
        if diff > ref.tolerance:
            raise InputError(
                f"self-check failed: the IR differs from onnxruntime by {diff:.3g} "
                f"(relative; tolerance {ref.tolerance:g}) at output index {k} "
                f"(IR {got[k]:.6g}, onnxruntime {expected[k]:.6g}); the model was not "
                "translated faithfully"
            )
        worst = max(worst, diff)
    return worst
