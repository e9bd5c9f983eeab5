"""Formats as certified perturbations (issue 9): ``epsilon --weights int8:per-channel`` at
one image, beside the difference that actual int8 quantization of the weights makes there.

    .venv/bin/python bench/bench_formats.py

The actual quantization is ours (``IntFormat.quantize``, bit-exact with onnxruntime's
QuantizeLinear/DequantizeLinear, tests/test_formats_integer.py), applied to every weight
tensor of the file; the measured difference is the quantized network against the float one
at the same image, evaluated in float64.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / "src" / "quantcert" / "data"

from quantcert.analyses.epsilon import Budget, epsilon, input_box  # noqa: E402
from quantcert.formats import parse_layer_map  # noqa: E402
from quantcert.formats.apply import format_perturbation  # noqa: E402
from quantcert.intake import load  # noqa: E402
from quantcert.intake.domain import parse_point  # noqa: E402
from quantcert.network import Network  # noqa: E402
from quantcert.ops import DTYPE  # noqa: E402


def _measured(net: Network, weights: str, x: np.ndarray) -> float:
    """Every weight tensor actually quantized (within its radius box: the centre moved by
    ``quantize - t``), the output change at ``x``."""
    pert = format_perturbation(net, parse_layer_map(weights))
    fmt = parse_layer_map(weights)["*"]
    params = net.param_tensors()
    moved = {}
    for name in pert.radius:
        t = params[name].detach().numpy()
        src = net.sources.get(name)
        laid = t / (src.factor if src else 1.0)
        q = fmt.quantize(laid) * (src.factor if src else 1.0)
        assert bool((np.abs(q - t) <= pert.radius[name].numpy() * (1 + 1e-12)).all())
        moved[name] = torch.as_tensor(q, dtype=DTYPE)
    xt = torch.as_tensor(x, dtype=DTYPE).reshape(1, *net.input_shape)
    with torch.no_grad():
        return float((net(xt, moved) - net(xt)).abs().max())


def main() -> None:
    images = np.load(PACKAGED / "mnist_test.npz")["images"]
    cases = [
        (
            "mnist-net_256x6",
            PACKAGED / "models/mnistfc/mnist-net_256x6.onnx",
            images[0].reshape(-1) / 255.0,
        ),
        (
            "resnet_2b",
            PACKAGED / "models/cifar10_resnet/resnet_2b.onnx",
            parse_point(PACKAGED / "models/cifar10_resnet/resnet2b/prop_0_eps_0.008.vnnlib"),
        ),
    ]
    print(
        "| network | weights | upper | witness (lower) | upper / witness | measured int8 | time s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, path, x in cases:
        net = load(path)
        for weights in ("int8:per-channel", "int8"):
            pert = format_perturbation(net, parse_layer_map(weights))
            start = time.perf_counter()
            res = epsilon(net, pert, input_box(net, x, x), Budget(gap=float("inf"), timeout=30))
            elapsed = time.perf_counter() - start
            c = res.overall
            meas = _measured(net, weights, x)
            ratio = c.upper / c.lower if c.lower > 0 else float("inf")
            cells = [name, weights, f"{c.upper:.4g}", f"{c.lower:.4g}", f"{ratio:.2f}"]
            print("| " + " | ".join([*cells, f"{meas:.4g}", f"{elapsed:.2f}"]) + " |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
