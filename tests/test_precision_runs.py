"""Resume for the precision studies: ``accuracy`` chunks and ``bitwidth`` settings are
recorded in the store as they finish; a resumed or longer run reuses them and equals a fresh
run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import quantcert.analyses.precision.accuracy_runs as runs
from quantcert.analyses.precision import Scheme, accuracy
from quantcert.analyses.precision.bitwidth import bitwidth, family
from quantcert.analyses.precision.targets import parse_target
from quantcert.intake import load
from quantcert.runs import InProcess, Store
from test_accuracy import MODELS, NETS, _mnist


def test_accuracy_chunks_resume_and_match_a_fresh_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "CHUNK", 10)
    net = load(MODELS / NETS["mnist-256x2"], self_check=False)
    x, y = _mnist(30)
    scheme = Scheme.parse(weights="int6:per-channel", activations="uint8:asym")
    with Store.open(tmp_path) as store:
        # An interrupted run that finished the first two chunks, calibrated on all 30 images.
        runs.accuracy_units(net, x[:20], y[:20], scheme, "m", x, store, InProcess())
        key = runs.study_key("m", scheme, x)
        assert len(store.done(key)) == 2
        calls: list[int] = []
        real = runs._chunk

        def counting(*args: object) -> object:
            calls.append(1)
            return real(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(runs, "_chunk", counting)
        resumed = runs.accuracy_units(net, x, y, scheme, "m", None, store, InProcess())
        assert len(calls) == 1  # only the third chunk was computed
    fresh = accuracy(net, x, y, scheme)
    for name in ("status", "by", "float_pred", "measured_pred", "labels"):
        assert np.array_equal(getattr(resumed, name), getattr(fresh, name)), name
    assert np.array_equal(resumed.attack_images, fresh.attack_images)


def test_bitwidth_rerun_reuses_every_setting(tmp_path: Path) -> None:
    net = load(MODELS / NETS["mnist-256x2"], self_check=False)
    x, y = _mnist(20)
    args = (net, x, y, parse_target("accuracy-drop<=5%"), family("int", "per-channel"),
            ("weights",), False)  # fmt: skip
    with Store.open(tmp_path) as store:
        first = bitwidth(*args, store=store, model_id="m")
        again = bitwidth(*args, store=store, model_id="m")
    assert first["judged_settings"] > 0 and first["reused_settings"] == 0
    assert again["judged_settings"] == 0 and again["reused_settings"] == first["judged_settings"]
    for key in ("uniform", "input", "layers"):
        assert again[key] == first[key]
