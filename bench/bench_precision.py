"""Precision questions (issue 10): ``accuracy`` and ``bitwidth`` on the bundled networks,
with the empirical per-layer peer (one layer quantized at a time, accuracy measured) in the
same run.

    .venv/bin/python bench/bench_precision.py [--quick]

- accuracy, mnist-net_256x2, int8 per-channel weights + uint8 activations, all 10,000 MNIST
  test images: time, certified / measured / worst-case / float accuracy;
- accuracy, resnet_2b, int8 per-channel conv weights, the CIFAR images its VNN-LIB files hold;
- bitwidth --target accuracy-drop<=1%, per layer and mixed, mnist-net_256x6 and the ERAN
  9x200 net on 1,000 test images: time, certified bits against the empirical bits per layer
  (the distance is our tightness).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "quantcert" / "data"
MODELS = DATA / "models"

from quantcert.analyses.kappa_data import load_images  # noqa: E402
from quantcert.analyses.precision import Scheme, accuracy  # noqa: E402
from quantcert.analyses.precision.bitwidth import bitwidth, family  # noqa: E402
from quantcert.analyses.precision.targets import parse_target  # noqa: E402
from quantcert.intake import load  # noqa: E402


def _mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(DATA / "mnist_test.npz")
    return d["images"][:n].astype(np.float64) / 255.0, d["labels"][:n].astype(np.int64)


def bench_accuracy(name: str, n: int) -> None:
    net = load(MODELS / name, self_check=False)
    x, y = _mnist(n)
    t = time.perf_counter()
    r = accuracy(net, x, y, Scheme.parse(weights="int8:per-channel", activations="uint8:asym"))
    s = r.summary()
    print(
        f"| accuracy {name} | {n} | {time.perf_counter() - t:.1f} s | "
        f"{s['float_accuracy']:.2%} | {s['measured_accuracy']:.2%} | "
        f"{s['certified_accuracy']:.2%} | {s['worst_case_accuracy']:.2%} | "
        f"{s['counts']} |",
        flush=True,
    )


def bench_resnet() -> None:
    net = load(MODELS / "cifar10_resnet" / "resnet_2b.onnx", self_check=False)
    d = load_images(MODELS / "cifar10_resnet" / "resnet2b", net.input_shape)
    x = d.images.numpy()
    y = d.labels if d.labels is not None else np.zeros(len(x), np.int64)
    t = time.perf_counter()
    s = accuracy(net, x, y, Scheme.parse(weights="int8:per-channel")).summary()
    print(
        f"| accuracy resnet_2b (int8 weights) | {len(x)} | {time.perf_counter() - t:.1f} s | "
        f"{s['float_accuracy']:.2%} | {s['measured_accuracy']:.2%} | "
        f"{s['certified_accuracy']:.2%} | {s['worst_case_accuracy']:.2%} | {s['counts']} |",
        flush=True,
    )


def bench_bitwidth(name: str, n: int) -> None:
    net = load(MODELS / name, self_check=False)
    x, y = _mnist(n)
    t = time.perf_counter()
    r = bitwidth(net, x, y, parse_target("accuracy-drop<=1%"), family("int", "per-channel"))
    elapsed = time.perf_counter() - t
    layers = r["layers"]
    assert isinstance(layers, list)
    cert = [layer["weights"].get("bits") for layer in layers]
    emp = [layer["weights_empirical_bits"] for layer in layers]
    dist = [c - e for c, e in zip(cert, emp, strict=True) if c is not None and e is not None]
    mixed = r.get("mixed", {})
    assert isinstance(mixed, dict)
    print(
        f"| bitwidth {name} | {n} | {elapsed:.0f} s | uniform {r['uniform'].get('bits')} | "  # type: ignore[union-attr]
        f"certified {cert} | empirical {emp} | mean distance "
        f"{np.mean(dist) if dist else float('nan'):.2f} bits | mixed "
        f"{mixed.get('assignment', mixed.get('status'))} |",
        flush=True,
    )


def main() -> None:
    quick = "--quick" in sys.argv
    print("| run | images | time | float | measured | certified | worst case | counts |")
    print("|---|---|---|---|---|---|---|---|")
    bench_accuracy("mnistfc/mnist-net_256x2.onnx", 1000 if quick else 10000)
    bench_resnet()
    for name in ("mnistfc/mnist-net_256x6.onnx", "eran/mnist_relu_9_200.onnx"):
        bench_bitwidth(name, 100 if quick else 1000)


if __name__ == "__main__":
    main()
