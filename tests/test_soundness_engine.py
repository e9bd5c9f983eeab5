"""Engine-side soundness (issue 13): non-finite bounds are never dropped, every engine uses
the same flip level, ``optimal`` means ``upper - lower <= gap``, and a memory budget ends a
search with ``bounded`` and sound bounds instead of a kill.

The crafted networks are ONNX files built with ``onnx.helper``; flip witnesses are replayed
in onnxruntime."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from onnx import TensorProto, helper, numpy_helper

from conftest import conv_residual_net, mlp, sampled_max
from quantcert import load
from quantcert.analyses import epsilon as eps_mod
from quantcert.analyses import flip as flip_mod
from quantcert.analyses import sigma as sigma_mod
from quantcert.analyses.epsilon import Budget, epsilon, input_box
from quantcert.analyses.flip import flip
from quantcert.analyses.sigma import sigma
from quantcert.engines import bab, bounds, perturbation
from quantcert.engines.attack import Witness
from quantcert.errors import InputError
from quantcert.ops.base import DTYPE, Box
from quantcert.report.results import Certificate

DECISIVE = ("optimal", "verified")


def _gemm_relu_gemm(
    path: Path, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray
) -> Path:
    """x (1, n) -> Gemm -> Relu -> Gemm, weights stored (out, in) with transB = 1."""
    inits = [
        numpy_helper.from_array(np.asarray(a, np.float32), name)
        for a, name in ((w1, "W1"), (b1, "b1"), (w2, "W2"), (b2, "b2"))
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w1.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w2.shape[0]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def big_net(tmp_path: Path) -> Path:
    """A 2-3-1 ReLU net whose weights make |x| ~ 1e307 overflow float64 in the first layer."""
    w1 = np.array([[10.0, -8.0], [-12.0, 9.0], [7.0, 11.0]])
    return _gemm_relu_gemm(
        tmp_path / "big.onnx", w1, np.array([0.5, -0.2, 0.1]), np.array([[3.0, -4.0, 2.0]]),
        np.array([0.3]),
    )  # fmt: skip


@pytest.fixture
def raw_net(tmp_path: Path) -> Path:
    """A raw-score 2-3-1 ReLU net (no sigmoid) whose outputs over [0, 1]^2 lie near 0.13:
    at delta 0.08 the score can cross 0 but never reach 0.5 (the old exact level)."""
    w1 = np.array([[0.5, -0.3], [0.2, 0.4], [-0.1, 0.3]])
    return _gemm_relu_gemm(
        tmp_path / "raw.onnx", w1, np.array([0.1, 0.0, 0.05]), np.array([[0.05, -0.02, 0.03]]),
        np.array([0.12]),
    )  # fmt: skip


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from quantcert.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


# ----------------------------------------------------------------------------- 1. non-finite


HUGE = 1e307


def test_overflowing_domain_is_refused_or_unknown_via_the_api(big_net: Path) -> None:
    """Violation 5: at |x| ~ 1e307 the root bound is NaN. No query may answer optimal or
    verified: it is refused up front (InputError), or unknown with reason non-finite."""
    net = load(big_net)
    pert = perturbation.absolute(net, 0.01)
    box = input_box(net, np.full(2, -HUGE), np.full(2, HUGE))
    for query in (epsilon, flip, sigma):
        try:
            res = query(net, pert, box, Budget(timeout=2))
        except InputError as exc:
            assert "overflow" in str(exc) or "exceed" in str(exc)
            continue
        certs = [res.overall] if hasattr(res, "overall") else [res.above, res.below]
        for c in certs:
            assert c.status not in DECISIVE and c.reason == "non-finite bound"


@pytest.mark.parametrize("query", ["epsilon", "flip", "sigma"])
def test_overflowing_domain_is_refused_or_unknown_on_the_cli(big_net: Path, query: str) -> None:
    box = f"--domain=-{HUGE}:{HUGE},-{HUGE}:{HUGE}"
    res = run_cli(query, str(big_net), "--delta", "0.01", box, "--timeout", "2", "--json", "-")
    if res.returncode == 2:
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr
        return
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    sides = [data] if "status" in data else list(data["sides"].values())
    for side in sides:
        assert side["status"] not in DECISIVE and side["reason"] == "non-finite bound"


@settings(max_examples=60, deadline=None)
@given(
    lower=st.floats(allow_nan=True, allow_infinity=True),
    upper=st.floats(allow_nan=True, allow_infinity=True),
    status=st.sampled_from(["optimal", "verified", "falsified", "bounded", "timeout"]),
)
def test_no_certificate_with_a_non_finite_bound_is_decisive(
    lower: float, upper: float, status: str
) -> None:
    c = Certificate(lower, upper, status, None, 0.0, "test")
    bad = math.isnan(lower) or math.isnan(upper) or upper == math.inf or lower == math.inf
    if bad:
        assert c.status == "unknown" and c.reason == "non-finite bound"
        assert c.to_dict()["reason"] == "non-finite bound"
    else:
        assert c.status == status and c.reason is None and "reason" not in c.to_dict()


@settings(max_examples=20, deadline=None)
@given(cut=st.floats(0.05, 0.95), seed=st.integers(0, 2**16), gap=st.floats(0.0, 0.5))
def test_branch_and_bound_never_drops_a_nan_box(cut: float, seed: int, gap: float) -> None:
    """Maximise f(x) = x on [0, 1]. Boxes reaching past ``cut`` (the maximiser's side) and a
    random share of the others have NaN bounds; the attack never leaves the first half. A
    sound answer keeps every NaN box: its upper is +inf (>= 1) and it is not optimal."""
    gen = np.random.default_rng(seed)

    def bound(boxes: Box) -> torch.Tensor:
        hi = boxes.hi.flatten(1)[:, 0].clone()
        nan = (hi > cut) | torch.as_tensor(gen.random(hi.shape[0]) < 0.3)
        return torch.where(nan, torch.nan, hi)

    def attack(boxes: Box, steps: int) -> Witness:
        x = torch.clamp(boxes.lo[0], max=cut / 2)
        return Witness(float(x.flatten()[0]), x, {})

    root = Box(torch.zeros((1, 1), dtype=DTYPE), torch.ones((1, 1), dtype=DTYPE))
    out = bab.maximise(bound, attack, root, gap, deadline=_in(0.1))
    assert out.status != "optimal"
    assert out.upper >= 1.0


@settings(max_examples=6, deadline=None)
@given(
    share=st.floats(0.1, 1.0),
    seed=st.integers(0, 2**16),
    query=st.sampled_from(["eps-local", "eps-global", "flip", "sigma"]),
)
def test_no_query_turns_a_nan_bound_into_a_decisive_answer(
    share: float, seed: int, query: str
) -> None:
    """Force ``bound_spec`` to give NaN for a random share of the boxes in every batch (the
    root among them): no query may then answer optimal or verified, and its upper must not
    be a finite number below what sampling reaches."""
    gen = np.random.default_rng(seed)
    real = bounds.bound_spec

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        upper, node_bounds = real(*args, **kwargs)
        nan = torch.as_tensor(gen.random(upper.shape[0]) < share)
        nan[0] = True
        return upper.masked_fill(nan.unsqueeze(1), torch.nan), node_bounds

    with pytest.MonkeyPatch.context() as patch:
        for module in (eps_mod, flip_mod, sigma_mod):
            patch.setattr(module, "bound_spec", poisoned)
        _check_poisoned_query(seed, query)


def _check_poisoned_query(seed: int, query: str) -> None:
    net = mlp([2, 4, 1], "relu", seed=seed % 7)
    pert = perturbation.absolute(net, 0.05)
    lo, hi = np.array([-0.5, -0.5]), np.array([0.5, 0.5])
    budget = Budget(timeout=0.4, gap=1e9)  # any finite gap is "reached" by a finite answer
    box = input_box(net, lo, lo if query == "eps-local" else hi)
    if query.startswith("eps"):
        res = epsilon(net, pert, box, budget)
        c = res.overall
        assert c.status not in DECISIVE and c.reason == "non-finite bound"
        assert math.isnan(c.upper) or c.upper >= float(sampled_max(net, 0.05, box, 500).max())
    elif query == "flip":
        c = flip(net, pert, box, budget).overall
        assert c.status != "verified"
    else:
        s = sigma(net, pert, box, budget)
        for c in (s.above, s.below):
            assert c.status not in DECISIVE or c.upper == c.lower == 0.0


def _in(seconds: float) -> float:
    import time

    return time.perf_counter() + seconds


def test_nan_witness_values_never_prune_boxes() -> None:
    """A witness whose value is NaN proves nothing: ``keep = ub > nan`` would prune all."""

    def bound(boxes: Box) -> torch.Tensor:
        return boxes.hi.flatten(1)[:, 0].clone()

    def attack(boxes: Box, steps: int) -> Witness:
        return Witness(math.nan, boxes.lo[0], {})

    root = Box(torch.zeros((1, 1), dtype=DTYPE), torch.ones((1, 1), dtype=DTYPE))
    out = bab.maximise(bound, attack, root, 1e-3, deadline=_in(0.3))
    assert out.upper >= 1.0 and out.status != "optimal" and not math.isnan(out.lower)


def test_bound_spec_turns_nan_node_bounds_into_an_infinite_upper() -> None:
    """A NaN hidden bound may vanish in a relaxation's ``where``; the box's upper is +inf."""
    net = mlp([2, 3, 1], "relu", seed=1)
    box = Box(torch.zeros((2, 2), dtype=DTYPE), torch.ones((2, 2), dtype=DTYPE))
    nan_box = Box(box.lo.clone(), box.hi.clone())
    nan_box.hi[1, 0] = torch.nan
    upper, _ = bounds.bound_spec(net, nan_box, {}, torch.ones((1, 1), dtype=DTYPE))
    assert math.isfinite(float(upper[0, 0])) and float(upper[1, 0]) == math.inf


# ----------------------------------------------------------------------------- 2. flip level


def _replay_flips(path: Path, res_dict: dict, net) -> bool:  # type: ignore[no-untyped-def]
    """Does the witness change the sign of the raw score in onnxruntime? Perturbed tensors
    are matched to the file's initializers by their nominal values."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    nominal = {k: v.numpy() for k, v in net.param_tensors().items()}
    w = res_dict["witness"]
    x = np.asarray(w["x"], np.float32).reshape(1, -1)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    moved = dict(inits)
    for key, offset in w["param_offsets"].items():
        value = nominal[key] + np.asarray(offset)
        name = next(
            n for n, a in inits.items() if a.size == value.size and np.allclose(a.ravel(),
            nominal[key].ravel())
        )  # fmt: skip
        moved[name] = value.reshape(inits[name].shape).astype(np.float32)

    def run(values: dict[str, np.ndarray]) -> float:
        m = onnx.load(str(path))
        del m.graph.initializer[:]
        m.graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in values.items())
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return float(sess.run(None, {"x": x})[0].ravel()[0])

    return (run(inits) >= 0) != (run(moved) >= 0)


