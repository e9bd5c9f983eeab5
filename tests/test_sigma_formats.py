"""quantcert sigma with --weights/--biases/--activations/--input (issue 9): the formats
set up as epsilon's and flip's, and sigma's upper bound against the flips of the really
quantized cat model on a dense grid of its domain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantcert.cases.builtin import case_domain, load_case
from quantcert.formats import parse_format

DOMAIN = "6.3:20.5,2:3.9"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from quantcert.cli import main; main()", "sigma", "cat"]
    return subprocess.run(
        [*cmd, "--domain", DOMAIN, *args], capture_output=True, text=True, timeout=300
    )


def _sigma(tmp: Path, *args: str) -> dict[str, Any]:
    out = tmp / "sigma.json"
    proc = _cli(*args, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _grid() -> np.ndarray:
    lo, hi = case_domain("cat")
    a, b = np.meshgrid(np.linspace(lo[0], hi[0], 701), np.linspace(lo[1], hi[1], 301))
    return np.stack([a.ravel(), b.ravel()], axis=1)


def _cat() -> tuple[np.ndarray, float]:
    net = load_case("cat")
    params = net.param_tensors()
    return params["fc.weight"].numpy()[0], float(params["fc.bias"].numpy()[0])


def _sig(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1 / (1 + np.exp(-z))
    return out


def _check(data: dict[str, Any], f_n: np.ndarray, f_q: np.ndarray) -> None:
    """Each side's upper bound covers every flip of the quantized model on the grid."""
    above = (f_n >= 0.5) & (f_q < 0.5)
    below = (f_n < 0.5) & (f_q >= 0.5)
    sides = data["sides"]
    for side, mask, dist in (("above", above, f_n - 0.5), ("below", below, 0.5 - f_n)):
        entry = sides[side]
        assert entry["lower"] <= entry["upper"]
        if mask.any():
            assert float(dist[mask].max()) <= entry["upper"] + 1e-12, side


@pytest.mark.parametrize("fmt", ["int4", "int8", "fp8-e4m3"])
def test_sigma_weights_format_covers_the_quantized_model(tmp_path: Path, fmt: str) -> None:
    data = _sigma(tmp_path, "--weights", fmt, "--biases", fmt)
    assert data["spec"]["perturbation"]["kind"] == "formats"
    w, b = _cat()
    f = parse_format(fmt)
    wq = f.quantize(w.reshape(1, -1)).ravel()
    bq = float(f.quantize(np.array([b]))[0])
    x = _grid()
    _check(data, _sig(x @ w + b), _sig(x @ wq + bq))
    # The witness's offsets stay within each tensor's own radius.
    radius = {"fc.weight": f.radius(w.reshape(1, -1)), "fc.bias": f.radius(np.array([b]))}
    for side in ("above", "below"):
        wit = data["sides"][side]["witness"]
        if wit is None:
            continue
        for name, off in wit["param_offsets"].items():
            assert (np.abs(np.asarray(off)).ravel() <= radius[name].ravel() + 1e-15).all()


def test_sigma_input_format_covers_the_quantized_input(tmp_path: Path) -> None:
    """``--input int8``: the input rounded to its int8 grid (symmetric, scale from the box's
    largest magnitude) never flips farther from the level than sigma's upper bound."""
    data = _sigma(tmp_path, "--input", "int8")
    assert data["spec"]["perturbation"]["input"] == "int8"
    w, b = _cat()
    x = _grid()
    s = np.float32(20.5 / 127)
    xq = np.clip(np.rint(x.astype(np.float32) / s), -127, 127) * s
    _check(data, _sig(x @ w + b), _sig(xq.astype(np.float64) @ w + b))
    wit = data["sides"]["above"]["witness"]
    assert wit is not None and "input_q.abs" in wit["param_offsets"]


def test_sigma_format_options_refused_where_they_do_not_combine(tmp_path: Path) -> None:
    proc = _cli("--delta", "0.01", "--weights", "int8")
    assert proc.returncode == 2 and "exactly one of" in proc.stderr
    proc = _cli("--input", "int8", "--engine", "exact")
    assert proc.returncode == 2 and "--engine exact" in proc.stderr
