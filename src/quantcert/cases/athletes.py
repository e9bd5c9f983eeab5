"""Train the seed's athletes MLPs again (their weights appear only in a figure of seed 000).

Data: ``cases/data/athletes.csv`` (Rio 2016, 11,538 athletes); the 680 rows lacking height
or weight are dropped, leaving 10,858. Inputs: height (m) and weight (kg), raw, in that
order; label 1 = male. Network: 2-3-1, hidden 3 units ReLU (``ath-relu``) or linear
(``ath-linear``), output 1 unit sigmoid.

Recipe. The seed says only "Keras, 200 epochs". Assumed here: binary cross-entropy, Adam,
Keras' default initialisation (Glorot uniform weights, zero biases), 200 epochs of shuffled
mini-batches. To train in seconds, the batch is 256 (not Keras' default 32) with Adam's
learning rate 1e-2 (not 1e-3). The inputs are standardised during training (raw weights in
kg are ~40-150 and stall plain Adam) and the standardisation is then folded into the first
layer, so the shipped network takes raw height and weight and the perturbation analysis
acts on the shipped parameters. Training is float64, single-threaded, seeded: deterministic.

Training accuracy of the shipped networks (seed 0), on the 10,858 rows:
ath-relu 77.52% (seed 000: 77.19%), ath-linear 77.32% (seed 000: 77.36%).

Re-run with ``python -m quantcert.cases.athletes`` (rewrites ``cases/data/ath_*.npz``);
``quantcert train-case athletes --out DIR`` writes to ``DIR`` instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from quantcert.cases.builtin import CASES, mlp_network, read_csv
from quantcert.errors import InputError
from quantcert.ops import DTYPE

EPOCHS, BATCH, LR = 200, 256, 1e-2
RECIPE = (
    f"torch re-training of the seed's Keras model: binary cross-entropy, Adam lr={LR}, "
    f"batch {BATCH}, {EPOCHS} epochs, Glorot-uniform weights and zero biases, float64; "
    "inputs standardised during training, standardisation folded into layer 1"
)
HIDDEN = 3
DATA_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True)
class TrainedCase:
    """A trained 2-3-1 MLP taking raw (height m, weight kg): W1 (3, 2), b1 (3,), W2 (1, 3),
    b2 (1,). ``accuracy`` is the training accuracy of exactly these float64 parameters."""

    name: str
    activation: str
    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray
    accuracy: float
    rows: int
    dropped: int
    seed: int
    recipe: str

    def save(self, path: Path) -> None:
        """Write the parameters and the metadata to an ``.npz`` file."""
        np.savez(
            path,
            W1=self.W1,
            b1=self.b1,
            W2=self.W2,
            b2=self.b2,
            activation=np.array(self.activation),
            accuracy=np.array(self.accuracy),
            rows=np.array(self.rows),
            dropped=np.array(self.dropped),
            seed=np.array(self.seed),
            recipe=np.array(self.recipe),
        )


def _glorot(out_f: int, in_f: int, gen: torch.Generator) -> Tensor:
    limit = (6.0 / (in_f + out_f)) ** 0.5
    uniform = torch.rand(out_f, in_f, generator=gen, dtype=DTYPE)
    return uniform.mul(2.0).sub(1.0).mul(limit)


def _init(gen: torch.Generator, n_in: int) -> list[Tensor]:
    """[W1 (3, n_in), b1 (3,), W2 (1, 3), b2 (1,)], trainable."""
    params = [
        _glorot(HIDDEN, n_in, gen),
        torch.zeros(HIDDEN, dtype=DTYPE),
        _glorot(1, HIDDEN, gen),
        torch.zeros(1, dtype=DTYPE),
    ]
    return [p.requires_grad_() for p in params]


def _logit(x: Tensor, params: list[Tensor], relu: bool) -> Tensor:
    """Pre-sigmoid output (B,) of the MLP for inputs x (B, 2)."""
    w1, b1, w2, b2 = params
    h = x @ w1.T + b1
    return ((torch.relu(h) if relu else h) @ w2.T + b2)[:, 0]


def _fit(x: Tensor, y: Tensor, relu: bool, gen: torch.Generator) -> list[Tensor]:
    """Adam on binary cross-entropy over shuffled mini-batches; x (N, 2) standardised."""
    params = _init(gen, x.shape[1])
    opt = torch.optim.Adam(params, lr=LR)
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=gen)
        for idx in torch.split(perm, BATCH):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                _logit(x[idx], params, relu), y[idx]
            )
            opt.zero_grad()
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()
    return [p.detach() for p in params]


def _fold(params: list[Tensor], mean: Tensor, std: Tensor) -> list[np.ndarray]:
    """Fold ``(x - mean) / std`` into layer 1: W1' = W1 / std, b1' = b1 - W1' mean."""
    w1, b1, w2, b2 = params
    w1_raw = w1 / std
    return [a.numpy().copy() for a in (w1_raw, b1 - w1_raw @ mean, w2, b2)]


def train_athletes(activation: str, seed: int = 0) -> TrainedCase:
    """Train the 2-3-1 MLP with hidden ``activation`` ``relu`` or ``linear`` (fixed seed)."""
    if activation not in ("relu", "linear"):
        raise InputError(f"unknown hidden activation {activation!r}: use relu or linear")
    name = f"ath-{activation}"
    x_np, y_np, dropped = read_csv(CASES[name])
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np).to(DTYPE)
    mean, std = x.mean(0), x.std(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is fastest and reproducible
    try:
        gen = torch.Generator().manual_seed(seed)
        params = _fit((x - mean) / std, y, activation == "relu", gen)
    finally:
        torch.set_num_threads(threads)
    w1, b1, w2, b2 = _fold(params, mean, std)
    net = mlp_network(w1, b1, w2, b2, activation, name)
    with torch.no_grad():
        predicted = (net(x)[:, 0] >= CASES[name].decision_level).numpy()
    accuracy = float((predicted == (y_np == 1)).mean())
    return TrainedCase(name, activation, w1, b1, w2, b2, accuracy, len(x_np), dropped, seed, RECIPE)


def train_and_save(out_dir: Path = DATA_DIR, seed: int = 0) -> list[TrainedCase]:
    """Train both athletes networks and write ``ath_relu.npz`` and ``ath_linear.npz``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for activation in ("relu", "linear"):
        case = train_athletes(activation, seed)
        case.save(out_dir / f"ath_{activation}.npz")
        cases.append(case)
    return cases


def main(out_dir: Path = DATA_DIR) -> None:
    """Re-train the athletes networks into ``out_dir`` (default: the shipped weights, for
    ``python -m``; the CLI's ``train-case`` writes to its ``--out`` folder) and print their
    training accuracies."""
    start = time.perf_counter()
    for case in train_and_save(out_dir):
        print(
            f"{case.name}: training accuracy {case.accuracy:.2%} on {case.rows} rows "
            f"({case.dropped} dropped for a missing value), seed {case.seed}"
        )
    print(f"recipe: {RECIPE}; {time.perf_counter() - start:.1f} s; weights in {out_dir}")


if __name__ == "__main__":
    main()
