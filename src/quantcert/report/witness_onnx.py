"""The replayable witness: the user's own ONNX graph with the witness parameters written into
its initializers, and the witness input beside it, so anyone can replay it with onnxruntime.

``write_witness_model`` writes ``<out>.onnx`` and ``<stem>.input.npz`` (the input under the
graph input's name, with the batch axis the graph expects); ``replay_witness`` runs the pair.
Values are cast to each tensor's stored dtype; the largest change that cast makes is returned,
so the caller can say whether the witness survives float32 storage.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from quantcert.errors import InputError
from quantcert.intake.self_check import input_layout


@dataclass(frozen=True)
class WitnessFiles:
    """What ``write_witness_model`` wrote. ``param_cast_change``: the largest absolute change
    that casting the given parameter values to their initializers' dtypes made (0.0 when all
    are representable); ``input_cast_change``: the same for the input."""

    model: Path
    input: Path
    param_cast_change: float
    input_cast_change: float

    @property
    def exact(self) -> bool:
        """True when the stored witness is exactly the one given (no value moved)."""
        return self.param_cast_change == 0.0 and self.input_cast_change == 0.0


def input_path(out_onnx: Path) -> Path:
    """Where the witness input of ``out_onnx`` lives: ``<stem>.input.npz`` beside it."""
    out_onnx = Path(out_onnx)
    return out_onnx.with_name(f"{out_onnx.stem}.input.npz")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file in ``path``'s folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cast(name: str, value: np.ndarray, like: np.ndarray) -> tuple[np.ndarray, float]:
    """``value`` in ``like``'s dtype and shape, and the largest change the cast made."""
    value = np.asarray(value)
    if value.shape != like.shape:
        raise InputError(
            f"witness value for {name!r} has shape {value.shape}, the model's {like.shape}"
        )
    if not np.isfinite(value).all():
        raise InputError(f"witness value for {name!r} holds NaN or Inf values")
    with np.errstate(over="ignore"):
        cast = value.astype(like.dtype)
    if like.dtype.kind == "f" and not np.isfinite(cast).all():
        raise InputError(f"witness value for {name!r} overflows {like.dtype}")
    change = np.abs(cast.astype(np.float64) - value.astype(np.float64))
    return cast, float(change.max()) if change.size else 0.0


def _constant_values(model: onnx.ModelProto) -> dict[str, onnx.AttributeProto]:
    """The ``value`` attribute of each Constant node, by the node's output name."""
    found = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    found[node.output[0]] = attr
    return found


def write_witness_model(
    model: onnx.ModelProto,
    initializers: Mapping[str, np.ndarray],
    x: np.ndarray,
    out_onnx: Path,
) -> WitnessFiles:
    """Write ``model`` with the named initializers replaced, and the witness input ``x``.

    ``initializers``: name -> value, each of the initializer's own shape (a graph initializer,
    or the output of a Constant node holding a tensor); values are cast to the stored dtype.
    ``x``: one sample, shape ``input_shape`` (without batch; ``(1, *input_shape)`` or any
    array of its size is accepted), stored in the graph's input dtype with the batch axis the
    graph expects. Writes ``out_onnx`` and ``input_path(out_onnx)``, each atomically (input
    first). The model itself is not modified.
    """
    out_onnx = Path(out_onnx)
    layout = input_layout(model)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    stored = {t.name: i for i, t in enumerate(result.graph.initializer)}
    constants = _constant_values(result)
    param_change = 0.0
    for name, value in initializers.items():
        if name in stored:
            proto = result.graph.initializer[stored[name]]
        elif name in constants:
            proto = constants[name].t
        else:
            raise InputError(f"{name!r} is not an initializer of the ONNX model")
        cast, change = _cast(name, value, numpy_helper.to_array(proto))
        param_change = max(param_change, change)
        proto.CopyFrom(numpy_helper.from_array(cast, proto.name))

    size = int(np.prod(layout.sample))
    x_arr = np.asarray(x, dtype=np.float64)
    if x_arr.size != size:
        raise InputError(f"witness input has {x_arr.size} values, the model takes {size}")
    feed = layout.feed(x_arr)
    input_change = float(np.abs(feed.astype(np.float64).ravel() - x_arr.ravel()).max())
    if not np.isfinite(feed).all():
        raise InputError(f"witness input overflows {layout.dtype} or is not finite")

    buffer = io.BytesIO()
    arrays: dict[str, Any] = {layout.name: feed}
    np.savez(buffer, **arrays)
    _atomic_write(input_path(out_onnx), buffer.getvalue())
    _atomic_write(out_onnx, result.SerializeToString())
    return WitnessFiles(out_onnx, input_path(out_onnx), param_change, input_change)


def replay_witness(out_onnx: Path) -> np.ndarray:
    """Run the witness model in onnxruntime (CPU) on its stored input; the first graph output
    as onnxruntime returns it (with the batch axis when the graph has one)."""
    out_onnx = Path(out_onnx)
    stored = input_path(out_onnx)
    if not out_onnx.is_file() or not stored.is_file():
        raise InputError(f"witness files not found: {out_onnx} and {stored}")
    return run_onnx(out_onnx, stored_input(out_onnx), out_onnx.name)


def stored_input(out_onnx: Path) -> dict[str, np.ndarray]:
    """The witness input written beside ``out_onnx``, as onnxruntime's feed."""
    with np.load(input_path(out_onnx)) as data:
        return {name: data[name] for name in data.files}


def run_onnx(
    model: Path | onnx.ModelProto, feed: Mapping[str, np.ndarray], label: str
) -> np.ndarray:
    """The first output of ``model`` (a file, or a model in memory) run by onnxruntime's
    CPU provider on ``feed``; a failure is one line naming ``label``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("onnxruntime is not installed: cannot replay the witness") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    try:
        session = ort.InferenceSession(source, opts, ["CPUExecutionProvider"])
        return np.asarray(session.run(None, dict(feed))[0])
    except Exception as exc:
        text = " ".join(str(exc).split())[:240]
        raise InputError(f"onnxruntime cannot replay {label}: {text}") from None
