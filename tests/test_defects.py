"""Issue 12, "Defects found when trying it": results lost at the end (3), internal errors
(4), silent surprises (5) and words (6). Each test failed on the code before the fix."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantcert.cases.athletes import DATA_DIR

# One process imports quantcert (torch: seconds) once and forks a fresh child per CLI call,
# with its own stdout/stderr files: every call is a real process with real exit code and
# streams, and the file runs in seconds rather than minutes.
_SERVER = r"""
import json, os, signal, sys, traceback
import onnx, onnxruntime, quantcert.cli
# What every call imports (typer's parameter adapters pull in pydantic: 0.4 s), once here.
for name in ("typer._adapters", "quantcert.intake.onnx_model", "quantcert.analyses.epsilon"):
    try:
        __import__(name)
    except ImportError:
        pass
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(240)
            for fd, name in ((1, req["stdout"]), (2, req["stderr"])):
                os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            if req["cwd"]:
                os.chdir(req["cwd"])
            exec(req["setup"], {})
            sys.argv = ["quantcert", *req["args"]]
            quantcert.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""
_server: subprocess.Popen[str] | None = None


def run(*args: str, cwd: Path | None = None, setup: str = "") -> subprocess.CompletedProcess[str]:
    """``quantcert ARGS`` in a fresh process (forked from the server), as test_cli's ``run``;
    ``setup``: Python run in that process first (e.g. a stub)."""
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    assert _server.stdin is not None and _server.stdout is not None
    with tempfile.TemporaryDirectory() as d:
        out, err = Path(d) / "out", Path(d) / "err"
        req = {"args": list(args), "cwd": str(cwd or ""), "setup": setup}
        _server.stdin.write(json.dumps({**req, "stdout": str(out), "stderr": str(err)}) + "\n")
        _server.stdin.flush()
        code = int(json.loads(_server.stdout.readline()))
        return subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())


@pytest.fixture(scope="module", autouse=True)
def _stop_server() -> Iterator[None]:
    yield
    if _server is not None and _server.stdin is not None:
        _server.stdin.close()
        _server.wait(timeout=30)


