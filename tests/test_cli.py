"""Command line: answers exit 0, bad input exits 2 with one line on stderr, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODELS, PACKAGED

SMALL = str(MODELS / "test_small.onnx")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from quantcert.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_info_json() -> None:
    res = run("info", str(PACKAGED / "verivital" / "Convnet_maxpool.onnx"), "--json", "-")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["input_shape"] == [1, 28, 28]
    assert data["total_params"] == sum(p["count"] for p in data["params"])


def test_epsilon_json_has_the_contract_keys(tmp_path: Path) -> None:
    out = tmp_path / "eps.json"
    res = run("epsilon", SMALL, "--delta", "0.01", "--domain=-1:1", "--json", str(out))
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    for key in ("lower", "upper", "gap", "status", "witness", "time_s", "engine"):
        assert key in data
    assert data["lower"] <= data["upper"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("info", "/no/such/model.onnx"), "not found"),
        (("epsilon", SMALL, "--delta", "-0.1", "--at", "0.5"), "--delta"),
        (("epsilon", SMALL, "--delta", "0.1", "--domain", "2:1"), "lower 2 > upper 1"),
        (("epsilon", SMALL, "--delta", "0.1", "--domain", "0:1,0:1"), "dimensions"),
        (("epsilon", SMALL, "--delta", "0.1"), "--at"),
        (("flip", SMALL, "--delta", "0.1", "--at", "nan"), ""),
        (("info", str(Path(__file__))), "format"),
        (("epsilon", SMALL, "--delta", "0.1", "--at", "0.5", "--device", "tpu"), "--device"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], needle: str) -> None:
    res = run(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert needle in lines[0]


def test_exact_engine_agrees_with_ours_on_the_cat() -> None:
    results = {}
    for engine in ("quantcert", "exact"):
        res = run(
            "epsilon",
            "cat",
            "--delta",
            "0.005",
            "--domain",
            "6.3:20.5,2:3.9",
            "--gap",
            "1e-5",
            "--engine",
            engine,
            "--json",
            "-",
        )
        assert res.returncode == 0, res.stderr
        results[engine] = json.loads(res.stdout)
    ours, scip = results["quantcert"], results["exact"]
    assert max(ours["lower"], scip["lower"]) <= min(ours["upper"], scip["upper"]) + 1e-9


def test_kappa_command_json() -> None:
    npz = PACKAGED.parent / "mnist_test.npz"
    res = run(
        "kappa",
        str(PACKAGED / "mnistfc" / "mnist-net_256x2.onnx"),
        "--data",
        str(npz),
        "--limit",
        "5",
        "--json",
        "-",
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    for key in (
        "images",
        "flipped",
        "kappa",
        "min_bits",
        "relative_perturbation",
        "gain",
        "analytic_bound",
    ):
        assert key in data


def test_kappa_per_layer_json() -> None:
    npz = PACKAGED.parent / "mnist_test.npz"
    model = str(PACKAGED / "verivital" / "Convnet_avgpool.onnx")
    res = run("kappa", model, "--data", str(npz), "--limit", "4", "--per-layer", "--json", "-")
    assert res.returncode == 0, res.stderr
    layers = json.loads(res.stdout)["per_layer"]["layers"]
    assert layers[0]["node"] == "input" and len(layers) >= 3


def test_epsilon_writes_a_replayable_onnx_witness(tmp_path: Path) -> None:
    """The witness is the user's own graph with its perturbed initializers; onnxruntime on
    the stored input reproduces the certified lower (within float32 storage)."""
    from quantcert.report.witness_onnx import replay_witness

    out = tmp_path / "eps.json"
    res = run("epsilon", SMALL, "--delta", "0.01", "--at", "0.5", "--json", str(out))
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    witness = data["witness"]
    assert Path(witness["onnx"]).is_file() and Path(witness["onnx_input"]).is_file()
    assert data["spec"]["perturbation"]["stated_on"] == "file initializers"
    replayed = replay_witness(Path(witness["onnx"]))
    assert witness["onnx_replayed_change"] >= data["lower"] - 1e-5 * (1 + abs(replayed).max())


def test_perturb_modes_and_the_self_check_flag(tmp_path: Path) -> None:
    base = ("epsilon", SMALL, "--delta", "0.01", "--at", "0.5", "--json", "-")
    folded = run(*base, "--perturb", "folded", "--no-self-check")
    assert folded.returncode == 0, folded.stderr
    assert json.loads(folded.stdout)["spec"]["perturbation"]["stated_on"] == "network parameters"
    bad = run(*base, "--perturb", "sideways")
    assert bad.returncode == 2 and "--perturb" in bad.stderr and "Traceback" not in bad.stderr


def test_every_per_output_witness_replays_in_onnxruntime(tmp_path: Path) -> None:
    """Issue 12, defect 1: each per-output entry names its own witness file, and that
    witness, written as the user's graph, reproduces the entry's lower in onnxruntime."""
    import numpy as np
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from quantcert.intake import load
    from quantcert.report.witness_onnx import replay_witness, write_witness_model

    rng = np.random.default_rng(12)
    # 2,040 parameters: over INLINE_PARAMS, so each witness lives in a file
    inits = {
        "W1": rng.normal(size=(30, 60)) / 5,
        "b1": rng.normal(size=60),
        "W2": rng.normal(size=(60, 3)) / 8,
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["m"]),
        helper.make_node("Add", ["m", "b1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("MatMul", ["t", "W2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "three",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 30])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(a.astype(np.float32), k) for k, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "three.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "eps.json"
    res = run(
        "epsilon",
        str(path),
        "--delta",
        "0.05",
        "--domain=-1:1",
        "--timeout",
        "3",
        "--json",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    net = load(path)
    nominal = net.param_tensors()
    files = [entry["witness"]["params_file"] for entry in data["per_output"]]
    assert len(set(files)) == 3  # one file per output, none shared with another
    base = write_witness_model(model, {}, np.zeros(30), tmp_path / "nominal.onnx")
    for k, entry in enumerate(data["per_output"]):
        witness = entry["witness"]
        if "param_offsets" in witness:  # small: inline, with its own x
            x = np.asarray(witness["x"])
            offsets = {n: np.asarray(v) for n, v in witness["param_offsets"].items()}
        else:
            stored = np.load(witness["params_file"])
            x, offsets = stored["x"], {n: stored[n] for n in stored.files if n != "x"}
        params = {n: nominal[n] + torch.as_tensor(v) for n, v in offsets.items()}
        w = write_witness_model(model, net.file_params(params), x, tmp_path / f"w{k}.onnx")
        write_witness_model(model, {}, x, base.model)
        change = abs(
            float(replay_witness(w.model).ravel()[k] - replay_witness(base.model).ravel()[k])
        )
        assert change >= entry["lower"] - 1e-5, (k, change, entry["lower"])


def test_sigterm_keeps_the_bounds_so_far_and_exits_143(tmp_path: Path) -> None:
    """Issue 12, defect 2: SIGTERM during branch and bound stops it promptly, writes the
    bounds reached so far marked interrupted, and exits 143 (SIGINT: 130), not 0."""
    import signal
    import time

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes, inits, nodes, prev = [2, 20, 20, 20, 1], {}, [], "x"
    for i in range(4):
        inits[f"W{i}"] = rng.normal(size=(sizes[i], sizes[i + 1])) / np.sqrt(sizes[i])
        inits[f"b{i}"] = rng.normal(size=sizes[i + 1]) * 0.1
        nodes += [
            helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}" if i < 3 else "y"]),
        ]
        if i < 3:
            nodes.append(helper.make_node("Tanh", [f"a{i}"], [f"t{i}"]))
            prev = f"t{i}"
    graph = helper.make_graph(
        nodes,
        "deep_tanh",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(a.astype(np.float32), k) for k, a in inits.items()],
    )
    path, out = tmp_path / "deep_tanh.onnx", tmp_path / "eps.json"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    args = ["epsilon", str(path), "--delta", "0.1", "--domain=-1:1", "--timeout", "120"]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from quantcert.cli import main; main()", *args, "--json", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(10)  # imports, load and the first witness search; then branch and bound
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)  # it stopped 0.75 s after the signal here
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    if out.exists():  # the search had started: its bounds so far are kept
        data = json.loads(out.read_text())
        assert data["spec"]["interrupted"] is True
        assert data["lower"] <= data["upper"]
