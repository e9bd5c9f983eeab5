"""Parameter-box splitting (issue 3): the same queries with and without it, and the exact
reference (SCIP) or the closed form, all in one run.

    .venv/bin/python bench/bench_param_split.py [--large]

Times are engine time (``time_s``) on this machine, one torch thread.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import quantcert.analyses.epsilon as epsilon_module  # noqa: E402
import quantcert.analyses.flip as flip_module  # noqa: E402
from conftest import exact_local_2layer, mlp  # noqa: E402
from quantcert.analyses.epsilon import Budget, epsilon, input_box  # noqa: E402
from quantcert.analyses.flip import flip  # noqa: E402
from quantcert.engines import perturbation  # noqa: E402
from quantcert.network import Network  # noqa: E402
from quantcert.ops import Box  # noqa: E402
from quantcert.report.results import Certificate  # noqa: E402


@contextmanager
def without_parameter_splits() -> Iterator[None]:
    saved = epsilon_module.splits_parameters, flip_module.splits_parameters
    epsilon_module.splits_parameters = flip_module.splits_parameters = lambda p: False
    try:
        yield
    finally:
        epsilon_module.splits_parameters, flip_module.splits_parameters = saved


def _cell(c: Certificate) -> str:
    return f"[{c.lower:.6g}, {c.upper:.6g}] {c.status}, {c.time_s:.2f} s"


def _scip(net: Network, delta: float, lo: np.ndarray, hi: np.ndarray) -> str:
    try:
        from quantcert.engines import exact
    except ImportError:
        return "SCIP not installed"
    radius = {k: np.full(v.shape, delta) for k, v in net.param_tensors().items()}
    where = {"point": lo} if np.array_equal(lo, hi) else {"box": (lo, hi)}
    t = time.perf_counter()
    res = exact.max_abs_change(net, radius, time_limit=120, absgap=1e-4, **where)
    return f"SCIP [{res.lower:.6g}, {res.upper:.6g}] {res.status}, {time.perf_counter() - t:.2f} s"


def _eps_row(
    name: str, net: Network, delta: float, lo: np.ndarray, hi: np.ndarray, reference: str
) -> str:
    pert = perturbation.absolute(net, delta)
    box = input_box(net, lo, hi)
    budget = Budget(gap=1e-4, timeout=60)
    with without_parameter_splits():
        before = epsilon(net, pert, box, budget).overall
    after = epsilon(net, pert, box, budget).overall
    return f"| {name} | {_cell(before)} | {_cell(after)} | {reference} |"


def eps_rows() -> list[str]:
    rows = []
    for seed in (1, 2, 5):
        net = mlp([2, 3, 1], "relu", seed=seed, head=True)
        x = np.random.default_rng(seed).uniform(-1, 1, 2)
        closed = f"closed form {exact_local_2layer(net, x, 0.3, True):.6g}"
        rows.append(_eps_row(f"2-3-1 ReLU local, seed {seed}, delta 0.3", net, 0.3, x, x, closed))
    x = np.array([-0.5, 0.3])
    net = mlp([2, 4, 4, 1], "relu", seed=1, head=True)
    rows.append(_eps_row("2-4-4-1 ReLU local, delta 0.1", net, 0.1, x, x, _scip(net, 0.1, x, x)))
    net = mlp([2, 4, 4, 1], "tanh", seed=1, head=True)
    rows.append(_eps_row("2-4-4-1 tanh local, delta 0.1", net, 0.1, x, x, "no exact solver (tanh)"))
    net = mlp([2, 3, 1], "relu", seed=3, head=True, scale=2.0)
    lo, hi = -np.ones(2), np.ones(2)
    rows.append(
        _eps_row("2-3-1 ReLU global [-1,1]^2, delta 0.1", net, 0.1, lo, hi, _scip(net, 0.1, lo, hi))
    )
    net = mlp([2, 4, 4, 1], "tanh", seed=1, head=True)
    rows.append(
        _eps_row("2-4-4-1 tanh global [-1,1]^2, delta 0.05", net, 0.05, lo, hi, "no exact solver")
    )
    return rows


def flip_rows() -> list[str]:
    rows = []
    net = mlp([2, 4, 4, 1], "tanh", seed=1, head=True)
    x = torch.tensor([[-0.5, 0.3]], dtype=torch.float64)
    for delta in (0.085, 0.09, 0.095):
        pert = perturbation.absolute(net, delta)
        with without_parameter_splits():
            before = flip(net, pert, Box(x, x), Budget(timeout=60)).overall
        after = flip(net, pert, Box(x, x), Budget(timeout=60)).overall
        name = f"2-4-4-1 tanh flip at (-0.5, 0.3), delta {delta}"
        rows.append(f"| {name} | {_cell(before)} | {_cell(after)} | |")
    return rows


def large_rows() -> list[str]:
    """mnist-net_256x2 local eps: split the most sensitive scalars (gradient at the witness
    times radius) of 269k for 30 s, against the engine's default answer."""
    from conftest import PACKAGED
    from quantcert import load
    from quantcert.engines.attack import difference_objective, search
    from quantcert.engines.bounds import Radii, bound_spec
    from quantcert.engines.pair import difference_network, pair_radii
    from quantcert.engines.param_split import JointSearch, choose_parameters

    net = load(PACKAGED / "mnistfc" / "mnist-net_256x2.onnx")
    img = np.load(ROOT / "src" / "quantcert" / "data" / "mnist_test.npz")["images"][0] / 255.0
    box = input_box(net, img.reshape(-1), img.reshape(-1))
    pert = perturbation.absolute(net, 1e-3)
    plain = epsilon(net, pert, box, Budget()).overall
    rows = [f"| mnist-net_256x2 local eps, delta 1e-3, default | {_cell(plain)} | | |"]
    pair = difference_network(net)
    signs = torch.cat([torch.eye(10, dtype=torch.float64), -torch.eye(10, dtype=torch.float64)])
    objective = difference_objective(net, signs)
    found = search(net, pert, box, objective, 20, restarts=1, steps=6)
    column = int(torch.tensor([w.value for w in found]).argmax())
    best = found[column]
    leaves = {k: v.unsqueeze(0).clone().requires_grad_(True) for k, v in best.params.items()}
    value = objective(best.x.unsqueeze(0), leaves)[0, column]
    grads = torch.autograd.grad(value, list(leaves.values()))
    sensitivity = {k: g[0] for k, g in zip(leaves, grads, strict=True)}

    def bound_pair(moved: Network, boxes: Box, radii: Radii) -> torch.Tensor:
        return bound_spec(moved, boxes, radii, signs)[0].max(1).values

    for limit in (16, 64):
        layout = choose_parameters(net, pert, sensitivity, limit=limit)
        space = JointSearch(layout, pair, pair_radii(pert, pair), bound_pair, objective, 20)
        t = time.perf_counter()
        out = space.maximise(box, best, 1e-4, t + 30)
        cell = f"[{out.lower:.12g}, {out.upper:.12g}] {out.status}, {time.perf_counter() - t:.1f} s"
        name = f"mnist-net_256x2 local eps, {limit} most sensitive scalars split"
        rows.append(f"| {name} | [.., {plain.upper:.12g}] | {cell} | |")
    return rows


def main() -> None:
    torch.set_num_threads(1)
    header = (
        "| query (gap 1e-4) | input and ReLU splits only | + parameter splits | reference |\n"
        "|---|---|---|---|"
    )
    print(header)
    large = "--large" in sys.argv  # adds about 70 s
    for row in eps_rows() + flip_rows() + (large_rows() if large else []):
        print(row, flush=True)


if __name__ == "__main__":
    main()