def test_exact_flip_uses_the_default_engines_level_on_a_raw_score(raw_net: Path) -> None:
    """Violation 6: the default engine finds a witness that flips the sign of the raw score
    (replayed in onnxruntime); ``--engine exact`` must not say verified, and both JSONs echo
    the same level, 0."""
    pytest.importorskip("pyscipopt")
    from quantcert.analyses.exact_queries import flip_exact

    net = load(raw_net)
    pert = perturbation.absolute(net, 0.08)
    box = input_box(net, np.zeros(2), np.ones(2))
    ours = flip(net, pert, box, Budget(timeout=10)).to_dict()  # what --json writes
    scip = flip_exact(net, pert, box, Budget(timeout=10), None).to_dict()
    assert ours["status"] == "falsified"
    assert _replay_flips(raw_net, ours, load(raw_net))
    assert scip["status"] != "verified"
    assert ours["spec"]["level"] == scip["spec"]["level"] == 0.0


def test_exact_flip_keeps_level_one_half_on_a_sigmoid_probability() -> None:
    """With a sigmoid head the exact engine encodes the probability: level 0.5 there is the
    default engine's logit 0. Both answer the same at points on either side of the
    boundary, and both echo level 0.5."""
    pytest.importorskip("pyscipopt")
    from quantcert.analyses.exact_queries import flip_exact

    net = load("cat")
    pert = perturbation.absolute(net, 0.005)
    for point in (np.array([6.3, 2.0]), np.array([14.0, 2.4]), np.array([20.0, 3.9])):
        box = input_box(net, point, point)
        ours = flip(net, pert, box, Budget(timeout=10))
        scip = flip_exact(net, pert, box, Budget(timeout=10), None)
        assert ours.overall.status == scip.overall.status
        assert ours.spec["level"] == scip.spec["level"] == 0.5


