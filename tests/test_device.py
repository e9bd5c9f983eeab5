"""Device placement: the engine's code is the same on a CPU and a GPU; only its inputs move.
The CUDA comparisons run where a GPU is present (skipped on CPU-only machines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import mlp
from quantcert.analyses.epsilon import Budget, _epsilon, epsilon, input_box, local_epsilons
from quantcert.analyses.flip import flip
from quantcert.engines import perturbation
from quantcert.engines.device import GPU_MIN_PARAMS, pick_device
from quantcert.errors import InputError
from quantcert.ops import DTYPE, Box

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_pick_device() -> None:
    assert pick_device("cpu", 10).type == "cpu"
    assert pick_device("auto", 10).type == "cpu"  # small nets stay on the CPU
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto", GPU_MIN_PARAMS).type == expected
    with pytest.raises(InputError):
        pick_device("tpu", 10)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            pick_device("cuda", 10)


def test_moved_inputs_under_a_device_context_give_the_same_answer() -> None:
    """The GPU code path (inputs moved, factory functions under ``torch.device``), run with
    the CPU as the target device, answers exactly as the plain path."""
    # A query that closes in well under its budget on a loaded machine: the device context
    # costs several times the plain path's time (every factory call is intercepted), and a
    # timeout would stop the two paths at different points.
    net = mlp([2, 3, 1], "relu", seed=0)
    pert = perturbation.absolute(net, 0.1)
    box = input_box(net, -np.ones(2), np.ones(2))
    budget = Budget(gap=1e-4, timeout=120)
    plain = epsilon(net, pert, box, budget).overall
    cpu = torch.device("cpu")
    with torch.device(cpu):
        moved = _epsilon(net.to_device(cpu), pert.to(cpu), box.to(cpu), budget).overall
    assert (moved.lower, moved.upper, moved.status) == (plain.lower, plain.upper, plain.status)
    assert plain.status == "optimal"


@CUDA
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_cuda_matches_cpu_on_eps_and_flip(act: str) -> None:
    net = mlp([3, 8, 8, 2], act, seed=2)
    pert = perturbation.absolute(net, 0.02)
    point = input_box(net, np.full(3, 0.2), np.full(3, 0.2))
    region = input_box(net, -np.ones(3), np.ones(3))
    for box in (point, region):
        on_cpu = epsilon(net, pert, box, Budget(timeout=60, device="cpu")).overall
        on_gpu = epsilon(net, pert, box, Budget(timeout=60, device="cuda")).overall
        assert abs(on_cpu.upper - on_gpu.upper) <= 1e-4 + 1e-9
        assert on_gpu.lower <= on_cpu.upper + 1e-9 and on_cpu.lower <= on_gpu.upper + 1e-9
        f_cpu = flip(net, pert, box, Budget(timeout=60, device="cpu")).overall
        f_gpu = flip(net, pert, box, Budget(timeout=60, device="cuda")).overall
        assert "unknown" in (f_cpu.status, f_gpu.status) or f_cpu.status == f_gpu.status


@CUDA
def test_cuda_local_epsilons_match_cpu() -> None:
    net = mlp([2, 3, 1], "relu", seed=3, head=True, scale=2.0)
    pert = perturbation.absolute(net, 0.01)
    pts = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    on_cpu = local_epsilons(net, pert, pts, device="cpu")
    on_gpu = local_epsilons(net, pert, pts, device="cuda")
    np.testing.assert_allclose(on_gpu.upper, on_cpu.upper, rtol=1e-9, atol=1e-12)
    x = torch.as_tensor(pts, dtype=DTYPE)
    assert bool((torch.as_tensor(on_gpu.lower) <= torch.as_tensor(on_gpu.upper)).all())
    assert Box(x, x).lo.device.type == "cpu"
