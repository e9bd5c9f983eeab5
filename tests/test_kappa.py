"""DeepFool, kappa (seed 003), its data loading, per-layer kappa and the CLI entry points.

Golden values: DeepFool on a linear classifier is exact in one step (closed form in numpy);
kappa of a linear network in closed form; Eq. 5.1 against the thesis' Tables 5.1/5.2;
foolbox's ``L2DeepFoolAttack`` on the same network and images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from conftest import PACKAGED
from quantcert.analyses.kappa import kappa, kappa_of, min_bits
from quantcert.analyses.kappa_cli import kappa_command, reproduce_thesis_command
from quantcert.analyses.kappa_data import load_images, vnnlib_box
from quantcert.analyses.layer_kappa import layer_kappa, tail_function
from quantcert.analyses.thesis import CASES, MNIST, Case
from quantcert.engines.deepfool import deepfool
from quantcert.errors import InputError
from quantcert.intake import load
from quantcert.network import INPUT, Network, Node
from quantcert.ops import DTYPE, Affine, Conv, ReLU, Reshape, Sum

MODELS = PACKAGED
MLP = MODELS / "mnistfc" / "mnist-net_256x2.onnx"
RESNET_DATA = MODELS / "cifar10_resnet" / "resnet2b"


def _linear(w: np.ndarray, b: np.ndarray) -> Network:
    return Network([Node("fc", Affine(torch.tensor(w), torch.tensor(b)), (INPUT,))], (w.shape[1],))


def _deepfool_closed_form(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """One DeepFool step on ``Wx + b``: to the nearest boundary, overshoot 0.02, +1e-4 on the
    distance and 1e-8 on the gradient norms (the reference implementation's constants)."""
    y = w @ x + b
    k0 = int(np.argmax(y))
    best = (math.inf, None)
    for k in range(len(y)):
        if k == k0:
            continue
        wk, fk = w[k] - w[k0], y[k] - y[k0]
        dist = abs(fk) / (np.linalg.norm(wk) + 1e-8)
        if dist < best[0]:
            best = (dist, wk)
    dist, wk = best
    assert wk is not None
    return 1.02 * (dist + 1e-4) * wk / (np.linalg.norm(wk) + 1e-8)


# --------------------------------------------------------------------- DeepFool
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), classes=st.integers(2, 6), dim=st.integers(2, 12))
def test_deepfool_on_a_linear_classifier_is_the_closed_form(
    seed: int, classes: int, dim: int
) -> None:
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(classes, dim)), rng.normal(size=classes)
    x = rng.normal(size=(3, dim))
    result = deepfool(_linear(w, b), torch.tensor(x))
    for i in range(3):
        expected = _deepfool_closed_form(w, b, x[i])
        np.testing.assert_allclose(result.perturbation[i].numpy(), expected, rtol=1e-9, atol=1e-12)
    assert bool(result.flipped.all())
    assert result.iterations.tolist() == [1, 1, 1]


def _mnist(n: int, shape: tuple[int, ...]) -> torch.Tensor:
    return load_images(MNIST, shape, n).images