# ----------------------------------------------------------------------------- 3. exact gap


@pytest.mark.parametrize("gap", [1e-12, 1e-4])
def test_exact_optimal_only_within_the_requested_gap(gap: float) -> None:
    """SCIP stops at its own (relative) gap and the stated margin is added to its dual bound:
    with a tiny ``--gap`` that is wider than asked, so not optimal."""
    pytest.importorskip("pyscipopt")
    from quantcert.analyses.exact_queries import epsilon_exact
    from quantcert.analyses.paper_cli import sigma_exact
    from quantcert.cases.builtin import case_domain

    results = []
    for case in ("cat", "ath-relu"):
        net = load(case)
        lo, hi = case_domain(case)
        pert = perturbation.absolute(net, 0.005)
        budget = Budget(gap=gap, timeout=3)
        results.append(epsilon_exact(net, pert, input_box(net, lo, lo), budget).overall)
        results.append(epsilon_exact(net, pert, input_box(net, lo, hi), budget).overall)
        if case == "cat":
            s = sigma_exact(net, pert, input_box(net, lo, hi), budget)
            results += [s.above, s.below]
    for c in results:
        assert c.status != "optimal" or c.upper - c.lower <= gap, c
    if gap >= 1e-4:  # a reachable gap still ends optimal (the cat's existing answers)
        assert results[1].status == "optimal"


