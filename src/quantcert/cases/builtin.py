"""The seed's case studies as ready-made networks: ``cat``, ``ath-relu`` and ``ath-linear``.

- ``cat``: the seed's logistic regression on the MASS cats data,
  ``y = sigmoid(c0 + c1*H + c2*W)``, H heart weight (g), W body weight (kg); input (B, 2)
  in the order (H, W), output (B, 1) = P(Male).
- ``ath-relu`` / ``ath-linear``: 2-3-1 MLPs on the Rio 2016 athletes data, input (B, 2) =
  (height m, weight kg), hidden 3 units ReLU / linear, output (B, 1) = sigmoid = P(Male).
  Their weights ship in ``cases/data/ath_*.npz`` (see ``quantcert.cases.athletes``).

"Male" when the output is >= the decision level 0.5. Each case's domain is the bounding box
of its data set (rows with a missing value dropped).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import numpy as np
import torch

from quantcert.errors import InputError
from quantcert.network import INPUT, Network, Node
from quantcert.ops import DTYPE, Affine, Identity, Op, ReLU, Sigmoid

CAT_COEFFS = (-3.51518067, 0.07577862, 1.18118408)  # c0, c1 (per g of heart), c2 (per kg)


@dataclass(frozen=True)
class CaseInfo:
    """Metadata of one built-in case. ``columns`` are CSV columns in model input order."""

    name: str
    description: str
    input_names: tuple[str, ...]
    units: tuple[str, ...]
    csv: str
    columns: tuple[str, ...]
    label_column: str
    positive_value: str  # the CSV label value of the positive class
    positive_label: str = "Male"
    negative_label: str = "Female"
    decision_level: float = 0.5
    weights: str | None = None  # npz file with W1, b1, W2, b2 (MLP cases)


def _athletes(name: str, hidden: str, weights: str) -> CaseInfo:
    return CaseInfo(
        name=name,
        description=f"2-3-1 MLP ({hidden} hidden), athlete sex from height and weight",
        input_names=("height", "weight"),
        units=("m", "kg"),
        csv="athletes.csv",
        columns=("height_m", "weight_kg"),
        label_column="sex",
        positive_value="male",
        weights=weights,
    )


CASES: dict[str, CaseInfo] = {
    "cat": CaseInfo(
        name="cat",
        description="logistic regression, cat sex from heart and body weight (seed 000)",
        input_names=("heart_weight", "body_weight"),
        units=("g", "kg"),
        csv="cats.csv",
        columns=("heart_weight_g", "body_weight_kg"),
        label_column="sex",
        positive_value="M",
    ),
    "ath-relu": _athletes("ath-relu", "ReLU", "ath_relu.npz"),
    "ath-linear": _athletes("ath-linear", "linear", "ath_linear.npz"),
}


def case_info(name: str) -> CaseInfo:
    """The metadata of a built-in case; unknown names raise ``InputError``."""
    if name not in CASES:
        raise InputError(f"unknown case {name!r}: use one of {', '.join(CASES)}")
    return CASES[name]


def data_file(filename: str) -> Traversable:
    """A file shipped in ``quantcert/cases/data`` (importlib.resources)."""
    return resources.files("quantcert.cases").joinpath("data", filename)


def case_csv(name: str) -> Traversable:
    """The data CSV of a built-in case, inside the installed package."""
    return data_file(case_info(name).csv)


def read_csv(info: CaseInfo) -> tuple[np.ndarray, np.ndarray, int]:
    """The case's data: inputs X (N, 2) float64 in model input order, labels y (N,) in
    {0, 1} (1 = positive class), and the number of rows dropped for a missing value."""
    text = data_file(info.csv).read_text(encoding="utf-8")
    rows, dropped = [], 0
    for row in csv.DictReader(io.StringIO(text)):
        values = [row[c].strip() for c in (*info.columns, info.label_column)]
        if any(v == "" for v in values):
            dropped += 1
            continue
        rows.append(values)
    x = np.array([[float(v) for v in r[:-1]] for r in rows], dtype=np.float64)
    y = np.array([r[-1] == info.positive_value for r in rows], dtype=np.int64)
    return x, y, dropped


def case_domain(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box ``(lo, hi)`` (each of shape (2,)) of the case's data set, in model
    input order, rows with a missing value dropped."""
    x, _, _ = read_csv(case_info(name))
    return x.min(axis=0), x.max(axis=0)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64))


def cat_network() -> Network:
    """``sigmoid(c0 + c1*H + c2*W)``: Affine (1x2) + Sigmoid head; input (B, 2) = (H, W)."""
    c0, c1, c2 = CAT_COEFFS
    fc = Affine(torch.tensor([[c1, c2]], dtype=DTYPE), torch.tensor([c0], dtype=DTYPE))
    nodes = [Node("fc", fc, (INPUT,)), Node("out", Sigmoid(), ("fc",))]
    return Network(nodes, (2,), head="out", name="cat")


def mlp_network(
    w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, activation: str, name: str
) -> Network:
    """2-layer MLP ``sigmoid(W2 act(W1 x + b1) + b2)``: W1 (H, N), b1 (H,), W2 (1, H),
    b2 (1,); ``activation`` is ``relu`` or ``linear``. Input (B, N), output (B, 1)."""
    acts: dict[str, type[Op]] = {"relu": ReLU, "linear": Identity}
    if activation not in acts:
        raise InputError(f"unknown hidden activation {activation!r}: use relu or linear")
    nodes = [
        Node("fc1", Affine(_t(w1), _t(b1)), (INPUT,)),
        Node("act1", acts[activation](), ("fc1",)),
        Node("fc2", Affine(_t(w2), _t(b2)), ("act1",)),
        Node("out", Sigmoid(), ("fc2",)),
    ]
    return Network(nodes, (int(w1.shape[1]),), head="out", name=name)


def load_weights(name: str) -> dict[str, np.ndarray]:
    """The arrays of an MLP case's npz file (W1, b1, W2, b2 and metadata)."""
    info = case_info(name)
    if info.weights is None:
        raise InputError(f"case {name!r} has no weight file")
    with data_file(info.weights).open("rb") as fh, np.load(fh, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_case(name: str) -> Network:
    """The network of a built-in case (input (B, 2), output (B, 1) = P(Male))."""
    info = case_info(name)
    if info.weights is None:
        return cat_network()
    z = load_weights(name)
    return mlp_network(z["W1"], z["b1"], z["W2"], z["b2"], str(z["activation"]), name)
