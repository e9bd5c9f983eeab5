"""scikit-learn intake: a fitted ``LogisticRegression`` or ``MLPClassifier`` becomes a
``Network`` with input (B, N), N = ``n_features_in_``.

What the network returns:

- binary models (2 classes): output (B, 1) = P(class ``classes_[1]``), i.e. the column
  ``predict_proba(X)[:, 1]``, through a sigmoid head (logits (B, 1) = ``decision_function``);
- multi-class models (K > 2): output (B, K) = ``predict_proba(X)`` through a softmax head
  (logits (B, K)). A one-vs-rest ``LogisticRegression`` (normalised sigmoids, not a softmax)
  is refused.

An ``MLPClassifier`` keeps its hidden activation (relu, identity, logistic = sigmoid, tanh).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from quantcert.errors import InputError
from quantcert.network import INPUT, Network, Node
from quantcert.ops import Affine, Identity, Op, ReLU, Sigmoid, Softmax, Tanh

NOT_A_MODEL = "not a scikit-learn LogisticRegression or MLPClassifier"
_HIDDEN: dict[str, type[Op]] = {
    "relu": ReLU,
    "identity": Identity,
    "logistic": Sigmoid,
    "tanh": Tanh,
}


def _t(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64))


def _check_fitted(model: Any, attr: str) -> None:
    if not hasattr(model, attr):
        raise InputError(f"the scikit-learn {type(model).__name__} is not fitted")


def _head(nodes: list[Node], logits: str, n_classes: int) -> tuple[list[Node], str]:
    """Append the sigmoid (2 classes, 1 logit) or softmax (K logits) head."""
    op: Op = Sigmoid() if n_classes == 2 else Softmax()
    return [*nodes, Node("out", op, (logits,))], "out"


def _logistic(model: LogisticRegression) -> Network:
    """Affine (1 x N) + sigmoid, or Affine (K x N) + softmax."""
    _check_fitted(model, "coef_")
    n_classes = len(model.classes_)
    fc = Node("fc", Affine(_t(model.coef_), _t(model.intercept_)), (INPUT,))
    nodes, head = _head([fc], "fc", n_classes)
    net = Network(nodes, (int(model.coef_.shape[1]),), head=head, name="logistic_regression")
    _verify_proba(model, net)
    return net


def _verify_proba(model: LogisticRegression, net: Network) -> None:
    """Refuse models whose ``predict_proba`` is not the sigmoid / softmax of the logits
    (one-vs-rest multi-class models of older scikit-learn versions)."""
    x = np.random.default_rng(0).standard_normal((4, net.input_shape[0]))
    with torch.no_grad():
        ours = net(torch.from_numpy(x)).numpy()
    ref = model.predict_proba(x)
    ref = ref[:, 1:] if ref.shape[1] == 2 else ref
    if not np.allclose(ours, ref, rtol=0.0, atol=1e-9):
        raise InputError("one-vs-rest LogisticRegression is not supported: use multinomial")


def _mlp(model: MLPClassifier) -> Network:
    """Affine + activation per hidden layer, then the output Affine and its head."""
    _check_fitted(model, "coefs_")
    act = _HIDDEN.get(model.activation)
    if act is None:
        raise InputError(f"unsupported MLPClassifier activation {model.activation!r}")
    n_classes = len(model.classes_)
    if model.out_activation_ not in ("logistic", "softmax") or (
        model.out_activation_ == "logistic" and model.n_outputs_ != 1
    ):
        raise InputError("multi-label MLPClassifier is not supported")
    nodes: list[Node] = []
    prev, last = INPUT, len(model.coefs_)
    for i, (w, b) in enumerate(zip(model.coefs_, model.intercepts_, strict=True), start=1):
        nodes.append(Node(f"fc{i}", Affine(_t(w).T.contiguous(), _t(b)), (prev,)))
        prev = f"fc{i}"
        if i < last:
            nodes.append(Node(f"act{i}", act(), (prev,)))
            prev = f"act{i}"
    nodes, head = _head(nodes, prev, n_classes)
    return Network(nodes, (int(model.coefs_[0].shape[0]),), head=head, name="mlp_classifier")


def from_sklearn(model: object) -> Network:
    """A fitted ``LogisticRegression`` or ``MLPClassifier`` as a float64 ``Network``.

    Input (B, N). Output (B, 1) = P(``classes_[1]``) for a binary model, (B, K) =
    ``predict_proba`` for K > 2 classes.
    """
    if isinstance(model, LogisticRegression):
        return _logistic(model)
    if isinstance(model, MLPClassifier):
        return _mlp(model)
    raise InputError(f"{NOT_A_MODEL} (got {type(model).__name__})")


def load_joblib(path: str | Path) -> Network:
    """Load a model saved with ``joblib.dump`` and translate it with ``from_sklearn``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        model = joblib.load(path)
    except Exception as exc:  # unpickling raises many types for bad bytes
        raise InputError(f"{path}: {NOT_A_MODEL} ({type(exc).__name__})") from None
    if not isinstance(model, LogisticRegression | MLPClassifier):
        raise InputError(f"{path}: {NOT_A_MODEL} (got {type(model).__name__})")
    net = from_sklearn(model)
    net.name = path.stem
    return net