def test_deepfool_matches_foolbox_median_norm() -> None:
    fb = pytest.importorskip("foolbox")
    net = load(MLP)
    x = _mnist(100, net.input_shape)
    ours = deepfool(net, x, bounds=(0.0, 1.0))

    class Logits(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return net.logits(z)

    model = fb.PyTorchModel(Logits().eval(), bounds=(0.0, 1.0))
    attack = fb.attacks.L2DeepFoolAttack(steps=50, overshoot=0.02)
    _, adv, success = attack(model, x, ours.original, epsilons=None)
    theirs = (adv - x).flatten(1).norm(dim=1)
    ok = ours.flipped & success
    assert abs(float(ours.flipped.double().mean()) - float(success.double().mean())) <= 0.02
    med_ours, med_theirs = float(ours.norm[ok].median()), float(theirs[ok].median())
    assert med_ours == pytest.approx(med_theirs, rel=0.05)


# --------------------------------------------------------------------- kappa
def test_kappa_of_a_linear_network_in_closed_form() -> None:
    rng = np.random.default_rng(7)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    x = rng.normal(size=(5, 6))
    net = _linear(w, b)
    for method in ("deepfool", "random"):
        res = kappa(net, x, method=method, progress=False, draws=4)
        for i in range(5):
            dx = _deepfool_closed_form(w, b, x[i])
            y = w @ x[i] + b
            if method == "deepfool":
                expected = (np.linalg.norm(w @ dx) / np.linalg.norm(y)) / (
                    np.linalg.norm(dx) / np.linalg.norm(x[i])
                )
                assert res.kappa[i] == pytest.approx(expected, rel=1e-9)
            sigma = np.linalg.svd(w, compute_uv=False)[0]
            assert res.kappa[i] <= sigma * np.linalg.norm(x[i]) / np.linalg.norm(y) * (1 + 1e-9)
        np.testing.assert_allclose(
            res.relative_perturbation,
            [np.linalg.norm(_deepfool_closed_form(w, b, xi)) / np.linalg.norm(xi) for xi in x],
            rtol=1e-9,
        )
    analytic = kappa(net, x, method="analytic", progress=False)
    sigma = np.linalg.svd(w, compute_uv=False)[0]
    expected = sigma * np.linalg.norm(x, axis=1) / np.linalg.norm(x @ w.T + b, axis=1)
    np.testing.assert_allclose(analytic.kappa, expected, rtol=1e-8)
    assert analytic.upper == pytest.approx(expected.max(), rel=1e-8)


@pytest.mark.parametrize(
    "k,bits",
    [
        (101.78, 8),
        (651.06, 11),
        (12.00, 5),
        (116.84, 8),
        (824.53, 11),
        (16.37, 6),  # Table 5.1
        (1.68, 2),
        (4.19, 4),
        (2.96, 3),
        (6.39, 4),  # Table 5.2
    ],
)
def test_min_bits_reproduces_the_thesis_tables(k: float, bits: int) -> None:
    assert min_bits(k) == bits


def test_kappa_result_json_keys_and_witness_attains_lower(tmp_path: Path) -> None:
    net = load(MLP)
    data = load_images(MNIST, net.input_shape, 40)
    res = kappa(net, data.images, data.labels, progress=False)
    d = res.to_dict()
    for key in (
        "images",
        "flipped",
        "lower",
        "upper",
        "status",
        "witness",
        "analytic_bound",
        "lipschitz_product",
    ):
        assert key in d
    assert set(d["kappa"]) == {"mean", "median", "min", "max"}
    assert {"mean", "max", "min"} <= set(d["min_bits"])
    assert set(d["relative_perturbation"]) == {"mean", "median", "min", "max"}
    assert d["upper"] is None and d["status"] == "measured"
    assert d["lower"] == pytest.approx(d["kappa"]["max"])
    assert d["gain"]["max"] <= d["lipschitz_product"] <= d["analytic_bound"]
    w = res.witness
    assert w is not None
    x0 = data.images[w.image : w.image + 1]
    xw = torch.tensor(w.x).reshape(x0.shape)
    k, _ = kappa_of(net, x0, xw - x0)
    assert float(k[0]) == pytest.approx(res.lower, rel=1e-12)
    assert w.label_before != w.label_after
    from quantcert.report.output import write_json

    write_json(d, str(tmp_path / "k.json"))
    assert json.loads((tmp_path / "k.json").read_text())["images"] == 40


def test_bad_input_raises_one_line_input_errors(tmp_path: Path) -> None:
    net = load(MLP)
    with pytest.raises(InputError, match="unknown kappa method"):
        kappa(net, _mnist(2, net.input_shape), method="worst")
    with pytest.raises(InputError, match="not found"):
        load_images(tmp_path / "missing.npz", net.input_shape)
    np.savez(tmp_path / "nokey.npz", pixels=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(InputError, match="no 'images'"):
        load_images(tmp_path / "nokey.npz", net.input_shape)
    np.savez(tmp_path / "shape.npz", images=np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(InputError, match="do not fit"):
        load_images(tmp_path / "shape.npz", net.input_shape)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not a readable"):
        load_images(tmp_path / "junk.npz", net.input_shape)
    with pytest.raises(InputError, match="do not fit"):
        kappa(net, np.zeros((2, 5)), method="analytic")
    flat = kappa(net, np.full((2, 28, 28), 0.5), method="analytic", progress=False)
    assert flat.images == 2


def test_vnnlib_box_centre_and_label() -> None:
    path = sorted(RESNET_DATA.glob("*.vnnlib"))[0]  # prop_0: label 2
    lo, hi, label = vnnlib_box(path)
    assert lo.shape == (3072,) and label == 2
    # The file's first bounds: X_0 in [1.3441094160079956, 1.4075908660888672].
    assert lo[0] == 1.3441094160079956 and hi[0] == 1.4075908660888672
    data = load_images(RESNET_DATA, (3, 32, 32))
    assert data.images.shape == (4, 3, 32, 32)
    assert data.images[0, 0, 0, 0] == pytest.approx((1.3441094160079956 + 1.4075908660888672) / 2)
    assert data.labels is not None and data.labels[0] == 2


# --------------------------------------------------------------------- per-layer kappa
def _residual_net() -> Network:
    g = torch.Generator().manual_seed(5)
    w1 = torch.randn(4, 1, 3, 3, generator=g, dtype=DTYPE) * 0.5
    w2 = torch.randn(4, 4, 3, 3, generator=g, dtype=DTYPE) * 0.2
    fc = torch.randn(3, 4 * 36, generator=g, dtype=DTYPE) * 0.2
    return Network(
        [
            Node("c1", Conv(w1, torch.zeros(4, dtype=DTYPE), padding=(1, 1)), (INPUT,)),
            Node("r1", ReLU(), ("c1",)),
            Node("c2", Conv(w2, None, padding=(1, 1)), ("r1",)),
            Node("add", Sum((1.0, 1.0)), ("c2", "r1")),
            Node("r2", ReLU(), ("add",)),
            Node("flat", Reshape((144,)), ("r2",)),
            Node("fc", Affine(fc, torch.zeros(3, dtype=DTYPE)), ("flat",)),
        ],
        (1, 6, 6),
    )


def test_layer_kappa_on_a_residual_dag_is_bounded_by_the_analytic_kappa() -> None:
    net = _residual_net()
    x = torch.randn(6, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    clean = net.evaluate(x)
    for name in ("c2", "r1", INPUT):  # r1 feeds both branches of the residual sum
        fn = tail_function(net, clean, name)
        torch.testing.assert_close(fn(clean[name], torch.arange(6)), clean["fc"])
    result = layer_kappa(net, x, draws=5)
    assert [layer.node for layer in result.layers] == ["input", "c1", "r1", "c2", "add", "r2"]
    for layer in result.layers:
        assert layer.deepfool["max"] <= layer.analytic["max"] * (1 + 1e-9)
        assert layer.random["max"] <= layer.analytic["max"] * (1 + 1e-9)
    assert "| r1 |" in result.to_markdown()


# --------------------------------------------------------------------- CLI entry points
def test_kappa_command_prints_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kappa_command(str(MLP), str(MNIST), "random", 10, None)
    out = capsys.readouterr().out
    assert "kappa (random) of mnist-net_256x2 over 10 images" in out
    kappa_command(str(MLP), str(MNIST), "deepfool", 5, str(tmp_path / "k.json"))
    assert json.loads((tmp_path / "k.json").read_text())["images"] == 5
    kappa_command(str(MLP), str(MNIST), "certified", 3, None)
    assert "measured <= certified on all 3 images: yes" in capsys.readouterr().out


def test_reproduce_thesis_writes_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import quantcert.analyses.thesis as thesis

    small: tuple[Case, ...] = (CASES[0], CASES[-2])
    monkeypatch.setattr(thesis, "CASES", small)
    monkeypatch.setattr(thesis, "LAYER_IMAGES", 2)
    reproduce_thesis_command(tmp_path, 3)
    assert "mnist-net_256x2" in capsys.readouterr().out
    doc = json.loads((tmp_path / "report.json").read_text())
    assert set(doc["networks"]) == {"mnist-net_256x2", "resnet_2b"}
    assert set(doc["tables"]["table_5_1"]) == {"mnist-net_256x2", "resnet_2b"}
    report = (tmp_path / "report.md").read_text()
    assert "Table 5.1" in report and "Table 5.2" in report and "Eq. 3.8" in report
    assert "Certified kappa" in report
    assert doc["networks"]["mnist-net_256x2"]["certified"]["violations"] == 0
    # The precision column: certified bits beside Table 5.1's kappa bits (MNIST nets only).
    bits = doc["tables"]["certified_bits"]
    assert set(bits) == {"mnist-net_256x2"}
    assert [x["name"] for x in bits["mnist-net_256x2"]["layers"]] == ["gemm", "gemm_1", "gemm_2"]
    assert "Certified bits beside Table 5.1" in report
    for fig in (
        "fig_4_3_perturbation",
        "fig_5_1_kappa_deepfool",
        "fig_5_2_kappa_histogram",
        "fig_5_3_kappa_random",
    ):
        assert (tmp_path / f"{fig}.png").stat().st_size > 1000


def test_interrupted_thesis_keeps_finished_networks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantcert.analyses import thesis

    real = thesis.run_case
    calls = []

    def run_then_interrupt(case, limit, progress=True):  # type: ignore[no-untyped-def]
        if calls:
            raise KeyboardInterrupt
        calls.append(case.name)
        return real(case, 3, progress=False)

    monkeypatch.setattr(thesis, "run_case", run_then_interrupt)
    doc = thesis.reproduce_thesis(tmp_path, limit=3, progress=False, cases=thesis.CASES[:2])
    assert doc["settings"]["interrupted"] is True
    assert list(doc["networks"]) == calls
    assert "Interrupted" in (tmp_path / "report.md").read_text()


def test_interrupted_kappa_keeps_the_finished_images(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcert.analyses import kappa as kappa_module

    net = load(MLP)
    data = load_images(MNIST, net.input_shape, 12)
    real = kappa_module._measure_chunk
    calls: list[int] = []

    def chunk_then_interrupt(*args, **kwargs):  # type: ignore[no-untyped-def]
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kappa_module, "chunk_size", lambda net, classes=10: 5)
    monkeypatch.setattr(kappa_module, "_measure_chunk", chunk_then_interrupt)
    res = kappa(net, data.images, data.labels, progress=False)
    assert res.images == 10 and res.extra["interrupted"] is True
    monkeypatch.setattr(kappa_module, "_measure_chunk", real)
    full = kappa(net, data.images[:10], data.labels[:10], progress=False)
    np.testing.assert_array_equal(res.kappa, full.kappa[:10])
    calls.clear()
    monkeypatch.setattr(
        kappa_module, "_measure_chunk", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    with pytest.raises(KeyboardInterrupt):
        kappa(net, data.images, data.labels, progress=False)
