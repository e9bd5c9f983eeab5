"""Shared fixtures: small networks built by hand, and the paths of shipped test models."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch
from hypothesis import settings

from quantcert.network import INPUT, Network, Node
from quantcert.ops import DTYPE, Affine, Identity, LeakyReLU, ReLU, Sigmoid, Tanh

# CI runs a fixed, reproducible set of examples; local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

DATA = Path(__file__).parent / "data"
MODELS = DATA / "models"
#: The networks the package ships (seed 003's networks), also used as test models.
PACKAGED = Path(__file__).resolve().parents[1] / "src" / "quantcert" / "data" / "models"
SHARED = Path(__file__).resolve().parents[2] / "shared"

ACTIVATIONS = {
    "relu": ReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "identity": Identity,
    "leaky": lambda: LeakyReLU(0.1),
}

CAT = (-3.51518067, 0.07577862, 1.18118408)


def mlp(
    sizes: list[int], act: str, seed: int = 0, head: bool = False, scale: float = 1.0
) -> Network:
    """A random fully connected network; ``head`` adds a sigmoid output."""
    gen = torch.Generator().manual_seed(seed)
    nodes, prev = [], INPUT
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = torch.randn(b, a, generator=gen, dtype=DTYPE) * scale / a**0.5
        nodes.append(
            Node(f"fc{i}", Affine(w, torch.randn(b, generator=gen, dtype=DTYPE) * 0.5), (prev,))
        )
        prev = f"fc{i}"
        if i < len(sizes) - 2:
            nodes.append(Node(f"act{i}", ACTIVATIONS[act](), (prev,)))
            prev = f"act{i}"
    if head:
        nodes.append(Node("out", Sigmoid(), (prev,)))
    return Network(nodes, (sizes[0],), head="out" if head else None)


def cat_network() -> Network:
    c0, c1, c2 = CAT
    w = torch.tensor([[c1, c2]], dtype=DTYPE)
    b = torch.tensor([c0], dtype=DTYPE)
    return Network(
        [Node("fc", Affine(w, b), (INPUT,)), Node("out", Sigmoid(), ("fc",))], (2,), head="out"
    )
