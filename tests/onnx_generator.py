"""Building and running generated ONNX cases (the enumeration is in ``onnx_cases``).

Each case is a small graph built with ``onnx.helper`` (valid under ``onnx.checker`` and strict
shape inference). It must either load (``from_onnx`` without its self-check) and match
onnxruntime, or be refused with an ``InputError`` that names the op. A silent mismatch fails.

Reference: onnxruntime on a float64 copy of the graph (``self_check.as_float64``: the float32
values widened exactly), tolerance 1e-6 relative to ``max(1, max|output|)``. Where
onnxruntime has no float64 kernel (Conv, AveragePool, LeakyRelu), the float32 graph itself,
tolerance 1e-5. The inputs are float32-rounded draws in [-1, 1], so both sides see the same
values and padding/sign-dependent behaviour shows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from quantcert.errors import InputError
from quantcert.intake.onnx_model import from_onnx
from quantcert.intake.self_check import as_float64
from quantcert.network import Network

F32, F64 = np.float32, np.float64
RTOL64, RTOL32 = 1e-6, 1e-5


class G:
    """Graph under construction: nodes, initializers (random, seeded), fresh tensor names."""

    def __init__(self, dtype: type, seed: int, opset: int = 13) -> None:
        self.dtype, self.rng, self.opset = dtype, np.random.default_rng(seed), opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def name(self) -> str:
        return f"t{len(self.nodes) + len(self.inits)}"

    def const(self, shape: tuple[int, ...], away: bool = False, scale: float = 1.0) -> str:
        """A random float initializer; ``away``: magnitudes in [0.5, 2] (divisors)."""
        if away:
            arr = self.rng.uniform(0.5, 2.0, shape) * self.rng.choice([-1.0, 1.0], shape)
        else:
            arr = self.rng.normal(size=shape) * scale
        return self.array(np.asarray(arr, dtype=self.dtype))

    def array(self, arr: np.ndarray) -> str:
        name = self.name()
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def ints(self, values: list[int]) -> str:
        return self.array(np.array(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> str:
        outs = [self.name() + (f"_{i}" if i else "") for i in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outs, name=f"n{len(self.nodes)}", **attrs)
        )
        return outs[0]


@dataclass(frozen=True)
class Case:
    """``build(g, x)`` adds the graph from input ``x`` (shape ``shape``) and returns its
    output; ``op`` is the op under test (a refusal must name it)."""

    id: str
    op: str
    shape: tuple[int | str, ...]
    build: Callable[[G, str], str]
    opset: int = 13
    dtype: type = F32
    #: False where shape inference cannot know every intermediate shape (a Reshape to a
    #: computed shape): the checker then runs without its full (shape-inferring) check.
    strict: bool = True
    #: The output's shape, where shape inference cannot find it (``None``: inferred).
    out_shape: tuple[int | str, ...] | None = None

    def model(self) -> onnx.ModelProto:
        g = G(self.dtype, seed=sum(map(ord, self.id)), opset=self.opset)
        out = self.build(g, "x")
        elem = TensorProto.FLOAT if self.dtype is F32 else TensorProto.DOUBLE
        graph = helper.make_graph(
            g.nodes,
            "generated",
            [helper.make_tensor_value_info("x", elem, list(self.shape))],
            [helper.make_tensor_value_info(out, elem, self.out_shape)],
            g.inits,
        )
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(
            graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets)
        )
        model = onnx.shape_inference.infer_shapes(
            model, check_type=True, strict_mode=self.strict, data_prop=True
        )
        onnx.checker.check_model(model, full_check=self.strict)
        return model


# ------------------------------------------------------------------ bases: x -> tensor
def conv_base(g: G, x: str) -> str:  # (1, 2, 6, 5) -> (1, 3, 4, 3), no bias
    return g.op("Conv", [x, g.const((3, 2, 3, 3), scale=0.5)])


def gemm_base(g: G, x: str) -> str:  # (1, 4) -> (1, 3), no bias
    return g.op("Gemm", [x, g.const((3, 4))], transB=1)


def matmul_base(g: G, x: str) -> str:  # (1, 4) -> (1, 3)
    return g.op("MatMul", [x, g.const((4, 3))])


BASES: dict[str, tuple[Callable[[G, str], str], tuple[int, ...], list[tuple[int, ...]]]] = {
    "conv": (
        conv_base,
        (1, 2, 6, 5),
        [
            (),
            (1,),
            (3,),
            (3, 1, 1),
            (1, 3, 1, 1),
            (1, 4, 3),
            (4, 3),
            (1, 1, 3),
            (4, 1),
            (3, 4, 3),
            (1, 3, 4, 3),
            (1, 1, 1, 1),
        ],
    ),
    "gemm": (gemm_base, (1, 4), [(), (1,), (3,), (1, 3), (1, 1)]),
    "matmul": (matmul_base, (1, 4), [(), (1,), (3,), (1, 3), (1, 1)]),
}


def cycle_opset(i: int, low: int = 13) -> int:
    return low + i % (20 - low)


# ------------------------------------------------------------------ running one case
@dataclass(frozen=True)
class Outcome:
    """``kind``: "match", "refused" (message names the op), or a failure: "mismatch",
    "refusal-without-op", "crash"; ``diff``: the relative difference when compared."""

    kind: str
    detail: str = ""
    diff: float = 0.0


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])


def _load(path: Path) -> Network:
    return from_onnx(path, self_check=False)


def run_case(case: Case, folder: Path, samples: int = 2) -> Outcome:
    """Build, check (invalid ONNX or an onnxruntime refusal raises: drop such a case), load,
    and compare at ``samples`` random inputs."""
    model = case.model()
    stored = _session(model)  # onnxruntime must accept every generated model
    reference, rtol, wide = stored, RTOL32 if case.dtype is F32 else RTOL64, False
    if case.dtype is F32:
        with contextlib.suppress(Exception):  # no float64 kernel for an op: float32
            reference, rtol, wide = _session(as_float64(model)), RTOL64, True
    path = folder / "m.onnx"
    onnx.save(model, str(path))
    try:
        net = _load(path)
    except InputError as exc:
        return Outcome("refused" if case.op in str(exc) else "refusal-without-op", str(exc))
    except Exception as exc:
        return Outcome("crash", f"{type(exc).__name__}: {exc}")
    rng = np.random.default_rng(len(case.id))
    concrete = [d if isinstance(d, int) else 1 for d in case.shape]
    worst, where = 0.0, ""
    for _ in range(samples):
        x: np.ndarray = rng.uniform(-1, 1, concrete).astype(case.dtype)
        ref = reference.run(None, {"x": x.astype(F64) if wide else x})[0]
        ref = np.asarray(ref, F64)
        try:
            with torch.no_grad():
                xs = torch.from_numpy(x.astype(F64)).reshape(1, *net.input_shape)
                ours = net(xs).numpy()
        except Exception as exc:
            return Outcome("crash", f"evaluation: {type(exc).__name__}: {exc}")
        if ours.size != ref.size:
            return Outcome("mismatch", f"IR shape {ours.shape}, onnxruntime {ref.shape}", np.inf)
        diff = float(np.abs(ours.ravel() - ref.ravel()).max() / max(1.0, np.abs(ref).max()))
        diff = diff if diff == diff else np.inf  # NaN: a mismatch
        if diff > max(rtol, worst):
            worst, where = diff, f"relative difference {diff:.3g} > {rtol:g}"
    if worst:
        return Outcome("mismatch", where, worst)
    return Outcome("match")
