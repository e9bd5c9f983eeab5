"""Issue 12, the bad-input catalogue: every kind of bad input is one line on stderr
("quantcert: error: ..." naming the problem, no traceback), exit code 2, and no output file
that claims to be complete.

Every bad input is built here (seeded), next to small models built here too; the CLI runs
in real processes forked from test_defects' server, so the whole file takes seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import test_defects
from test_defects import convnet, mlp, run

PACKAGED = Path(__file__).resolve().parents[1] / "src" / "quantcert" / "data"
MNIST_NET = PACKAGED / "models" / "mnistfc" / "mnist-net_256x2.onnx"


@pytest.fixture(scope="module", autouse=True)
def _stop_server() -> Iterator[None]:
    yield
    server = test_defects._server
    if server is not None and server.stdin is not None and server.poll() is None:
        server.stdin.close()
        server.wait(timeout=30)


# ---------------------------------------------------------------- models built here
def _graph_model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    in_shape: list[int | str],
    out_shape: list[int | str],
    path: Path,
) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def linear(path: Path, n_in: int = 3, n_out: int = 2, weight: float | None = None) -> Path:
    """x (1, n_in) -> MatMul -> Add -> y (1, n_out); ``weight`` overwrites one entry."""
    rng = np.random.default_rng(n_in * 10 + n_out)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    if weight is not None:
        w[0, 0] = weight
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Add", ["h", "b"], ["y"], name="fc_bias"),
    ]
    return _graph_model(nodes, inits, [1, n_in], [1, n_out], path)


def unsupported(path: Path) -> Path:
    """A model whose one node is ``Det`` (a determinant), which quantcert does not translate."""
    node = helper.make_node("Det", ["x"], ["y"], name="det")
    return _graph_model([node], [], [1, 3, 3], [1], path)


def dynamic(path: Path) -> Path:
    """A model whose input has a symbolic feature dimension."""
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
    return _graph_model([node], [w], [1, "features"], [1, 2], path)


def two_outputs(path: Path) -> Path:
    """A graph with two outputs, ``y`` and ``z`` (the CLI loads single-output graphs)."""
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in ("y", "z")],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@dataclass(frozen=True)
class Models:
    d: Path
    mlp: Path
    conv: Path
    one_output: Path
    four_inputs: Path
    images: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    d = tmp_path_factory.mktemp("models")
    np.savez(d / "images.npz", images=np.random.default_rng(2).random((3, 3)), labels=[0, 1, 0])
    return Models(
        d,
        mlp(d / "mlp.onnx"),
        convnet(d / "conv.onnx"),
        linear(d / "one.onnx", 3, 1),
        linear(d / "four.onnx", 4, 2),
        d / "images.npz",
    )


def _mnist(d: Path, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    archive = np.load(PACKAGED / "mnist_test.npz")
    return archive["images"][:n], archive["labels"][:n].astype(np.int64)


def _vnnlib(d: Path, body: str, n_inputs: int = 3) -> Path:
    decls = [f"(declare-const X_{i} Real)" for i in range(n_inputs)]
    path = d / "spec.vnnlib"
    path.write_text("\n".join([*decls, "(declare-const Y_0 Real)", body, ""]))
    return path


def _box_lines(n: int, skip: int | None = None) -> str:
    lines = []
    for i in range(n):
        lines.append(f"(assert (>= X_{i} 0))")
        if i != skip:
            lines.append(f"(assert (<= X_{i} 1))")
    return "\n".join(lines)


# ---------------------------------------------------------------- the catalogue
@dataclass(frozen=True)
class Case:
    """``quantcert ARGS``; ``needle``: words the one error line must contain; ``json``: the
    command takes ``--json`` (a fresh path is added, and must not exist afterwards)."""

    args: tuple[str, ...]
    needle: str
    json: bool = True


Builder = Callable[[Models, Path], Case]
CASES: dict[str, Builder] = {}


def case(name: str) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        assert name not in CASES
        CASES[name] = fn
        return fn

    return register


def eps(model: Path | str, *more: str) -> tuple[str, ...]:
    """``epsilon MODEL --delta 0.01 --at 0.1,0.2,0.3 MORE``: a point or box (--at, --domain)
    or a radius (--delta, --relative, --weights) in ``MORE`` replaces the default one."""
    where = () if any(m in ("--at", "--domain") for m in more) else ("--at", "0.1,0.2,0.3")
    radii = ("--delta", "--relative", "--weights")
    delta = () if any(m in radii for m in more) else ("--delta", "0.01")
    return ("epsilon", str(model), *delta, *where, *more)


# --- model files
@case("corrupt-onnx")
def _(m: Models, d: Path) -> Case:
    (d / "bad.onnx").write_bytes(np.random.default_rng(3).bytes(300))
    return Case(("info", str(d / "bad.onnx")), "not a readable ONNX model")


@case("truncated-onnx")
def _(m: Models, d: Path) -> Case:
    data = m.mlp.read_bytes()
    (d / "cut.onnx").write_bytes(data[: len(data) // 2])
    return Case(("info", str(d / "cut.onnx")), "cut.onnx")


@case("empty-onnx")
def _(m: Models, d: Path) -> Case:
    (d / "empty.onnx").write_bytes(b"")
    return Case(("info", str(d / "empty.onnx")), "empty.onnx")


@case("unsupported-operator")
def _(m: Models, d: Path) -> Case:
    return Case(("info", str(unsupported(d / "det.onnx"))), "unsupported ONNX operator Det")


@case("dynamic-input-shape")
def _(m: Models, d: Path) -> Case:
    return Case(eps(dynamic(d / "dyn.onnx")), "unknown dimension")


@case("nan-weights")
def _(m: Models, d: Path) -> Case:
    return Case(eps(linear(d / "nan.onnx", weight=float("nan"))), "'w' holds NaN or Inf")


@case("inf-weights")
def _(m: Models, d: Path) -> Case:
    return Case(eps(linear(d / "inf.onnx", weight=float("inf"))), "'w' holds NaN or Inf")


@case("model-is-a-directory")
def _(m: Models, d: Path) -> Case:
    return Case(eps(d), "directory")


@case("model-missing")
def _(m: Models, d: Path) -> Case:
    return Case(eps(d / "nosuch.onnx"), "not found")


@case("model-unknown-extension")
def _(m: Models, d: Path) -> Case:
    (d / "net.h5").write_bytes(b"\x89HDF\r\n")
    return Case(("info", str(d / "net.h5")), "unknown model format '.h5'")


@case("pt-not-torch")
def _(m: Models, d: Path) -> Case:
    (d / "net.pt").write_text("not a torch file")
    return Case(("info", str(d / "net.pt")), "net.pt")


@case("joblib-not-joblib")
def _(m: Models, d: Path) -> Case:
    (d / "net.joblib").write_bytes(np.random.default_rng(4).bytes(64))
    return Case(("info", str(d / "net.joblib")), "net.joblib")


@case("weights-do-not-chain")
def _(m: Models, d: Path) -> Case:
    inits = [
        numpy_helper.from_array(np.ones((3, 4), np.float32), "w1"),
        numpy_helper.from_array(np.ones((5, 2), np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2"),
    ]
    path = _graph_model(nodes, inits, [1, 3], [1, 2], d / "chain.onnx")
    return Case(("info", str(path)), "'fc2' (MatMul)")


@case("unsupported-attribute")
def _(m: Models, d: Path) -> Case:
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", transA=1)
    path = _graph_model([node], [w], [1, 3], [1, 2], d / "attr.onnx")
    return Case(("info", str(path)), "transA=1 is not supported")


@case("dangling-onnx-input")
def _(m: Models, d: Path) -> Case:
    node = helper.make_node("MatMul", ["x", "nowhere"], ["y"], name="fc")
    path = _graph_model([node], [], [1, 3], [1, 2], d / "dangling.onnx")
    return Case(("info", str(path)), "'nowhere'")


@case("integer-onnx-input")
def _(m: Models, d: Path) -> Case:
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["xf", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(d / "int.onnx"))
    return Case(("info", str(d / "int.onnx")), "INT64")


@case("two-onnx-outputs")
def _(m: Models, d: Path) -> Case:
    return Case(eps(two_outputs(d / "two.onnx")), "2 outputs (y, z)")


@case("pt-state-dict")
def _(m: Models, d: Path) -> Case:
    import torch

    torch.save({"weight": torch.ones(2, 3)}, d / "sd.pt")
    return Case(("info", str(d / "sd.pt")), "state_dict")


# --- points
@case("at-too-few")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--at", "0.1,0.2"), "point has 2 coordinates, the model takes 3")


@case("at-too-many")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--at", "1,2,3,4"), "point has 4 coordinates, the model takes 3")


@case("at-npy-wrong-size")
def _(m: Models, d: Path) -> Case:
    np.save(d / "x.npy", np.random.default_rng(5).random(5))
    return Case(eps(m.mlp, "--at", str(d / "x.npy")), "point has 5 coordinates")


@case("at-npy-not-npy")
def _(m: Models, d: Path) -> Case:
    (d / "x.npy").write_text("1,2,3")
    return Case(eps(m.mlp, "--at", str(d / "x.npy")), "not a .npy array")


@case("at-non-numeric")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--at", "0.1,abc,0.3"), "point coordinate 2: 'abc' is not a number")


@case("at-empty-coordinate")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--at", "0.1,,0.3"), "point coordinate 2 is empty")


@case("at-nan")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--at", "0.1,nan,0.3"), "point coordinate 2 is NaN")


@case("at-inf")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--at", "0.1,inf,0.3"), "point coordinate 2")


@case("at-and-domain")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--at", "1,2,3", "--domain", "0:1"), "exactly one of --at")


# --- domains
@case("domain-inverted")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--domain", "0:1,1:0,0:1"), "lower 1 > upper 0")


@case("domain-nan")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--domain", "0:1,nan:1,0:1"), "domain dimension 2 is NaN")


@case("domain-wrong-count")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--domain", "0:1,0:1"), "domain has 2 dimensions, the model takes 3")


@case("domain-not-lo-hi")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--domain", "0:1,0-1,0:1"), "is not LO:HI")


@case("domain-empty")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--domain", " "), "domain is empty")


@case("vnnlib-unbalanced-open")
def _(m: Models, d: Path) -> Case:
    path = _vnnlib(d, _box_lines(3) + "\n(assert (<= Y_0 1)")
    return Case(eps(m.mlp, "--domain", str(path)), "unbalanced '('")


@case("vnnlib-unbalanced-close")
def _(m: Models, d: Path) -> Case:
    path = _vnnlib(d, _box_lines(3) + "\n(assert (<= Y_0 1)))")
    return Case(eps(m.mlp, "--domain", str(path)), "unbalanced ')'")


@case("vnnlib-unknown-variable")
def _(m: Models, d: Path) -> Case:
    path = _vnnlib(d, _box_lines(3) + "\n(assert (<= X_7 1))")
    return Case(eps(m.mlp, "--domain", str(path)), "X_7")


@case("vnnlib-missing-bound")
def _(m: Models, d: Path) -> Case:
    path = _vnnlib(d, _box_lines(3, skip=1))
    return Case(eps(m.mlp, "--domain", str(path)), "no bounds for X_1")


@case("vnnlib-not-a-number")
def _(m: Models, d: Path) -> Case:
    path = _vnnlib(d, _box_lines(3) + "\n(assert (<= X_0 one))")
    return Case(eps(m.mlp, "--domain", str(path)), "one")


@case("vnnlib-unknown-command")
def _(m: Models, d: Path) -> Case:
    path = _vnnlib(d, _box_lines(3) + "\n(frobnicate X_0)")
    return Case(eps(m.mlp, "--domain", str(path)), "frobnicate")


@case("vnnlib-empty-box")
def _(m: Models, d: Path) -> Case:
    path = _vnnlib(d, _box_lines(3) + "\n(assert (<= X_2 -1))")
    return Case(eps(m.mlp, "--domain", str(path)), "X_2 has lower 0.0 > upper -1.0")


@case("vnnlib-wrong-dimension")
def _(m: Models, d: Path) -> Case:
    path = _vnnlib(d, _box_lines(5), n_inputs=5)
    return Case(eps(m.mlp, "--domain", str(path)), "domain has 5 dimensions")


@case("vnnlib-missing-file")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--at", str(d / "nosuch.vnnlib")), "not found")


@case("csv-missing-values")
def _(m: Models, d: Path) -> Case:
    (d / "cats.csv").write_text("heart_weight_g,body_weight_kg\n7.0,\n,2.5\nNA,3.0\n")
    return Case(("epsilon", "cat", "--delta", "0.01", "--domain", str(d / "cats.csv")), "no row")


@case("csv-non-numeric")
def _(m: Models, d: Path) -> Case:
    (d / "cats.csv").write_text("heart_weight_g,body_weight_kg\n7.0,2.0\nheavy,2.5\n")
    args = ("epsilon", "cat", "--delta", "0.01", "--domain", str(d / "cats.csv"))
    return Case(args, "'heart_weight_g'")


@case("csv-non-numeric-generic")
def _(m: Models, d: Path) -> Case:
    (d / "x.csv").write_text("a,b,c\n0,1,2\n1,two,3\n")
    return Case(eps(m.mlp, "--domain", str(d / "x.csv")), "'two'")


@case("csv-ragged")
def _(m: Models, d: Path) -> Case:
    (d / "x.csv").write_text("a,b,c\n0,1,2\n1,2\n")
    return Case(eps(m.mlp, "--domain", str(d / "x.csv")), "line 3 has 2 fields")


@case("csv-empty")
def _(m: Models, d: Path) -> Case:
    (d / "x.csv").write_text("")
    return Case(eps(m.mlp, "--domain", str(d / "x.csv")), "is empty")


# --- radii
@case("delta-negative")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--delta", "-0.1"), "-0.1")


@case("delta-nan")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--delta", "nan"), "nan")


@case("delta-inf")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--delta", "inf"), "inf")


@case("relative-negative")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--relative", "-0.5"), "-0.5")


@case("delta-and-relative")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--delta", "0.1", "--relative", "0.1"), "exactly one of --delta")


@case("select-nothing")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--select", "no_such_tensor"), "no_such_tensor")


# --- formats
@case("weights-int99")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--weights", "int99"), "int99")


@case("weights-unknown-format")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--weights", "foo"), "foo")


@case("weights-bad-group")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--weights", "int4:group=7"), "group size must be one of")


@case("weights-group-does-not-divide")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--weights", "int4:group=16"), "group size 16 does not divide")


@case("activations-block-format")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--activations", "int4:group=16"), "only per-tensor integer formats")


@case("weights-for-missing-layer")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--weights", "no_such_layer=int8"), "no_such_layer")


@case("calibration-not-npz")
def _(m: Models, d: Path) -> Case:
    (d / "cal.npz").write_text("nope")
    args = eps(m.mlp, "--activations", "int8", "--calibration", str(d / "cal.npz"))
    return Case(args, "cal.npz: not an .npz archive")


@case("calibration-wrong-shape")
def _(m: Models, d: Path) -> Case:
    np.savez(d / "cal.npz", x=np.random.default_rng(10).random((4, 5)))
    args = eps(m.mlp, "--activations", "int8", "--calibration", str(d / "cal.npz"))
    return Case(args, "calibration data of shape (4, 5) does not fit")


# --- budget options
@case("memory-budget-garbage")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--memory-budget", "lots"), "--memory-budget")


@case("memory-budget-zero")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--memory-budget", "0"), "--memory-budget")


@case("timeout-negative")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--timeout", "-1"), "--timeout")


@case("gap-negative")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--gap", "-1"), "--gap")


@case("method-unknown")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--method", "magic"), "magic")


@case("engine-unknown")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--engine", "magic"), "magic")


@case("device-unknown")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--device", "tpu"), "tpu")


@case("perturb-unknown")
def _(m: Models, d: Path) -> Case:
    return Case(eps(m.mlp, "--perturb", "sideways"), "sideways")


@case("flip-level-nan")
def _(m: Models, d: Path) -> Case:
    args = ("flip", "cat", "--delta", "0.01", "--at", "7,2", "--level", "nan")
    return Case(args, "--level")


@case("flip-level-several-outputs")
def _(m: Models, d: Path) -> Case:
    args = ("flip", str(m.mlp), "--delta", "0.01", "--at", "1,2,3", "--level", "0.3")
    return Case(args, "--level needs a single-output network; this one has 2")


@case("flip-level-inf-raw-score")
def _(m: Models, d: Path) -> Case:
    args = ("flip", str(m.one_output), "--delta", "0.01", "--at", "1,2,3", "--level", "inf")
    return Case(args, "--level must be a finite number")


@case("sigma-inverted-domain")
def _(m: Models, d: Path) -> Case:
    return Case(("sigma", "cat", "--delta", "0.01", "--domain", "2:1"), "lower 2 > upper 1")


# --- data files
@case("kappa-npz-of-strings")
def _(m: Models, d: Path) -> Case:
    np.savez(d / "text.npz", images=np.array([["a", "b", "c"]] * 2))
    return Case(("kappa", str(m.mlp), "--data", str(d / "text.npz")), "text")


@case("kappa-npz-without-images")
def _(m: Models, d: Path) -> Case:
    np.savez(d / "other.npz", pixels=np.zeros((2, 3)))
    return Case(("kappa", str(m.mlp), "--data", str(d / "other.npz")), "images")


@case("kappa-npz-corrupt")
def _(m: Models, d: Path) -> Case:
    (d / "bad.npz").write_bytes(np.random.default_rng(6).bytes(100))
    return Case(("kappa", str(m.mlp), "--data", str(d / "bad.npz")), "bad.npz")


@case("kappa-data-wrong-shape")
def _(m: Models, d: Path) -> Case:
    np.savez(d / "wide.npz", images=np.random.default_rng(7).random((2, 5)))
    return Case(("kappa", str(m.mlp), "--data", str(d / "wide.npz")), "shape")


@case("kappa-labels-out-of-range")
def _(m: Models, d: Path) -> Case:
    np.savez(d / "l.npz", images=np.random.default_rng(8).random((3, 3)), labels=[0, 5, 1])
    return Case(("kappa", str(m.mlp), "--data", str(d / "l.npz")), "labels must lie in [0, 1]")


@case("kappa-labels-negative-store")
def _(m: Models, d: Path) -> Case:
    np.savez(d / "l.npz", images=np.random.default_rng(9).random((3, 3)), labels=[0, -1, 1])
    args = ("kappa", str(m.mlp), "--data", str(d / "l.npz"), "--store", str(d / "runs"))
    return Case(args, "found -1..1")


@case("kappa-vnnlib-empty-box")
def _(m: Models, d: Path) -> Case:
    path = _vnnlib(d, _box_lines(3) + "\n(assert (<= X_1 -1))")
    return Case(("kappa", str(m.mlp), "--data", str(path)), "X_1 has lower 0.0 > upper -1.0")


@case("kappa-method-unknown")
def _(m: Models, d: Path) -> Case:
    return Case(("kappa", str(m.mlp), "--data", str(m.images), "--method", "magic"), "magic")


@case("kappa-limit-zero")
def _(m: Models, d: Path) -> Case:
    return Case(("kappa", str(m.mlp), "--data", str(m.images), "--limit", "0"), "--limit")


@case("kappa-radius-negative")
def _(m: Models, d: Path) -> Case:
    args = ("kappa", str(m.mlp), "--data", str(m.images), "--method", "certified")
    return Case((*args, "--radius", "-1"), "--radius")


@case("kappa-scheduler-unreachable")
def _(m: Models, d: Path) -> Case:
    args = ("kappa", str(m.mlp), "--data", str(m.images), "--scheduler", "tcp://127.0.0.1:1")
    return Case(args, "tcp://127.0.0.1:1")


@case("kappa-scheduler-malformed")
def _(m: Models, d: Path) -> Case:
    args = ("kappa", str(m.mlp), "--data", str(m.images), "--scheduler", "127.0.0.1")
    return Case(args, "tcp://HOST:PORT")


@case("kappa-store-is-a-file")
def _(m: Models, d: Path) -> Case:
    (d / "afile").write_text("keep")
    args = ("kappa", str(m.mlp), "--data", str(m.images), "--store", str(d / "afile"))
    return Case(args, "afile")


@case("accuracy-labels-out-of-range")
def _(m: Models, d: Path) -> Case:
    images, labels = _mnist(d)
    labels[1] = 10
    np.savez(d / "mnist.npz", images=images, labels=labels)
    args = ("accuracy", str(MNIST_NET), "--data", str(d / "mnist.npz"), "--weights", "int8")
    return Case(args, "label")


@case("accuracy-labels-negative")
def _(m: Models, d: Path) -> Case:
    images, labels = _mnist(d)
    labels[0] = -1
    np.savez(d / "mnist.npz", images=images, labels=labels)
    args = ("accuracy", str(MNIST_NET), "--data", str(d / "mnist.npz"), "--weights", "int8")
    return Case(args, "label")


@case("accuracy-data-wrong-shape")
def _(m: Models, d: Path) -> Case:
    images, labels = _mnist(d)
    np.savez(d / "mnist.npz", images=images[:, :20, :20], labels=labels)
    args = ("accuracy", str(MNIST_NET), "--data", str(d / "mnist.npz"), "--weights", "int8")
    return Case(args, "shape")


@case("accuracy-no-labels")
def _(m: Models, d: Path) -> Case:
    images, _ = _mnist(d)
    np.savez(d / "mnist.npz", images=images)
    args = ("accuracy", str(MNIST_NET), "--data", str(d / "mnist.npz"), "--weights", "int8")
    return Case(args, "labels")


# --- compare
@case("compare-different-input-shapes")
def _(m: Models, d: Path) -> Case:
    return Case(("compare", str(m.mlp), str(m.four_inputs), "--domain", "0:1"), "input")


@case("compare-missing-quant-model")
def _(m: Models, d: Path) -> Case:
    args = ("compare", str(m.mlp), str(d / "nosuch.onnx"), "--domain", "0:1")
    return Case(args, "not found")


@case("compare-no-domain")
def _(m: Models, d: Path) -> Case:
    return Case(("compare", str(m.mlp), str(m.mlp)), "exactly one of --at")


# --- commands without --json
@case("reproduce-unknown")
def _(m: Models, d: Path) -> Case:
    return Case(("reproduce", "novel", "--out", str(d / "out")), "'novel'", json=False)


@case("train-case-unknown")
def _(m: Models, d: Path) -> Case:
    return Case(("train-case", "dogs", "--out", str(d / "out")), "'dogs'", json=False)


# --- output paths (the needle names the path; checked before any work)
@case("json-into-directory")
def _(m: Models, d: Path) -> Case:
    (d / "folder").mkdir()
    return Case(eps(m.mlp, "--json", str(d / "folder")), "is a folder", json=False)


@case("json-under-a-file")
def _(m: Models, d: Path) -> Case:
    (d / "afile").write_text("keep")
    return Case(eps(m.mlp, "--json", str(d / "afile" / "r.json")), "afile", json=False)


@case("json-unwritable-folder")
def _(m: Models, d: Path) -> Case:
    target = "/proc/quantcert-no-such/r.json"
    return Case(eps(m.mlp, "--json", target), "cannot create folder", json=False)


@case("json-empty-path")
def _(m: Models, d: Path) -> Case:
    return Case(("info", str(m.mlp), "--json", ""), "path is empty", json=False)


@case("out-unwritable")
def _(m: Models, d: Path) -> Case:
    return Case(("demo", "--out", "/proc/quantcert-no-such"), "cannot create folder", json=False)


@case("out-is-a-file")
def _(m: Models, d: Path) -> Case:
    (d / "afile").write_text("keep")
    return Case(("reproduce", "paper", "--out", str(d / "afile")), "not a folder", json=False)


@case("train-case-out-under-a-file")
def _(m: Models, d: Path) -> Case:
    (d / "afile").write_text("keep")
    args = ("train-case", "athletes", "--out", str(d / "afile" / "sub"))
    return Case(args, "afile", json=False)


# ---------------------------------------------------------------- the test
def _no_false_output(folder: Path, inputs: set[Path]) -> None:
    """Nothing new under ``folder`` (the case's inputs, and its output paths) claims to be
    a finished result: no result, witness or temporary file beside the inputs."""
    for path in folder.rglob("*"):
        if path.is_file() and path not in inputs:
            assert path.suffix not in (".json", ".npz", ".onnx", ".tmp"), path


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, models: Models, tmp_path: Path) -> None:
    work, out = tmp_path / "in", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    c = CASES[name](models, work)
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    target = out / "result.json"
    args = (*c.args, "--json", str(target)) if c.json else c.args
    res = run(*args, cwd=tmp_path)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("quantcert: error: "), lines[0]
    assert c.needle in lines[0], lines[0]
    assert not any(out.iterdir()), sorted(out.iterdir())  # no result file, whole or half
    _no_false_output(work, set(before))
    for path, data in before.items():  # the inputs are untouched
        assert path.read_bytes() == data, path


def test_legal_inputs_next_to_the_catalogue(models: Models) -> None:
    """Not bad input: delta 0 is a legal query (nothing moves), a one-output model is a
    binary score for kappa (binary DeepFool), and compare takes two float models (their
    difference is then zero)."""
    res = run("epsilon", str(models.mlp), "--delta", "0", "--at", "0.1,0.2,0.3", "--json", "-")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["lower"] == 0
    res = run("kappa", str(models.one_output), "--data", str(models.images))
    assert res.returncode == 0, res.stderr
    assert "label flips by DeepFool" in res.stdout
    res = run("compare", str(models.mlp), str(models.mlp), "--at", "0.1,0.2,0.3", "--json", "-")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["lower"] == 0


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 40
