"""Built-in case studies: the cat closed form, the shipped athletes networks and their data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantcert import load
from quantcert.cases.athletes import _fold, _logit
from quantcert.cases.builtin import (
    CASES,
    case_csv,
    case_domain,
    load_case,
    load_weights,
    read_csv,
)
from quantcert.errors import InputError
from quantcert.ops import DTYPE, Identity, ReLU

C0, C1, C2 = -3.51518067, 0.07577862, 1.18118408


@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 30.0), st.floats(0.0, 6.0))
def test_cat_matches_closed_form(heart: float, body: float) -> None:
    net = load_case("cat")
    x = torch.tensor([[heart, body]], dtype=DTYPE)
    expected = 1.0 / (1.0 + math.exp(-(C0 + C1 * heart + C2 * body)))
    assert float(net(x)[0, 0]) == pytest.approx(expected, rel=1e-14, abs=1e-15)
    assert float(net.logits(x)[0, 0]) == pytest.approx(C0 + C1 * heart + C2 * body, abs=1e-12)


def test_cat_structure_and_domain() -> None:
    net = load_case("cat")
    assert net.head == "out" and net.input_shape == (2,)
    assert net.num_params() == 3
    lo, hi = case_domain("cat")
    x, y, dropped = read_csv(CASES["cat"])
    assert x.shape == (144, 2) and dropped == 0 and int(y.sum()) == 97
    # Model input order is (heart weight g, body weight kg).
    np.testing.assert_array_equal(lo, [6.3, 2.0])
    np.testing.assert_array_equal(hi, [20.5, 3.9])


@pytest.mark.parametrize("name", ["ath-relu", "ath-linear"])
def test_athletes_accuracy_matches_metadata(name: str) -> None:
    net = load_case(name)
    meta = load_weights(name)
    x, y, dropped = read_csv(CASES[name])
    assert dropped == 680 == int(meta["dropped"])
    assert len(x) == 11538 - 680 == int(meta["rows"])
    with torch.no_grad():
        p = net(torch.from_numpy(x))[:, 0].numpy()
    accuracy = float(((p >= CASES[name].decision_level) == (y == 1)).mean())
    assert accuracy == float(meta["accuracy"])
    assert 0.76 <= accuracy <= 0.79  # the seed: 77.19% (ReLU), 77.36% (linear)
    assert meta["W1"].shape == (3, 2) and meta["W2"].shape == (1, 3)
    hidden = ReLU if name == "ath-relu" else Identity
    assert type(net.node("act1").op) is hidden
    assert "epochs" in str(meta["recipe"]) and int(meta["seed"]) == 0


def test_athletes_domain_is_height_then_weight() -> None:
    lo, hi = case_domain("ath-relu")
    assert 1.0 < lo[0] < hi[0] < 2.5  # metres
    assert 25.0 < lo[1] < hi[1] < 250.0  # kilograms
    np.testing.assert_array_equal(lo, case_domain("ath-linear")[0])


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans())
def test_fold_standardisation_is_exact(seed: int, relu: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(*s, generator=gen, dtype=DTYPE) for s in ((3, 2), (3,), (1, 3), (1,))]
    mean = torch.tensor([1.77, 73.0], dtype=DTYPE)
    std = torch.tensor([0.11, 14.0], dtype=DTYPE)
    x = mean + std * 3 * torch.randn(16, 2, generator=gen, dtype=DTYPE)
    folded = [torch.from_numpy(a) for a in _fold(params, mean, std)]
    torch.testing.assert_close(
        _logit(x, folded, relu), _logit((x - mean) / std, params, relu), rtol=1e-10, atol=1e-10
    )


def test_metadata_and_package_data() -> None:
    for name, info in CASES.items():
        assert info.decision_level == 0.5 and info.positive_label == "Male"
        assert len(info.input_names) == len(info.units) == len(info.columns) == 2
        header = case_csv(name).read_text(encoding="utf-8").splitlines()[0].split(",")
        assert set(info.columns) | {info.label_column} <= set(header)


def test_unknown_case_lists_valid_names() -> None:
    with pytest.raises(InputError, match="cat, ath-relu, ath-linear"):
        load_case("dog")
    with pytest.raises(InputError, match="cat"):
        case_domain("dog")


def test_intake_load_resolves_case_names() -> None:
    assert load("ath-relu").name == "ath-relu"
    assert load("cat").num_params() == 3
