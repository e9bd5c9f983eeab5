"""Seed 000 reproduction on a reduced setting (100 random inputs per panel): files written,
every witness re-evaluates to its lower bound, proved-robust points resist sampled corners,
and our engine agrees with the SCIP backend on every Table 1 entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from quantcert.analyses.paper import DELTAS, FIGURE, MODELS, reproduce_paper
from quantcert.analyses.paper_cli import sigma_command
from quantcert.cases.builtin import case_domain, load_case
from quantcert.network import Network
from quantcert.ops import DTYPE

POINTS = 100
GAP = 1e-5


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    pytest.importorskip("pyscipopt")
    out = tmp_path_factory.mktemp("paper")
    return out, reproduce_paper(out, points=POINTS, gap=GAP, timeout=5.0)


def _outputs(net: Network, x: np.ndarray, offsets: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Nominal and perturbed outputs (N,) at points x (N, 2) with per-point offsets."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1, 2), dtype=DTYPE)
    n = xt.shape[0]
    nominal = net.param_tensors()
    params = {
        k: nominal[k] + torch.as_tensor(np.asarray(offsets[k]), dtype=DTYPE).reshape(n, *v.shape)
        for k, v in nominal.items()
    }
    with torch.no_grad():
        return net(xt)[:, 0].numpy(), net(xt, params)[:, 0].numpy()


def test_files_written(report: tuple[Path, dict[str, Any]]) -> None:
    out, data = report
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 6 and all(p.stat().st_size > 10_000 for p in pngs)
    assert len(data["table1"]) == len(MODELS) * len(DELTAS) * 3
    assert json.loads((out / "report.json").read_text())["points"] == POINTS
    md = (out / "report.md").read_text()
    for text in ("## Table 1", "0.00691", "(0.082, 0.076)", "witnesses", "ReLU", "SCIP"):
        assert text in md
    for model in MODELS:
        assert f"fig{FIGURE[model]}a_{model}" in md


def test_table_witnesses_reevaluate(report: tuple[Path, dict[str, Any]]) -> None:
    for row in report[1]["table1"]:
        net = load_case(row["model"])
        w = row["witness"]
        assert w is not None, row
        lo, hi = case_domain(row["model"])
        x = np.asarray(w["x"])
        assert np.all(lo <= x) and np.all(x <= hi)
        offsets = {k: np.asarray(v)[None] for k, v in w["param_offsets"].items()}
        assert max(np.abs(v).max() for v in offsets.values()) <= row["delta"]
        f_n, f_p = (float(v[0]) for v in _outputs(net, x, offsets))
        if row["quantity"] == "eps":
            value = abs(f_p - f_n)
        elif row["quantity"] == "sigma_above":
            assert f_n >= 0.5 > f_p
            value = f_n - 0.5
        else:
            assert f_n < 0.5 <= f_p
            value = 0.5 - f_n
        assert value == pytest.approx(row["lower"], rel=1e-12, abs=1e-15)
        assert row["lower"] <= row["upper"]


def test_agrees_with_exact_backend(report: tuple[Path, dict[str, Any]]) -> None:
    for row in report[1]["table1"]:
        ex = row["exact"]
        assert row["exact_agrees"], row
        assert ex["lower"] <= row["upper"] + 1e-12 and row["lower"] <= ex["upper"] + 1e-9
        if row["status"] == "optimal":
            assert abs(row["lower"] - ex["lower"]) <= GAP + (ex["upper"] - ex["lower"]) + 1e-9


def test_local_witnesses_and_proofs(report: tuple[Path, dict[str, Any]]) -> None:
    _, data = report
    rng = np.random.default_rng(0)
    for model in MODELS:
        net = load_case(model)
        arrays = np.load(data["models"][model]["data"])
        x = arrays["points"]
        assert x.shape == (POINTS, 2)
        names = list(net.param_tensors())
        for delta in DELTAS:
            tag = f"{delta:g}"
            eps_off = {k: arrays[f"{tag}/eps_offset/{k}"] for k in names}
            f_n, f_p = _outputs(net, x, eps_off)
            lower, upper = arrays[f"{tag}/eps_lower"], arrays[f"{tag}/eps_upper"]
            np.testing.assert_allclose(np.abs(f_p - f_n), lower, rtol=1e-9, atol=1e-15)
            assert np.all(lower <= upper)
            status = arrays[f"{tag}/flip_status"]
            flip_off = {k: arrays[f"{tag}/flip_offset/{k}"] for k in names}
            f_n, f_p = _outputs(net, x, flip_off)
            flipped = (f_n >= 0.5) != (f_p >= 0.5)
            assert np.array_equal(flipped, status == 1)
            corners = {
                k: delta * rng.choice([-1.0, 1.0], (POINTS, *v.shape))
                for k, v in net.param_tensors().items()
            }
            f_n, f_p = _outputs(net, x, corners)
            assert not np.any(((f_n >= 0.5) != (f_p >= 0.5)) & (status == 0))
            assert np.all(np.abs(f_p - f_n) <= upper)


def test_comparison_reports_numbers(report: tuple[Path, dict[str, Any]]) -> None:
    text = report[1]["comparison"]
    assert "delta 0.005" in text and "delta 0.01" in text and "seed's claim" in text


@pytest.mark.parametrize("engine", ["quantcert", "exact"])
def test_sigma_command(engine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pyscipopt")
    sigma_command("cat", 0.005, None, "6.3:20.5,2:3.9", None, 1e-5, 30.0, engine, None)
    text = capsys.readouterr().out
    assert "above" in text and "0.024355" in text
    target = tmp_path / "sigma.json"
    sigma_command("cat", 0.005, None, "6.3:20.5,2:3.9", None, 1e-5, 30.0, engine, str(target))
    data = json.loads(target.read_text())
    assert abs(data["sides"]["below"]["lower"] - 0.0213440) < 1e-6
    assert data["engine"].startswith("exact" if engine == "exact" else "quantcert")
