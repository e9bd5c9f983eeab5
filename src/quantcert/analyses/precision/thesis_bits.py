"""The precision column of ``reproduce thesis``: next to seed 003's kappa bits (Table 5.1,
Eq. 5.1), the certified bits ``quantcert bitwidth`` finds on the same network and images
for the same question (no image changes its label): the input alone, and per layer its
weights (int, per channel) and its input activations (uint, asymmetric).

Kappa bits are a measured estimate of the input precision (DeepFool's smallest flip,
amplified); the certified bits are proved for every rounding the formats allow (weights) or
computed exactly for the real quantizer (the input and activations at a data point). Where
the two disagree, the certified number holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quantcert.analyses.kappa_data import load_images
from quantcert.analyses.precision.bitwidth import bitwidth, family
from quantcert.analyses.precision.targets import Target
from quantcert.intake import load

#: Images per network for the certified bits (the first of the set the kappa run used).
PRECISION_IMAGES = 100


def precision_bits(model: Path, data: Path, images: int = PRECISION_IMAGES) -> dict[str, Any]:
    """The noflip bit-width study of one network on its first ``images`` images."""
    net = load(model)
    d = load_images(data, net.input_shape, images)
    points = d.images.numpy()
    labels = d.labels if d.labels is not None else np.zeros(len(points), np.int64)
    fam = family("int", "per-channel")
    r: dict[str, Any] = bitwidth(net, points, labels, Target("noflip"), fam, mixed=False)
    return {
        "images": r["images"],
        "input_bits": r["input"].get("bits"),
        "uniform_bits": r["uniform"].get("bits"),
        "layers": [
            {
                "name": layer["name"],
                "weights": layer["weights"].get("bits"),
                "activations": layer["activations"].get("bits"),
                "weights_empirical": layer["weights_empirical_bits"],
            }
            for layer in r["layers"]
        ],
    }


def _b(v: Any) -> str:
    return "-" if v is None else str(v)


def precision_table(kappa_bits: dict[str, dict[str, int]], bits: dict[str, Any]) -> str:
    """Markdown: kappa bits (max and median over the images, Eq. 5.1) beside the certified
    input bits and the per-layer weight / activation bits."""
    rows = [
        "| network | kappa bits (max / median) | certified input bits | uniform bits | "
        "weight bits per layer | activation bits per layer | empirical weight bits |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in bits.items():
        k = kappa_bits.get(name, {})
        layers = p["layers"]
        rows.append(
            f"| {name} | {_b(k.get('max'))} / {_b(k.get('median'))} | {_b(p['input_bits'])} | "
            f"{_b(p['uniform_bits'])} | "
            + " ".join(_b(x["weights"]) for x in layers)
            + " | "
            + " ".join(_b(x["activations"]) for x in layers)
            + " | "
            + " ".join(_b(x["weights_empirical"]) for x in layers)
            + " |"
        )
    return "\n".join(rows)
