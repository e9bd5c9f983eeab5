"""Witness search on smooth deep networks (issue 13).

    .venv/bin/python bench/bench_witness.py [--old PATH/src]

Per query: lower (witness) of this checkout's search and, with ``--old``, of another
checkout's (its ``src`` run in a subprocess, e.g. a worktree of a11daff, before the
smooth-net search), a strong outside attack (``outside_attack`` of
tests/test_witness_search.py, 32 restarts x 200 steps; local queries only), upper,
upper/lower and engine time. Nets: 2 inputs, torch default init, seed 0 (``smooth_mlp``):
tanh 7 x 60 with 10 outputs at delta 0.1, tanh 6 x 20 at delta 0.1, sigmoid 7 x 60 with 10
outputs at --relative 0.2; ERAN's ffnnSIGMOID 6x200 at --relative 0.2 when a copy is found
under ../shared. Timing of other queries, old vs new: cat global eps as in
bench/bench_engine.py (a sigmoid head, so it does run the smooth search, on 3 parameters) and
a 2-16-16-1 ReLU net global over [-1,1]^2 (fastest of 3 each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# Only the API both checkouts share (no conftest: the worker also runs on an older src).
from quantcert.analyses.epsilon import Budget, epsilon, input_box  # noqa: E402
from quantcert.engines import perturbation  # noqa: E402
from quantcert.intake import load  # noqa: E402
from quantcert.intake.torch_module import from_torch  # noqa: E402
from quantcert.network import Network  # noqa: E402
from quantcert.ops import DTYPE, Box  # noqa: E402

SHARED = ROOT.parent / "shared"
Case = tuple[str, Network, Box, perturbation.Perturbation]


def smooth_mlp(width: int, depth: int, outputs: int, act: str, seed: int = 0) -> Network:
    """As ``smooth_mlp`` in tests/test_witness_search.py (the same nets), also with "relu"."""
    torch.manual_seed(seed)
    acts = {"tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU}
    layers: list[torch.nn.Module] = []
    prev = 2
    for _ in range(depth):
        layers += [torch.nn.Linear(prev, width), acts[act]()]
        prev = width
    layers.append(torch.nn.Linear(prev, outputs))
    return from_torch(torch.nn.Sequential(*layers).double(), (2,))


def smooth_cases() -> list[Case]:
    x = torch.tensor([[-0.5, 0.3]], dtype=DTYPE)
    x20 = torch.tensor([[0.3, -0.5]], dtype=DTYPE)
    one = torch.ones((1, 2), dtype=DTYPE)
    t60 = smooth_mlp(60, 7, 10, "tanh")
    t20 = smooth_mlp(20, 6, 1, "tanh")
    s60 = smooth_mlp(60, 7, 10, "sigmoid")
    cases: list[Case] = [
        (
            "tanh 7x60, 10 outputs, local, delta 0.1",
            t60,
            Box(x, x),
            perturbation.absolute(t60, 0.1),
        ),
        ("tanh 6x20 local, delta 0.1", t20, Box(x20, x20), perturbation.absolute(t20, 0.1)),
        (
            "tanh 6x20 global [-1,1]^2, delta 0.1",
            t20,
            Box(-one, one),
            perturbation.absolute(t20, 0.1),
        ),
        (
            "sigmoid 7x60, 10 outputs, local, relative 0.2",
            s60,
            Box(x, x),
            perturbation.relative(s60, 0.2),
        ),
    ]
    found = sorted(SHARED.glob("**/*ffnnSIGMOID*6x200*.onnx")) if SHARED.exists() else []
    if found:
        sig = load(found[0])
        x0 = torch.full((1, *sig.input_shape), 0.5, dtype=DTYPE)
        cases.append(
            (
                "ffnnSIGMOID 6x200 local, relative 0.2",
                sig,
                Box(x0, x0),
                perturbation.relative(sig, 0.2),
            )
        )
    return cases


def relu_cases() -> list[Case]:
    cat = load("cat")
    relu = smooth_mlp(16, 2, 1, "relu")
    return [
        (
            "cat global eps, delta 0.005, gap 1e-5",
            cat,
            input_box(cat, np.array([6.3, 2.0]), np.array([20.5, 3.9])),
            perturbation.absolute(cat, 0.005),
        ),
        (
            "relu 2x16 global eps [-1,1]^2, delta 0.01, gap 1e-4",
            relu,
            input_box(relu, -np.ones(2), np.ones(2)),
            perturbation.absolute(relu, 0.01),
        ),
    ]


def worker() -> dict[str, dict[str, float]]:
    """Every query's lower, upper and time with the quantcert on sys.path."""
    out = {}
    for name, net, box, pert in smooth_cases():
        r = epsilon(net, pert, box, Budget(timeout=10.0)).overall
        out[name] = {"lower": r.lower, "upper": r.upper, "time": r.time_s}
    for name, net, box, pert in relu_cases():
        gap = 1e-5 if name.startswith("cat") else 1e-4
        runs = [epsilon(net, pert, box, Budget(gap=gap)).overall for _ in range(3)]
        r = min(runs, key=lambda c: c.time_s)
        out[name] = {"lower": r.lower, "upper": r.upper, "time": r.time_s}
    return out


def _run(src: Path) -> dict[str, dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=str(src))
    done = subprocess.run(
        [sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, dict[str, float]] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, help="another checkout's src, e.g. a11daff's")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.worker:
        print(json.dumps(worker()))
        return
    from quantcert.engines.bounds import engine_threads
    from test_witness_search import outside_attack

    new = _run(ROOT / "src")
    old = _run(args.old) if args.old else {}
    print(
        "| query | lower (old) | lower (new) | outside attack | upper | upper/lower (new) "
        "| time s (old) | time s (new) |\n|---|---|---|---|---|---|---|---|"
    )
    for name, net, box, pert in smooth_cases() + relu_cases():
        n, o = new[name], old.get(name)
        outside = "-"
        if name in {c[0] for c in smooth_cases()} and bool(torch.equal(box.lo, box.hi)):
            with engine_threads(net):
                outside = f"{outside_attack(net, box.lo, pert, restarts=32, steps=200):.6g}"
        ratio = n["upper"] / n["lower"] if n["lower"] > 0 else float("inf")
        old_lower = f"{o['lower']:.6g}" if o else "-"
        old_time = f"{o['time']:.3f}" if o else "-"
        print(
            f"| {name} | {old_lower} | {n['lower']:.6g} | {outside} | {n['upper']:.6g} "
            f"| {ratio:.3f} | {old_time} | {n['time']:.3f} |"
        )


if __name__ == "__main__":
    main()
