"""scikit-learn intake: the network equals ``predict_proba`` (column 1 for binary models)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.tree import DecisionTreeClassifier

from quantcert.errors import InputError
from quantcert.intake.sklearn_model import from_sklearn, load_joblib
from quantcert.network import Network
from quantcert.ops import Sigmoid, Softmax

N_FEATURES = 4
ACTIVATIONS = ["relu", "identity", "logistic", "tanh"]


def _data(n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((120, N_FEATURES)) * [1.0, 3.0, 0.5, 10.0]
    y = (x @ rng.standard_normal(N_FEATURES) > 0).astype(int)
    if n_classes == 3:
        y = y + (x[:, 0] > 0.5)
    return x, y


def _fit(model: Any, n_classes: int, labels: np.ndarray | None = None) -> Any:
    x, y = _data(n_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y if labels is None else labels)


def _models() -> dict[str, Any]:
    models: dict[str, Any] = {}
    for k in (2, 3):
        models[f"logreg-{k}"] = _fit(LogisticRegression(), k)
        for act in ACTIVATIONS:
            mlp = MLPClassifier((5, 4), activation=act, max_iter=50, random_state=0)
            models[f"mlp-{act}-{k}"] = _fit(mlp, k)
    return models


MODELS = _models()


def _expected(model: Any, x: np.ndarray) -> np.ndarray:
    proba = np.asarray(model.predict_proba(x), dtype=np.float64)
    return proba[:, 1:] if proba.shape[1] == 2 else proba


def _ours(net: Network, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(net(torch.from_numpy(x)).numpy(), dtype=np.float64)


@pytest.mark.parametrize("key", sorted(MODELS))
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.1, 1.0, 5.0]))
def test_matches_predict_proba(key: str, seed: int, scale: float) -> None:
    model = MODELS[key]
    net = from_sklearn(model)
    x = np.random.default_rng(seed).standard_normal((8, N_FEATURES)) * scale
    np.testing.assert_allclose(_ours(net, x), _expected(model, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_structure(key: str) -> None:
    net = from_sklearn(MODELS[key])
    binary = key.endswith("-2")
    assert net.input_shape == (N_FEATURES,)
    assert isinstance(net.node(net.head or "").op, Sigmoid if binary else Softmax)
    assert net.shapes()[net.output_node] == ((1,) if binary else (3,))
    if key.startswith("logreg"):  # the logits are the decision function
        x = np.random.default_rng(2).standard_normal((3, N_FEATURES))
        logits = net.logits(torch.from_numpy(x)).detach().numpy()
        ref = MODELS[key].decision_function(x).reshape(3, -1)
        np.testing.assert_allclose(logits, ref, rtol=0, atol=1e-12)


def test_hidden_activations_are_kept() -> None:
    names = {
        act: type(from_sklearn(MODELS[f"mlp-{act}-2"]).node("act1").op).__name__
        for act in ACTIVATIONS
    }
    assert names == {"relu": "ReLU", "identity": "Identity", "logistic": "Sigmoid", "tanh": "Tanh"}


def test_joblib_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(MODELS["mlp-tanh-3"], path)
    net = load_joblib(path)
    x = np.random.default_rng(1).standard_normal((5, N_FEATURES))
    np.testing.assert_allclose(_ours(net, x), MODELS["mlp-tanh-3"].predict_proba(x), atol=1e-10)
    assert net.name == "model"


def test_not_a_model_file(tmp_path: Path) -> None:
    dumped = tmp_path / "dict.joblib"
    joblib.dump({"coef": [1, 2]}, dumped)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x00not a pickle at all")
    for path in (dumped, garbage):
        with pytest.raises(InputError, match="not a scikit-learn LogisticRegression"):
            load_joblib(path)
    with pytest.raises(InputError, match="not found"):
        load_joblib(tmp_path / "missing.joblib")


def test_unsupported_models() -> None:
    tree = DecisionTreeClassifier().fit(*_data(2))
    with pytest.raises(InputError, match="DecisionTreeClassifier"):
        from_sklearn(tree)
    with pytest.raises(InputError, match="not fitted"):
        from_sklearn(LogisticRegression())
    y = _data(2)[1]
    multilabel = _fit(MLPClassifier((3,), max_iter=5), 2, np.c_[y, 1 - y])
    with pytest.raises(InputError, match="multi-label"):
        from_sklearn(multilabel)
