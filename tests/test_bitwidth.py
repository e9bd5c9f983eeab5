"""``quantcert bitwidth``: certified minimum bits, checked from outside.

- certified bits are never below the empirical bits (the real quantizer, measured);
- at the certified bits, an independent accuracy run (and onnxruntime's own weight rounding)
  keeps the target; the mixed assignment's joint certificate is re-derived afresh;
- one bit below, a 'falsified' answer's real rounding really breaks the target.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantcert.analyses.precision import Scheme, accuracy
from quantcert.analyses.precision.bitwidth import bitwidth, empirical_bits, family
from quantcert.analyses.precision.targets import parse_target
from quantcert.errors import InputError
from quantcert.formats import parse_format
from quantcert.intake import load
from test_accuracy import MODELS, NETS, _cli, _mnist, _ort_labels, _ort_weight_quantized


@pytest.fixture(scope="module")
def study() -> dict[str, object]:
    net = load(MODELS / NETS["mnist-256x2"], self_check=False)
    x, y = _mnist(40, start=300)
    target = parse_target("accuracy-drop<=2%")
    return {
        "net": net,
        "x": x,
        "y": y,
        "result": bitwidth(net, x, y, target, family("int", "per-channel"), ("weights",)),
    }


def test_certified_bits_never_below_empirical(study: dict[str, object]) -> None:
    r = study["result"]
    assert isinstance(r, dict)
    for layer in r["layers"]:
        cert, emp = layer["weights"]["bits"], layer["weights_empirical_bits"]
        assert emp is not None
        assert cert is None or cert >= emp, layer


def test_answers_hold_when_recomputed(study: dict[str, object]) -> None:
    r, net, x, y = study["result"], study["net"], study["x"], study["y"]
    assert isinstance(r, dict) and isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
    floor = r["float_accuracy"] - 0.02
    bits = r["uniform"]["bits"]
    assert bits is not None
    res = accuracy(net, x, y, Scheme({"*": parse_format(f"int{bits}:per-channel")}), attack_steps=0)
    assert res.summary()["certified_accuracy"] >= floor - 1e-12
    # onnxruntime's own rounding of every weight at those bits keeps the target.
    ort = _ort_labels(_ort_weight_quantized(MODELS / NETS["mnist-256x2"], bits), x)
    assert (ort == y).mean() >= floor - 1e-12
    for answer in [r["uniform"], *(layer["weights"] for layer in r["layers"])]:
        cert = answer["certificate"]
        assert cert["status"] == "verified"
        assert answer["measured"] >= cert["lower"] - 1e-12
        below = answer["below"]
        if below["status"] == "falsified":
            assert below["value"] < floor
    mixed = r["mixed"]
    if mixed["status"] == "verified":
        scheme = Scheme(
            {n: parse_format(f"int{b}:per-channel") for n, b in mixed["assignment"].items()}
        )
        again = accuracy(net, x, y, scheme, attack_steps=0).summary()
        assert again["certified_accuracy"] >= floor - 1e-12
        assert again["certified_accuracy"] == pytest.approx(mixed["certificate"]["lower"])


def test_empirical_peer_is_the_measured_minimum(study: dict[str, object]) -> None:
    from quantcert.analyses.precision.bitwidth import Study

    net, x, y = study["net"], study["x"], study["y"]
    assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
    r = study["result"]
    assert isinstance(r, dict)
    s = Study(net, x, y, parse_target("accuracy-drop<=2%"), family("int", "per-channel"),
              r["float_accuracy"])  # fmt: skip
    b = empirical_bits(s, "gemm")
    assert b is not None
    if b > 2:  # one bit fewer really breaks the target when measured
        res = accuracy(net, x, y, Scheme({"gemm": parse_format(f"int{b - 1}:per-channel")}),
                       attack_steps=0)  # fmt: skip
        assert r["float_accuracy"] - res.summary()["measured_accuracy"] > 0.02


def test_targets_and_families_refused() -> None:
    for bad in ("accuracy-drop<=x", "eps<=0.1", "drop<1%", "accuracy-drop<=200%"):
        with pytest.raises(InputError):
            parse_target(bad)
    assert parse_target("accuracy-drop<=0.5%").drop == pytest.approx(0.005)
    assert parse_target("noflip").kind == "noflip"
    with pytest.raises(InputError):
        family("mx", "per-channel")
    with pytest.raises(InputError):
        family("int", "per-row")


def test_cli_bitwidth(tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    x, y = _mnist(15)
    np.savez(data, images=(x * 255).astype(np.uint8), labels=y)
    model = str(MODELS / NETS["mnist-256x2"])
    out, plot = tmp_path / "b.json", tmp_path / "b.png"
    r = _cli("bitwidth", model, "--data", str(data), "--target", "noflip", "--kinds", "weights",
             "--json", str(out), "--plot", str(plot))  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    assert [layer["name"] for layer in s["layers"]] == ["gemm", "gemm_1", "gemm_2"]
    assert plot.stat().st_size > 1000
    assert Path(s["pareto_plot"]).stat().st_size > 1000
    assert [p["bits"] for p in s["uniform_ladder"]] == sorted(
        p["bits"] for p in s["uniform_ladder"]
    )
    for args in (["--target", "eps<=1"],):  # the others: test_targets_and_families_refused
        r = _cli("bitwidth", model, "--data", str(data), *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_fixed_point_fraction_bits_for_global_eps_on_the_cat() -> None:
    import torch

    from quantcert.analyses.epsilon import input_box
    from quantcert.analyses.precision.eps_bits import EpsTarget, eps_bits
    from quantcert.formats.apply import quantized_parameters
    from quantcert.ops.base import DTYPE

    net = load("cat")
    lo, hi = np.array([6.3, 2.0]), np.array([20.5, 3.9])  # the cats' data hull
    box = input_box(net, lo, hi)
    r = eps_bits(net, box, EpsTarget(0.01))
    assert r["bits"] is not None
    cert = r["certificate"]
    assert cert["upper"] <= 0.01
    # The real rounding, on a fine grid of the whole box, never beats the certificate.
    w = {k: parse_format(v) for k, v in r["formats"]["weights"].items()}
    b = {k: parse_format(v) for k, v in r["formats"]["biases"].items()}
    params = quantized_parameters(net, w, b)
    g = torch.stack(torch.meshgrid(torch.linspace(6.3, 20.5, 200, dtype=DTYPE),
                                   torch.linspace(2.0, 3.9, 200, dtype=DTYPE),
                                   indexing="ij"), -1).reshape(-1, 2)  # fmt: skip
    with torch.no_grad():
        change = float((net(g, params) - net(g)).abs().max())
    assert change <= cert["upper"]
    for judged in r["judged"]:
        assert judged["measured"] <= judged["certificate"]["upper"]
    # One bit fewer: the stored witness replays to a change above eps.
    below = r["below"]
    assert below["status"] == "falsified"
    wit = below["witness"]
    nominal = net.param_tensors()
    moved = {
        k: nominal[k] + torch.as_tensor(v, dtype=DTYPE) for k, v in wit["param_offsets"].items()
    }
    x = torch.as_tensor(wit["x"], dtype=DTYPE).reshape(1, 2)
    assert bool((x >= box.lo).all() and (x <= box.hi).all())
    from quantcert.analyses.precision.eps_bits import fixed_maps
    from quantcert.formats.apply import format_perturbation

    radius = format_perturbation(net, *fixed_maps(net, below["bits"])).radius
    for k, v in wit["param_offsets"].items():
        assert bool((torch.as_tensor(v, dtype=DTYPE).abs() <= radius[k]).all())
    with torch.no_grad():
        assert float((net(x, moved) - net(x)).abs().max()) > 0.01
