"""Command-line entry points of the kappa analysis, wired into ``quantcert.cli``:

- ``quantcert kappa MODEL --data FILE [--method deepfool|random|analytic|certified]
  [--limit N] [--json PATH|-] [--store DIR] [--scheduler tcp://HOST:PORT]`` ->
  ``kappa_command``; ``--store``/``--scheduler`` run the images as resumable units
  (``analyses.kappa_runs``, ``quantcert.runs``)
- ``quantcert reproduce thesis [--out DIR] [--limit N]`` -> ``reproduce_thesis_command``

Bad input raises ``quantcert.errors.InputError`` (one line; the CLI exits with code 2).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from quantcert.analyses.kappa import METHODS, KappaResult, kappa
from quantcert.analyses.kappa_data import ImageSet, check_labels, load_images
from quantcert.errors import InputError
from quantcert.intake import load
from quantcert.network import Network
from quantcert.report.output import write_json


def kappa_command(
    model: str,
    data: str,
    method: str,
    limit: int | None,
    json_target: str | None,
    per_layer: bool = False,
    radius: float | None = None,
    store: str | None = None,
    scheduler: str | None = None,
) -> None:
    """Measure kappa of ``model`` on the images in ``data`` (``.npz``, ``.vnnlib`` or a folder
    of ``.vnnlib`` files); print a table, or write JSON to ``json_target`` (``-``: stdout).
    ``per_layer`` adds the kappa of the rest of the network from each layer's output (one
    DeepFool run per layer over the same images: keep ``limit`` small). ``store`` (a results
    folder) records each finished chunk of images and skips the chunks already there;
    ``scheduler`` (``tcp://host:port``) runs the chunks on a dask.distributed cluster."""
    if method not in METHODS:
        raise InputError(f"unknown kappa method {method!r}: use {', '.join(METHODS)}")
    if radius is not None and (method != "certified" or not 0 < radius < float("inf")):
        raise InputError(f"--radius needs --method certified and a radius > 0, got {radius}")
    if store is None and scheduler is None:
        net = load(model)
        images = load_images(data, net.input_shape, limit)
        check_labels(images, net)
        result = kappa(
            net, images.images, images.labels, method=method, progress=True, radius=radius
        )
    else:
        net, images, result = _kappa_units(model, data, method, limit, radius, store, scheduler)
    layers = None
    if per_layer:
        from quantcert.analyses.layer_kappa import layer_kappa

        layers = layer_kappa(net, torch.as_tensor(images.images, dtype=torch.float64))
    if json_target is None:
        print(result.to_text())
        print(MIN_BITS_NOTE)
        if layers is not None:
            print("\nper-layer kappa (the rest of the network from each layer's output)\n")
            print(layers.to_markdown())
    else:
        doc = result.to_dict()
        if layers is not None:
            doc["per_layer"] = layers.to_dict()
        write_json(doc, json_target)


def _kappa_units(
    model: str,
    data: str,
    method: str,
    limit: int | None,
    radius: float | None,
    store: str | None,
    scheduler: str | None,
) -> tuple[Network, ImageSet, KappaResult]:
    """Kappa as a batch run: the store and the scheduler are opened (and refused) before the
    model is loaded; progress lines go to stderr through ``quantcert.progress``."""
    from quantcert.analyses.kappa_runs import UNIT_METHODS, kappa_runs, model_identity
    from quantcert.report.progress import logging_to_stderr
    from quantcert.runs import Store, executor_for

    if method not in UNIT_METHODS:
        raise InputError(
            f"--store and --scheduler work with --method {' or '.join(UNIT_METHODS)}, not {method}"
        )
    with ExitStack() as stack:
        db = None if store is None else stack.enter_context(Store.open(store))
        executor = stack.enter_context(executor_for(scheduler))
        net = load(model)
        images = load_images(data, net.input_shape, limit)
        check_labels(images, net)
        stack.enter_context(logging_to_stderr())
        model_id = model_identity(model)
        try:
            result = kappa_runs(
                net, images.images, images.labels, method, model_id, db, executor, radius=radius
            )
        except KeyboardInterrupt:
            if db is not None:
                print(
                    f"interrupted: the finished chunks are recorded in {store}; the same "
                    "command resumes from them",
                    file=sys.stderr,
                )
            raise
    return net, images, result


#: What "min bits" means, printed wherever min bits are printed.
MIN_BITS_NOTE = (
    "  min bits = ceil(log2 kappa) + 1 (seed 003, Eq. 5.1): the input bits needed so that "
    "rounding the input, amplified by kappa, stays below half the size of the outputs"
)


def reproduce_thesis_command(out: Path, limit: int | None = None) -> None:
    """Reproduce seed 003's tables and figures into ``out`` and print where they are."""
    from quantcert.analyses.thesis import reproduce_thesis

    doc = reproduce_thesis(Path(out), limit)
    settings = doc["settings"]
    print(
        f"seed 003 reproduced in {settings['time_s']:.0f} s: {Path(out) / 'report.md'}, "
        f"{Path(out) / 'report.json'}, {len(settings['figures'])} figures"
    )
    print(MIN_BITS_NOTE)
    for name, case in doc["networks"].items():
        d = case["deepfool"]
        print(
            f"  {name:18s} {case['images']:6d} images  max kappa {d['kappa']['max']:10.4g}  "
            f"min bits (max kappa) {d['min_bits']['max']:3d}  "
            f"Lipschitz bound {d['lipschitz_product']:.4g}{_certified(case)}"
        )


def _certified(case: dict[str, Any]) -> str:
    cert = case.get("certified")
    if cert is None:
        return ""
    return f"  certified max kappa {cert['kappa']['max']:.4g} ({cert['images']} images)"