# ----------------------------------------------------------------------------- 4. memory


def test_a_tiny_memory_budget_ends_bounded_with_a_sound_upper() -> None:
    net = mlp([2, 8, 8, 1], "relu", seed=3)
    pert = perturbation.absolute(net, 0.02)
    box = input_box(net, np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    res = epsilon(net, pert, box, Budget(gap=1e-9, timeout=30, memory=1)).overall
    assert res.status == "bounded" and res.reason == "memory budget reached"
    assert math.isfinite(res.upper) and res.lower <= res.upper
    assert float(sampled_max(net, 0.02, box, 4000).max()) <= res.upper


def test_the_memory_budget_caps_the_pool_of_boxes() -> None:
    """A budget a little above what the process holds: the pool of 20-dimensional boxes fills
    its share within seconds (the timeout is far away) and the search stops bounded."""
    import time

    net = mlp([20, 16, 1], "relu", seed=4)
    pert = perturbation.absolute(net, 0.01)
    box = input_box(net, np.zeros(20), np.ones(20))
    start = time.perf_counter()
    limit = bab.rss_bytes() + 4 * 2**20
    res = epsilon(net, pert, box, Budget(gap=1e-12, timeout=60, memory=limit)).overall
    assert time.perf_counter() - start < 20
    assert res.status == "bounded" and res.reason == "memory budget reached"
    assert float(sampled_max(net, 0.01, box, 2000).max()) <= res.upper


def test_relu_splits_at_a_point_stop_at_the_memory_budget() -> None:
    net = mlp([4, 16, 16, 1], "relu", seed=5)
    pert = perturbation.absolute(net, 0.05)
    x = np.array([0.3, -0.2, 0.1, 0.5])
    box = input_box(net, x, x)
    res = epsilon(net, pert, box, Budget(gap=1e-12, timeout=30, memory=1)).overall
    assert res.status == "bounded" and res.upper >= res.lower


def test_memory_budget_option_parses_and_refuses_nonsense(tmp_path: Path) -> None:
    from quantcert.cli import parse_memory

    assert parse_memory("4G") == 4 * 2**30 and parse_memory("512M") == 512 * 2**20
    assert parse_memory("1000") == 1000 and parse_memory("1.5GiB") == 3 * 2**29
    assert parse_memory(None) is None
    with pytest.raises(InputError):
        parse_memory("lots")
    with pytest.raises(InputError):
        parse_memory("-1G")
    small = str(Path(__file__).parent / "data" / "models" / "test_small.onnx")
    res = run_cli(
        "epsilon", small, "--delta", "0.01", "--domain=-1:1", "--gap", "0", "--timeout", "20",
        "--memory-budget", "1", "--json", "-",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["status"] == "bounded" and data["reason"] == "memory budget reached"


def test_chunked_backward_passes_give_the_same_bounds() -> None:
    """``memory_cap`` splits tighten's and the spec's rows into chunks: same bounds."""
    from quantcert.engines.pair import difference_network, pair_radii

    net = conv_residual_net(2)
    pair = difference_network(net)
    radii = pair_radii(perturbation.absolute(net, 0.01), pair)
    lo = torch.zeros((3, 1, 4, 4), dtype=DTYPE)
    box = Box(lo, lo + 0.3)
    spec = torch.cat([torch.eye(2, dtype=DTYPE), -torch.eye(2, dtype=DTYPE)])
    whole, _ = bounds.bound_spec(pair, box, radii, spec)
    with bounds.memory_cap(8):  # one row (pair) per pass
        assert bounds.pass_bytes() == 1
        chunked, _ = bounds.bound_spec(pair, box, radii, spec)
    assert bounds.pass_bytes() == bounds.PASS_BYTES
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
