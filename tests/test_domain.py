"""Input domains and points (``intake.domain``) and VNN-LIB parsing (``intake.vnnlib``)."""

from __future__ import annotations

import gzip
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import quantcert
from quantcert.errors import InputError
from quantcert.intake.domain import csv_box, parse_domain, parse_point
from quantcert.intake.vnnlib import LinearConstraint, load_vnnlib, parse_vnnlib

VNNLIB = Path(__file__).parent / "data" / "vnnlib"
CASES = Path(quantcert.__file__).parent / "cases" / "data"

finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def boxes(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    n = draw(st.integers(1, 12))
    pairs = [sorted(draw(st.lists(finite, min_size=2, max_size=2))) for _ in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def declare(n_x: int, n_y: int) -> str:
    names = [f"X_{i}" for i in range(n_x)] + [f"Y_{j}" for j in range(n_y)]
    return "".join(f"(declare-const {v} Real)\n" for v in names)


# --------------------------------------------------------------------------- LO:HI domains


@given(boxes())
def test_interval_round_trip(box: tuple[list[float], list[float]]) -> None:
    lo, hi = box
    text = ",".join(f"{a!r}:{b!r}" for a, b in zip(lo, hi, strict=True))
    got_lo, got_hi = parse_domain(text, n_inputs=len(lo))
    assert got_lo.dtype == np.float64 and got_lo.shape == (len(lo),)
    assert got_lo.tolist() == lo and got_hi.tolist() == hi


def test_interval_forms() -> None:
    lo, hi = parse_domain(" -1:1 , -2.5e-3:+4E2,0:0 ")
    assert lo.tolist() == [-1.0, -2.5e-3, 0.0] and hi.tolist() == [1.0, 400.0, 0.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0:1,3:1", "domain dimension 2: lower 3 > upper 1"),
        ("0:1,nan:1", "domain dimension 2 is NaN"),
        ("0:NaN", "domain dimension 1 is NaN"),
        ("0:inf", "domain dimension 1: 'inf' is not a number"),
        ("0:1e999", "domain dimension 1: 1e999 is not finite"),
        ("0:1,abc", "domain dimension 2: 'abc' is not LO:HI"),
        ("0:1:2", "domain dimension 1: '0:1:2' is not LO:HI"),
        ("0:x", "domain dimension 1: 'x' is not a number"),
        ("0:1,", "domain dimension 2 is empty"),
        (":1", "domain dimension 1 is empty"),
        ("0.5", "domain dimension 1: '0.5' is not LO:HI"),
        ("", "domain is empty"),
        ("   ", "domain is empty"),
        ("missing.csv", "domain file missing.csv not found"),
        ("missing.vnnlib", "VNN-LIB file missing.vnnlib not found"),
    ],
)
def test_domain_errors(spec: str, message: str) -> None:
    with pytest.raises(InputError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        parse_domain(spec)


def test_domain_dimension_count() -> None:
    with pytest.raises(InputError, match=r"^domain has 3 dimensions, the model takes 2 inputs$"):
        parse_domain("0:1,0:1,0:1", n_inputs=2)
    with pytest.raises(InputError, match=r"^domain has 2 dimensions, the model takes 3 inputs$"):
        parse_domain("0:1,0:1", n_inputs=3)
    lo, hi = parse_domain("0:1", n_inputs=3)  # one LO:HI: every input
    assert lo.tolist() == [0.0] * 3 and hi.tolist() == [1.0] * 3
    with pytest.raises(InputError, match=r"^domain has 784 dimensions, the model takes 1 input$"):
        parse_domain(str(VNNLIB / "mnistfc_prop_0_0.03.vnnlib"), n_inputs=1)


def test_errors_are_value_errors_and_one_line() -> None:
    with pytest.raises(ValueError) as info:
        parse_domain("1:0")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- CSV domains


def test_csv_cats_columns_in_model_order() -> None:
    path = str(CASES / "cats.csv")
    lo, hi = parse_domain(path)  # file order: body_weight_kg, heart_weight_g
    assert lo.tolist() == [2.0, 6.3] and hi.tolist() == [3.9, 20.5]
    lo2, hi2 = parse_domain(path, n_inputs=2, csv_columns=["heart_weight_g", "body_weight_kg"])
    assert lo2.tolist() == [6.3, 2.0] and hi2.tolist() == [20.5, 3.9]
    box = csv_box(path)
    assert box.columns == ("body_weight_kg", "heart_weight_g")
    assert (box.n_rows, box.n_dropped) == (144, 0)


def test_csv_athletes_drops_rows_with_missing_values(caplog: pytest.LogCaptureFixture) -> None:
    path = str(CASES / "athletes.csv")
    box = csv_box(path)
    assert box.columns == ("height_m", "weight_kg")
    assert (box.n_rows, box.n_dropped) == (11538 - 680, 680)
    with caplog.at_level(logging.WARNING, logger="quantcert.intake.domain"):
        lo, hi = parse_domain(path, n_inputs=2)
    assert "dropped 680 of 11538 rows" in caplog.text
    assert np.all(lo < hi) and lo.shape == (2,)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_csv_missing_markers_and_text_columns(tmp_path: Path) -> None:
    text = "name,a,b,c\nx,1,NA,\ny,2,5,\nz,,7,\nw,-3,nan,\n"
    path = write(tmp_path, "d.csv", text)
    box = csv_box(path)  # c is all missing: not a numeric column
    assert box.columns == ("a", "b") and (box.n_rows, box.n_dropped) == (1, 3)
    assert box.lower.tolist() == [2.0, 5.0] == box.upper.tolist()
    lo, hi = parse_domain(path, csv_columns=["a"])
    assert lo.tolist() == [-3.0] and hi.tolist() == [2.0]


def test_csv_without_header(tmp_path: Path) -> None:
    box = csv_box(write(tmp_path, "h.csv", "1,2\n3,-4\n\n"))
    assert box.columns == ("1", "2") and box.lower.tolist() == [1.0, -4.0]


@pytest.mark.parametrize(
    ("text", "columns", "message"),
    [
        ("a,b\nx,y\n", None, "has no numeric columns"),
        ("", None, "is empty"),
        ("a,b\n1,2\n3\n", None, "line 3 has 1 fields, expected 2"),
        ("a,b\n1,\n,2\n", None, "has no row with values in all of a, b"),
        ("a,b\n1,2\n", ["c"], "has no column 'c'"),
        ("s,a\nm,1\n", ["s"], "CSV column 's' in .* is not numeric \\('m'\\)"),
        ("s,a\nm,1\n", [], "CSV columns must be a non-empty list"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, columns: list[str] | None, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_domain(write(tmp_path, "bad.csv", text), csv_columns=columns)


# --------------------------------------------------------------------------- points


@given(st.lists(finite, min_size=1, max_size=20))
def test_point_round_trip(xs: list[float]) -> None:
    x = parse_point(",".join(repr(v) for v in xs), n_inputs=len(xs))
    assert x.dtype == np.float64 and x.tolist() == xs


def test_point_from_npy_and_vnnlib(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(6, dtype=np.int32).reshape(2, 3))
    assert parse_point(str(path), n_inputs=6).tolist() == [0, 1, 2, 3, 4, 5]
    assert parse_point(str(VNNLIB / "test_small.vnnlib")).tolist() == [0.0]
    centre = parse_point(str(VNNLIB / "acasxu_prop_3.vnnlib"), n_inputs=5)
    spec = load_vnnlib(VNNLIB / "acasxu_prop_3.vnnlib")
    assert np.all(spec.lower <= centre) and np.all(centre <= spec.upper)
    assert centre[3] == 0.4


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "point is empty"),
        ("1,,2", "point coordinate 2 is empty"),
        ("1,nan", "point coordinate 2 is NaN"),
        ("1,2x", "point coordinate 2: '2x' is not a number"),
        ("1:2", "point coordinate 1: '1:2' is not a number"),
        ("missing.npy", "point file missing.npy not found"),
        ("missing.vnnlib", "VNN-LIB file missing.vnnlib not found"),
    ],
)
def test_point_errors(spec: str, message: str) -> None:
    with pytest.raises(InputError, match="^" + message.replace(".", r"\.")):
        parse_point(spec)


def test_point_count_and_bad_npy(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^point has 3 coordinates, the model takes 2 inputs$"):
        parse_point("1,2,3", n_inputs=2)
    arrays = {
        "obj": np.array([{"a": 1}], dtype=object),
        "cplx": np.array([1 + 2j]),
        "empty": np.zeros(0),
        "nan": np.array([1.0, np.nan]),
    }
    for name, arr in arrays.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, arr, allow_pickle=True)
        with pytest.raises(InputError, match="point file"):
            parse_point(str(path))
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(InputError, match=r"is not a \.npy array"):
        parse_point(str(tmp_path / "junk.npy"))


# --------------------------------------------------------------------------- VNN-LIB files


def test_vnnlib_test_small_input_bounds_inside_or() -> None:
    spec = load_vnnlib(VNNLIB / "test_small.vnnlib")
    assert spec.lower.tolist() == [-1.0] and spec.upper.tolist() == [1.0]
    assert spec.n_outputs == 1
    assert spec.output_property == [[LinearConstraint({0: -1.0}, -100.0)]]


def test_vnnlib_acasxu_conjunction() -> None:
    spec = load_vnnlib(str(VNNLIB / "acasxu_prop_3.vnnlib"))
    assert spec.lower.tolist() == [-0.303531156, -0.009549297, 0.493380324, 0.3, 0.3]
    assert spec.upper.tolist() == [-0.298552812, 0.009549297, 0.5, 0.5, 0.5]
    assert spec.output_property == [
        [LinearConstraint({0: 1.0, j: -1.0}, 0.0) for j in (1, 2, 3, 4)]
    ]
    ((a, b),) = spec.output_matrices()
    assert a.shape == (4, 5) and b.tolist() == [0.0] * 4
    assert not spec.lower.flags.writeable


def test_vnnlib_input_disjunction_is_refused() -> None:
    with pytest.raises(InputError, match="disjunctions over inputs X are not supported"):
        load_vnnlib(VNNLIB / "acasxu_prop_6.vnnlib")


def test_vnnlib_mnistfc() -> None:
    spec = load_vnnlib(VNNLIB / "mnistfc_prop_0_0.03.vnnlib")
    assert spec.n_inputs == 784 and spec.lower.shape == (784,) and spec.n_outputs == 10
    assert np.all(spec.lower >= 0) and np.all(spec.upper <= 1) and np.all(spec.lower <= spec.upper)
    assert np.all(spec.upper - spec.lower <= 0.06 + 1e-6)
    assert len(spec.output_property) == 9  # label 8: some other class j reaches Y_8
    for conj, j in zip(spec.output_property, [0, 1, 2, 3, 4, 5, 6, 7, 9], strict=True):
        assert conj == [LinearConstraint({j: -1.0, 8: 1.0}, 0.0)]
    y = np.zeros(10)
    y[8] = 1.0
    assert not any(c.holds(y) for (c,) in spec.output_property)
    y[3] = 2.0
    assert spec.output_property[3][0].holds(y)
    lo, _ = parse_domain(str(VNNLIB / "mnistfc_prop_0_0.03.vnnlib"), n_inputs=784)
    assert np.array_equal(lo, spec.lower) and lo.flags.writeable


def test_vnnlib_cifar_is_fast(tmp_path: Path) -> None:
    path = tmp_path / "cifar.vnnlib"
    packed = (VNNLIB / "cifar_resnet2b_prop_0_eps_0.008.vnnlib.gz").read_bytes()
    path.write_bytes(gzip.decompress(packed))
    start = time.perf_counter()
    spec = load_vnnlib(path)
    assert time.perf_counter() - start < 1.0
    assert spec.lower.shape == (3072,) and spec.upper.shape == (3072,)
    assert np.all(spec.lower < spec.upper)
    assert len(spec.output_property) == 9  # label 2
    assert spec.output_property[0] == [LinearConstraint({0: -1.0, 2: 1.0}, 0.0)]


def test_vnnlib_generated_or_property() -> None:
    text = (
        declare(2, 3)
        + """
        ; inputs in one top-level and, one bound via arithmetic
        (assert (and (>= X_0 -0.5) (<= X_0 0.5) (<= (* 2 X_1) 1) (>= X_1 (- 0.25))))
        (assert (<= X_0 0.25))  ; a tighter repeat
        (assert (or (and (>= Y_0 Y_1) (> Y_0 (+ Y_2 1.5)))
                    (< (- Y_1 Y_2) 0)))
        (assert (<= Y_2 3 4))
        (check-sat)
    """
    )
    spec = parse_vnnlib(text)
    assert spec.lower.tolist() == [-0.5, -0.25] and spec.upper.tolist() == [0.25, 0.5]
    y0_ge_y1 = LinearConstraint({0: -1.0, 1: 1.0}, 0.0)
    y0_gt_y2 = LinearConstraint({0: -1.0, 2: 1.0}, -1.5)
    y1_lt_y2 = LinearConstraint({1: 1.0, 2: -1.0}, 0.0)
    y2_le_3 = LinearConstraint({2: 1.0}, 3.0)
    assert spec.output_property == [[y0_ge_y1, y0_gt_y2, y2_le_3], [y1_lt_y2, y2_le_3]]
    a, b = spec.output_matrices()[0]
    assert a.tolist() == [[-1, 1, 0], [-1, 0, 1], [0, 0, 1]] and b.tolist() == [0, -1.5, 3]


def test_vnnlib_equality_and_no_output() -> None:
    spec = parse_vnnlib(declare(1, 1) + "(assert (= X_0 0.5))")
    assert spec.lower.tolist() == [0.5] == spec.upper.tolist() and spec.output_property == []
    assert spec.centre().tolist() == [0.5]


@given(boxes(), st.lists(st.tuples(st.integers(0, 2), st.integers(1, 2), finite), max_size=4))
def test_vnnlib_round_trip(
    box: tuple[list[float], list[float]], ys: list[tuple[int, int, float]]
) -> None:
    lo, hi = box
    pairs = enumerate(zip(lo, hi, strict=True))
    lines = [f"(assert (<= X_{i} {b!r}))\n(assert (>= X_{i} {a!r}))" for i, (a, b) in pairs]
    lines += [
        f"(assert (or (and (<= Y_{j} {r!r})) (and (>= Y_{(j + k) % 3} Y_{j}))))" for j, k, r in ys
    ]
    spec = parse_vnnlib(declare(len(lo), 3) + "\n".join(lines))
    assert spec.lower.tolist() == lo and spec.upper.tolist() == hi
    assert spec.centre().shape == (len(lo),)
    assert len(spec.output_property) == (2 ** len(ys) if ys else 0)
    if ys:
        j, _, r = ys[0]
        assert spec.output_property[0][0] == LinearConstraint({j: 1.0}, r)


BOX = declare(1, 1) + "(assert (<= X_0 1))(assert (>= X_0 0))"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("(declare-const X_0 Real", "is unparsable: unbalanced '\\('"),
        (BOX + ")", "is unparsable: unbalanced '\\)'"),
        (BOX + "foo", "unexpected foo"),
        (declare(1, 0) + "(assert (<= X_0 0))(assert (>= X_0 1))", "X_0 has lower 1.0 > upper 0.0"),
        (BOX + "(assert (<= Z_0 1))", "unknown symbol 'Z_0'"),
        (BOX + "(assert (<= Y_1 1))", "Y_1 is used but not declared"),
        (BOX + "(assert (<= X_0 Y_0))", "only bounds of single inputs and constraints on Y"),
        (BOX + "(assert (<= (* Y_0 Y_0) 1))", "non-linear term"),
        (BOX + "(assert (<= (/ Y_0 0) 1))", "unsupported division"),
        (BOX + "(assert (not (<= Y_0 1)))", "unsupported constraint \\(not"),
        (BOX + "(assert (<= 1 0))", "always false"),
        (BOX + "(assert (or))", "an empty 'or' is always false"),
        (BOX + "(define-fun f () Real 1)", "unsupported command"),
        (BOX + "(declare-const X_1 Int)", "unsupported declaration"),
        ("(declare-const X_1 Real)(assert (<= X_1 1))", "declared X variables are not X_0..X_0"),
        (declare(0, 1), "declares no inputs"),
        (BOX + "(assert (<= Y_0 1e999))", "number 1e999 is not finite"),
    ],
)
def test_vnnlib_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_vnnlib(text)


def test_vnnlib_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.vnnlib"
    path.write_text(declare(5, 1) + "".join(f"(assert (<= 0 X_{i} 1))" for i in (0, 1, 2, 4)))
    with pytest.raises(InputError, match=f"^VNN-LIB file {path} has no bounds for X_3$"):
        load_vnnlib(path)
    path.write_bytes(b"\xff\xfe(")
    with pytest.raises(InputError, match="cannot be read"):
        load_vnnlib(path)
    with pytest.raises(InputError, match="cannot be read"):
        load_vnnlib(tmp_path)
    with pytest.raises(InputError, match="not found"):
        parse_domain(str(tmp_path / "none.vnnlib"))
