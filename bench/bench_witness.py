"""Witness search on smooth deep networks (issue 13): .venv/bin/python bench/bench_witness.py

Reports lower (witness), upper and time of epsilon on a deep tanh MLP (2 inputs, 6 x 20 tanh,
torch default init, seed 0) at delta 0.1, local at (0.3, -0.5) and global over [-1, 1]^2, and
on ERAN's ffnnSIGMOID 6x200 at --relative 0.2 when a copy is found under ../shared (skipped
otherwise). Run it before and after a change to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import SHARED  # noqa: E402
from quantcert import load  # noqa: E402
from quantcert.analyses.epsilon import Budget, epsilon  # noqa: E402
from quantcert.engines import perturbation  # noqa: E402
from quantcert.network import Network  # noqa: E402
from quantcert.ops import DTYPE, Box  # noqa: E402
from test_witness_search import tanh_mlp  # noqa: E402


def _row(name: str, net: Network, box: Box, pert: perturbation.Perturbation) -> str:
    r = epsilon(net, pert, box, Budget(timeout=10.0)).overall
    ratio = r.upper / r.lower if r.lower > 0 else float("inf")
    return f"| {name} | {r.lower:.6g} | {r.upper:.6g} | {ratio:.3f} | {r.time_s:.2f} | {r.status} |"


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    net = tanh_mlp()
    x = torch.tensor([[0.3, -0.5]], dtype=DTYPE)
    one = torch.ones((1, 2), dtype=DTYPE)
    pert = perturbation.absolute(net, 0.1)
    rows.append(_row("tanh 6x20 local, delta 0.1", net, Box(x, x), pert))
    rows.append(_row("tanh 6x20 global [-1,1]^2, delta 0.1", net, Box(-one, one), pert))
    found = sorted(SHARED.glob("**/*ffnnSIGMOID*6x200*.onnx")) if SHARED.exists() else []
    if found:
        sig = load(found[0])
        x0 = torch.full((1, *sig.input_shape), 0.5, dtype=DTYPE)
        rows.append(
            _row(
                "ffnnSIGMOID 6x200 local, relative 0.2",
                sig,
                Box(x0, x0),
                perturbation.relative(sig, 0.2),
            )
        )
    else:
        rows.append("| ffnnSIGMOID 6x200 | not found under ../shared: skipped | | | | |")
    print("| query | lower | upper | upper/lower | time s | status |\n|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