def one_line_error(res: subprocess.CompletedProcess[str], needle: str) -> None:
    """Exit 2, one line on stderr naming ``needle``, no traceback."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert needle in lines[0], lines[0]


# ---------------------------------------------------------------- models built here
def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def mlp(path: Path, elem: int = TensorProto.FLOAT) -> Path:
    """x (1, 3) -> MatMul/Add/Relu -> MatMul -> y (1, 2), weights in ``elem``'s dtype."""
    dtype = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 4)).astype(dtype), "w1"),
        numpy_helper.from_array(rng.standard_normal(4).astype(dtype), "b1"),
        numpy_helper.from_array(rng.standard_normal((4, 2)).astype(dtype), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", elem, [1, 3])],
        [helper.make_tensor_value_info("y", elem, [1, 2])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def convnet(path: Path) -> Path:
    """x (1, 1, 4, 4) -> Conv 2x2 -> Relu -> Flatten -> Gemm -> y (1, 2)."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 1, 2, 2)).astype(np.float32), "cw"),
        numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "cb"),
        numpy_helper.from_array(rng.standard_normal((2, 18)).astype(np.float32), "gw"),
        numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "gb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def cast_to_half(path: Path) -> Path:
    """float32 input and output around a float16 body (onnxconverter's keep_io_types)."""
    w = numpy_helper.from_array(np.ones((3, 2), dtype=np.float16), "w")
    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], name="graph_input_cast_0", to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["xh", "w"], ["yh"]),
        helper.make_node("Cast", ["yh"], ["y"], name="graph_output_cast_0", to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [w],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from onnxruntime.quantization import quantize_dynamic

    d = tmp_path_factory.mktemp("models")
    out = {"mlp": mlp(d / "mlp.onnx"), "conv": convnet(d / "conv.onnx")}
    for name in ("mlp", "conv"):
        quantize_dynamic(str(out[name]), str(d / f"{name}_dq.onnx"))
        out[f"{name}_dq"] = d / f"{name}_dq.onnx"
    out["fp16"] = mlp(d / "fp16.onnx", TensorProto.FLOAT16)
    out["cast16"] = cast_to_half(d / "cast16.onnx")
    np.savez(d / "images.npz", images=np.random.default_rng(2).random((3, 3)), labels=[0, 1, 0])
    out["images"] = d / "images.npz"
    return out


# ---------------------------------------------------------------- 3: results lost at the end
def _bad_targets(tmp_path: Path) -> list[tuple[str, str]]:
    (tmp_path / "afile").write_text("x")
    return [
        (str(tmp_path), "is a folder"),
        ("/proc/quantcert-no-such/x.json", "cannot create folder"),
        (str(tmp_path / "afile" / "x.json"), "afile"),
    ]


def test_unwritable_json_is_refused_before_the_work(
    models: dict[str, Path], tmp_path: Path
) -> None:
    for target, needle in _bad_targets(tmp_path):
        one_line_error(run("info", str(models["mlp"]), "--json", target), needle)
        res = run("kappa", str(models["mlp"]), "--data", str(models["images"]), "--json", target)
        one_line_error(res, needle)
        assert "kappa (" not in res.stdout + res.stderr  # refused before measuring


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    one_line_error(run("reproduce", "paper", "--out", str(afile)), "not a folder")
    one_line_error(run("demo", "--out", str(afile)), "not a folder")
    assert afile.read_text() == "keep me"


def test_write_json_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcert.report import output

    target = tmp_path / "r.json"
    output.write_json({"a": 1}, str(target))
    assert json.loads(target.read_text()) == {"a": 1}

    def crash(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        output.write_json({"a": 2, "big": list(range(1000))}, str(target))
    assert json.loads(target.read_text()) == {"a": 1}  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left


def test_witness_npz_is_written_atomically(tmp_path: Path) -> None:
    from quantcert.report.output import write_npz

    write_npz(tmp_path / "w.witness.npz", x=np.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.witness.npz"]
    assert np.load(tmp_path / "w.witness.npz")["x"].tolist() == [0.0, 1.0, 2.0]


# ---------------------------------------------------------------- 4: internal errors
def test_npz_of_strings_or_objects(models: dict[str, Path], tmp_path: Path) -> None:
    np.savez(tmp_path / "text.npz", images=np.array([["a", "b", "c"]] * 2))
    np.savez(tmp_path / "objects.npz", images=np.array([1, "a"], dtype=object))
    np.savez(tmp_path / "labels.npz", images=np.zeros((2, 3)), labels=np.array(["x", "y"]))
    for name, needle in (("text", "text"), ("objects", "Python objects"), ("labels", "labels")):
        res = run("kappa", str(models["mlp"]), "--data", str(tmp_path / f"{name}.npz"))
        one_line_error(res, needle)


@pytest.mark.parametrize("name", ["mlp_dq", "conv_dq"])
def test_dynamic_quantized_onnx(models: dict[str, Path], name: str) -> None:
    res = run("info", str(models[name]))
    one_line_error(res, "quantized ONNX operator")
    assert "is not supported" in res.stderr
    assert any(op in res.stderr for op in ("DynamicQuantizeLinear", "Integer"))


@pytest.mark.parametrize("name", ["fp16", "cast16"])
def test_float16_onnx(models: dict[str, Path], name: str) -> None:
    one_line_error(run("info", str(models[name])), "float16 models are not supported yet")


def test_float16_is_refused_by_the_intake_itself(models: dict[str, Path]) -> None:
    from quantcert.errors import InputError
    from quantcert.intake import load

    with pytest.raises(InputError, match="float16 models are not supported yet"):
        load(models["fp16"], self_check=False)


def test_directory_as_model(tmp_path: Path) -> None:
    one_line_error(run("info", str(tmp_path)), "directory")


# ---------------------------------------------------------------- 5: silent surprises
def _epsilon(model: Path, *where: str) -> dict[str, object]:
    res = run("epsilon", str(model), "--delta", "0.01", *where, "--json", "-")
    assert res.returncode == 0, res.stderr
    data: dict[str, object] = json.loads(res.stdout)
    return data


def test_one_interval_is_every_input(models: dict[str, Path]) -> None:
    one = _epsilon(models["mlp"], "--domain", "0:1")
    three = _epsilon(models["mlp"], "--domain", "0:1,0:1,0:1")
    assert one["upper"] == three["upper"] and one["lower"] == three["lower"]


def test_vnnlib_point_says_it_is_the_centre(models: dict[str, Path], tmp_path: Path) -> None:
    spec = tmp_path / "box.vnnlib"
    lines = [f"(declare-const X_{i} Real)" for i in range(3)] + ["(declare-const Y_0 Real)"]
    lines += [f"(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))" for i in range(3)]
    spec.write_text("\n".join([*lines, "(assert (>= Y_0 100))", ""]))
    res = run("epsilon", str(models["mlp"]), "--delta", "0.01", "--at", str(spec), "--json", "-")
    assert res.returncode == 0, res.stderr
    assert "centre" in res.stderr and "Traceback" not in res.stderr


def test_uint8_point_is_scaled_like_kappa_data(models: dict[str, Path], tmp_path: Path) -> None:
    np.save(tmp_path / "u8.npy", np.array([255, 0, 51], dtype=np.uint8))
    from_npy = _epsilon(models["mlp"], "--at", str(tmp_path / "u8.npy"))
    scaled = _epsilon(models["mlp"], "--at", "1,0,0.2")
    assert from_npy["upper"] == scaled["upper"] and from_npy["lower"] == scaled["lower"]


_FAST_TRAIN = """
import numpy as np
from quantcert.cases import athletes
def fast(activation, seed=0):
    z = np.zeros
    return athletes.TrainedCase(
        f"ath-{activation}", activation, z((3, 2)), z(3), z((1, 3)), z(1), 0.5, 10, 0, seed, "stub"
    )
athletes.train_athletes = fast
"""


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("ath_*")}


def test_train_case_writes_to_out_not_the_package(tmp_path: Path) -> None:
    shipped = _digest(DATA_DIR)
    out = tmp_path / "trained"
    res = run("train-case", "athletes", "--out", str(out), setup=_FAST_TRAIN)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ath_linear.npz", "ath_relu.npz"]
    assert _digest(DATA_DIR) == shipped


# ---------------------------------------------------------------- 6: words
def test_version() -> None:
    res = run("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"quantcert {version('quantcert')}"


def test_min_bits_is_explained_where_printed(models: dict[str, Path]) -> None:
    res = run("kappa", str(models["mlp"]), "--data", str(models["images"]))
    assert res.returncode == 0, res.stderr
    assert "min bits" in res.stdout and "min bits = ceil(log2 kappa) + 1" in res.stdout


def test_kappa_help_says_what_it_means() -> None:
    res = run("kappa", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "amplifies" in text and "min bits" in text
