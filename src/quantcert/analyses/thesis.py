"""``quantcert reproduce thesis``: seed 003's experiments (Tables 4.1, 5.1, 5.2, Figs. 4.3,
5.1-5.3, the bound of Eq. 3.8) on the networks shipped with the package.

AlexNet / VGG-19 on ImageNet are not available; the substitutes are the VNN-COMP 2021
networks in ``quantcert/data/models/`` (copied from the benchmark repositories, found
relative to this package): the three ``mnistfc`` MLPs, ERAN's ``mnist_relu_9_200`` and the two
``verivital`` convolutional nets on the MNIST test images (``quantcert/data/mnist_test.npz``),
and the two CIFAR-10 ResNets on the images their VNN-LIB files hold (box centres, already
normalised; a few files are shipped). Beyond the seed: per-layer kappa on a few images, and
certified kappa (``analyses.certified_kappa``) on the first ``CERTIFIED_IMAGES`` images of
each MNIST network.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantcert.analyses.certified_kappa import CertifiedKappa, certified_kappa
from quantcert.analyses.kappa import KappaResult, measure, result_for, stats
from quantcert.analyses.kappa_data import load_images
from quantcert.analyses.layer_kappa import LayerKappaResult, layer_kappa
from quantcert.analyses.lipschitz import lipschitz_bound
from quantcert.analyses.precision.thesis_bits import (
    PRECISION_IMAGES,
    precision_bits,
    precision_table,
)
from quantcert.intake import load
from quantcert.report.kappa_plots import thesis_figures
from quantcert.report.output import write_json

DATA = Path(__file__).resolve().parents[1] / "data"
MODELS = DATA / "models"
MNIST = DATA / "mnist_test.npz"
#: Images per network by default (``--limit`` sets one number for all): the whole MNIST
#: test set for the fully connected nets, 2000 images for the convolutional ones (about ten
#: times slower per image), the 4 shipped VNN-LIB images for the ResNets. About 3.5 minutes
#: on 2 idle CPU cores (2 of them certified kappa); under 15 minutes on a loaded machine.
MLP_LIMIT = 10000
CONV_LIMIT = 2000
#: Images for the per-layer analysis (one DeepFool run per layer).
LAYER_IMAGES = 10
#: Random perturbations per image (the largest kappa is kept).
DRAWS = 10
#: Images per MNIST network for certified kappa (the first ones): CROWN takes 0.1-0.6 s per
#: image on the MLPs, about 2 minutes for 100 images of the six MNIST nets on 2 idle cores.
#: The ResNets are left out (CROWN takes 6-24 s per image there).
CERTIFIED_IMAGES = 100


@dataclass(frozen=True)
class Case:
    name: str
    model: Path
    data: Path
    limit: int | None = MLP_LIMIT
    certified: int = CERTIFIED_IMAGES


CASES = (
    Case("mnist-net_256x2", MODELS / "mnistfc" / "mnist-net_256x2.onnx", MNIST),
    Case("mnist-net_256x4", MODELS / "mnistfc" / "mnist-net_256x4.onnx", MNIST),
    Case("mnist-net_256x6", MODELS / "mnistfc" / "mnist-net_256x6.onnx", MNIST),
    Case("mnist_relu_9_200", MODELS / "eran" / "mnist_relu_9_200.onnx", MNIST),
    Case("Convnet_avgpool", MODELS / "verivital" / "Convnet_avgpool.onnx", MNIST, CONV_LIMIT),
    Case("Convnet_maxpool", MODELS / "verivital" / "Convnet_maxpool.onnx", MNIST, CONV_LIMIT),
    Case(
        "resnet_2b",
        MODELS / "cifar10_resnet" / "resnet_2b.onnx",
        MODELS / "cifar10_resnet" / "resnet2b",
        None,
        0,
    ),
    Case(
        "resnet_4b",
        MODELS / "cifar10_resnet" / "resnet_4b.onnx",
        MODELS / "cifar10_resnet" / "resnet4b",
        None,
        0,
    ),
)


@dataclass(frozen=True)
class CaseResult:
    name: str
    deepfool: KappaResult
    random: KappaResult
    analytic: KappaResult
    layers: LayerKappaResult
    certified: CertifiedKappa | None
    time_s: float


def run_case(case: Case, limit: int | None, progress: bool = True) -> CaseResult:
    """DeepFool, random and analytic kappa, per-layer kappa, and certified kappa on the
    first ``case.certified`` images, for one network."""
    start = time.perf_counter()
    net = load(case.model)
    data = load_images(case.data, net.input_shape, limit)
    bound = lipschitz_bound(net)
    m = measure(net, data.images, DRAWS, 0, progress)
    elapsed = time.perf_counter() - start
    results = {
        method: result_for(
            net,
            method,
            None if method == "analytic" else m,
            data.images,
            data.labels,
            bound,
            elapsed,
            DRAWS,
        )
        for method in ("deepfool", "random", "analytic")
    }
    layers = layer_kappa(net, data.images[:LAYER_IMAGES], DRAWS, bound=bound)
    n = case.certified
    cert = (
        certified_kappa(net, data.images[:n], m.dx_norm[:n], lipschitz=bound.product)
        if n > 0
        else None
    )
    return CaseResult(
        case.name,
        results["deepfool"],
        results["random"],
        results["analytic"],
        layers,
        cert,
        time.perf_counter() - start,
    )


# ----------------------------------------------------------------------------- tables
def _g(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.4g}"


def kappa_table(results: list[KappaResult]) -> str:
    """Table 5.1 / 5.2: kappa, digits and bits (Eq. 5.1) of the mean, median, max, min."""
    head = (
        "| network | images | flipped | "
        + " | ".join(f"{s} kappa | digits | bits" for s in ("mean", "median", "max", "min"))
        + " |"
    )
    rows = [head, "|" + "---|" * 15]
    for r in results:
        s = r.summary()
        cells = [
            f"{_g(s['kappa'][k])} | {s['digits'][k]:.2f} | {s['min_bits'][k]}"
            for k in ("mean", "median", "max", "min")
        ]
        head = f"| {r.model} | {r.images} | {int(r.flipped.sum())} | "
        rows.append(head + " | ".join(cells) + " |")
    return "\n".join(rows)


def perturbation_table(results: list[KappaResult]) -> str:
    """Table 4.1: statistics of ``|dx| / |x|`` over the images DeepFool flipped."""
    rows = ["| network | mean | median | maximum | minimum |", "|---|---|---|---|---|"]
    for r in results:
        p = r.to_dict()["relative_perturbation"]
        rows.append(
            f"| {r.model} | {p['mean']:.3e} | {p['median']:.3e} | {p['max']:.3e} | {p['min']:.3e} |"
        )
    return "\n".join(rows)


def bound_table(cases: list[CaseResult]) -> str:
    """Measured max gains next to the analytic bounds (Eq. 3.8 and the product)."""
    rows = [
        "| network | max gain DeepFool | max gain random | Lipschitz product (sound) | "
        "Eq. 3.8 as printed | product of estimates | bound holds | analytic max kappa | bits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        b = c.deepfool.bound
        g_df = c.deepfool.to_dict()["gain"]["max"]
        g_r = c.random.to_dict()["gain"]["max"]
        holds = max(g_df, g_r) <= b.product
        kmax = c.analytic.summary()["kappa"]["max"]
        rows.append(
            f"| {c.name} | {_g(g_df)} | {_g(g_r)} | {_g(b.product)} | {_g(b.eq_3_8)} | "
            f"{_g(b.product_estimate)} | {'yes' if holds else 'NO'} | {_g(kmax)} | "
            f"{c.analytic.summary()['min_bits']['max']} |"
        )
    return "\n".join(rows)


def certified_table(cases: list[CaseResult]) -> str:
    """Measured (DeepFool) and ascent kappa (attained: lower bounds on the worst kappa in each
    ball ``|dx| <= |DeepFool dx|``) next to certified kappa (a sound upper bound on it)."""
    rows = [
        "| network | images | engine | measured kappa median / max | ascent kappa median | "
        "certified kappa median / max | bits (certified max) | certified / measured median "
        "| measured <= certified | s per image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        cert = c.certified
        if cert is None:
            continue
        measured = c.deepfool.kappa[: cert.images]
        d, k = cert.to_dict(measured), stats(measured)
        ok = "yes" if d["measured_le_certified"] else f"NO ({d['violations']})"
        rows.append(
            f"| {c.name} | {cert.images} | {cert.engine} | {_g(k['median'])} / {_g(k['max'])} | "
            f"{_g(d['ascent_kappa']['median'])} | "
            f"{_g(d['kappa']['median'])} / {_g(d['kappa']['max'])} | {d['min_bits']['max']} | "
            f"{_g(d['ratio']['median'])} | {ok} | {d['time_per_image_s']:.3g} |"
        )
    return "\n".join(rows)


NOTES = """\
## Notes

- kappa = (|dy|/|y|)/(|dx|/|x|) with y the logits (the network's output before any softmax;
  ERAN's `mnist_relu_9_200` ends with a ReLU, which is part of its output) and L2 norms over
  the whole vectors; per image the largest kappa of the perturbations tried.
- DeepFool: multi-class L2, overshoot 0.02, at most 50 steps, all 10 classes, no clipping to
  the pixel range (Eq. 4.1 has no domain constraint), the clean prediction as the label.
  Kappa statistics include images DeepFool did not flip (their perturbation is still a
  measured one); Table 4.1 uses the flipped images only.
- The `mnistfc` MLPs output near one-hot scores (about 1 for the predicted class, about 0
  elsewhere): the network is flat around most images, DeepFool's linear steps land in
  saturated regions, and its unclipped perturbations are often larger than the image
  (Table 4.1). foolbox's DeepFool finds the same perturbations (`docs/benchmarks.md`).
- Random: 10 Gaussian directions per image scaled to that image's DeepFool norm.
- Bits: Eq. 5.1, ceil(log2 kappa) + 1 (at least 1); digits: log10 kappa.
- The Lipschitz product (sound bound on |dy|/|dx| for one input perturbation) multiplies
  per-layer L2 operator norms along the DAG (residual sums add their branches); Eq. 3.8 as
  printed sums the products of the last i layer norms (one term per layer input where
  rounding enters) and is therefore never below the product. Analytic kappa per image is
  product * |x| / |y|, a sound upper bound over every perturbation of that image.
- Measured kappa is a lower bound on the worst case (attained, witness in the JSON).
- Certified kappa (beyond the seed): per image, a sound upper bound on max |dy| over every
  |dx| <= r, r = |DeepFool dx| of that image, so measured <= certified image by image. The
  bound is the smaller of CROWN with an L2-ball input (every linear bound concretised as
  A.x0 + r |A|_2, intermediate layers included) and the Lipschitz product times r; where
  CROWN would need more than 1 GiB per image (the convolutional nets' first layer)
  intervals over the box x0 +- r stand in for it (and lose to the Lipschitz bound). The
  ascent column is gradient ascent on |dy| in the same ball (an attained lower bound). At
  DeepFool's radii (often larger than the image, see above) the relaxation is loose on the
  deeper MLPs, so the certified bits are far above the measured ones: the truth lies between.
"""


def _markdown(cases: list[CaseResult], settings: dict[str, Any]) -> str:
    parts = [
        "# Seed 003 reproduced: minimum input bit-width from the condition number kappa",
        "",
        *(
            ["**Interrupted: only the networks below were finished.**", ""]
            if settings.get("interrupted")
            else []
        ),
        f"Run: images per network as in the `images` column (defaults: {MLP_LIMIT} "
        f"MNIST test images for the fully connected nets, {CONV_LIMIT} for the convolutional "
        "ones, the shipped VNN-LIB images for the ResNets: about 3.5 minutes on 2 idle cores, "
        f"under 15 minutes on a loaded machine; `--limit N` sets N for all), "
        f"{settings['layer_images']} images for the per-layer analysis, "
        f"{settings['draws']} random draws per image; {settings['time_s']:.0f} s in total on "
        f"{settings['machine']}.",
        "",
        "## Table 4.1: relative DeepFool perturbations |dx|/|x|",
        "",
        perturbation_table([c.deepfool for c in cases]),
        "",
        "## Table 5.1: precision from DeepFool perturbations",
        "",
        kappa_table([c.deepfool for c in cases]),
        "",
        "## Table 5.2: precision from random perturbations",
        "",
        kappa_table([c.random for c in cases]),
        "",
        "## Eq. 3.8: analytic bounds vs measured gains |dy|/|dx|",
        "",
        bound_table(cases),
        "",
        "## Figures",
        "",
    ]
    parts += [f"![{k}]({Path(v).name})" for k, v in settings["figures"].items()]
    parts += [
        "",
        "## Certified kappa (beyond the seed)",
        "",
        f"The first {CERTIFIED_IMAGES} images of each MNIST network (fewer where fewer ran); "
        "the ResNets are left out (CROWN takes 6-24 s per image on them).",
        "",
        certified_table(cases),
    ]
    parts += ["", "## Certified bits beside Table 5.1 (beyond the seed)", "", PRECISION_NOTE]
    parts += ["", settings["precision_table"]]
    parts += ["", "## Per-layer kappa (beyond the seed)", ""]
    for c in cases:
        parts += [f"### {c.name} ({c.layers.images} images)", "", c.layers.to_markdown(), ""]
    parts += [NOTES]
    return "\n".join(parts)


def _case_json(c: CaseResult) -> dict[str, Any]:
    """The case's results without the per-image arrays (those go to ``per_image.npz``)."""
    out: dict[str, Any] = {"images": c.deepfool.images, "time_s": c.time_s}
    for key, r in (("deepfool", c.deepfool), ("random", c.random), ("analytic", c.analytic)):
        d = r.to_dict()
        del d["per_image"]
        out[key] = d
    out["layers"] = c.layers.to_dict()
    if c.certified is not None:
        out["certified"] = c.certified.to_dict(c.deepfool.kappa[: c.certified.images])
    return out


def _tables(cases: list[CaseResult]) -> dict[str, Any]:
    """Tables 4.1, 5.1, 5.2 and the Eq. 3.8 comparison, per network, as JSON."""

    def bounds(c: CaseResult) -> dict[str, Any]:
        b = c.deepfool.bound
        return {
            "max_gain_deepfool": c.deepfool.to_dict()["gain"]["max"],
            "max_gain_random": c.random.to_dict()["gain"]["max"],
            "lipschitz_product": b.product,
            "eq_3_8": b.eq_3_8,
            "lipschitz_product_estimate": b.product_estimate,
            "analytic_kappa_max": c.analytic.summary()["kappa"]["max"],
        }

    return {
        "table_4_1": {c.name: c.deepfool.to_dict()["relative_perturbation"] for c in cases},
        "table_5_1": {c.name: c.deepfool.summary() for c in cases},
        "table_5_2": {c.name: c.random.summary() for c in cases},
        "eq_3_8": {c.name: bounds(c) for c in cases},
        "certified": {
            c.name: _certified_json(c.certified, c.deepfool) for c in cases if c.certified
        },
    }


def _certified_json(cert: CertifiedKappa, measured: KappaResult) -> dict[str, Any]:
    d = cert.to_dict(measured.kappa[: cert.images])
    keys = ("images", "engine", "kappa", "min_bits", "ascent_kappa", "ratio", "violations")
    return {k: d[k] for k in keys}


def _per_image(cases: list[CaseResult], path: Path) -> Path:
    arrays: dict[str, np.ndarray] = {}
    for c in cases:
        arrays[f"{c.name}/kappa_deepfool"] = c.deepfool.kappa
        arrays[f"{c.name}/kappa_random"] = c.random.kappa
        arrays[f"{c.name}/kappa_analytic"] = c.analytic.kappa
        arrays[f"{c.name}/relative_perturbation"] = c.deepfool.relative_perturbation
        arrays[f"{c.name}/flipped"] = c.deepfool.flipped
        if c.certified is not None:
            arrays[f"{c.name}/kappa_certified"] = c.certified.kappa
            arrays[f"{c.name}/kappa_ascent"] = c.certified.ascent_kappa
    save: Any = np.savez_compressed  # numpy's stub does not type ``**arrays``
    save(path, **arrays)
    return path


def _run_cases(
    chosen: tuple[Case, ...], limit: int | None, progress: bool
) -> tuple[list[CaseResult], bool]:
    """Run the cases in turn; Ctrl-C keeps the networks already finished (the report then
    says it was interrupted) instead of losing them."""
    results: list[CaseResult] = []
    try:
        for case in chosen:
            results.append(run_case(case, case.limit if limit is None else limit, progress))
    except KeyboardInterrupt:
        print(f"interrupted: writing the {len(results)} finished network(s)", file=sys.stderr)
        return results, True
    return results, False


PRECISION_NOTE = (
    f"`quantcert bitwidth --target noflip` on the first {PRECISION_IMAGES} images of each "
    "MNIST network: the fewest bits with which no image changes its label, for the input "
    "alone (uint, asymmetric), uniformly, and per layer for its weights (int, per channel, "
    "certified for every rounding within half a step) and its input activations. Kappa bits "
    "(Eq. 5.1) are DeepFool's estimate of the input precision."
)


def _precision(results: list[CaseResult], chosen: tuple[Case, ...]) -> tuple[dict[str, Any], bool]:
    """The certified bits of the MNIST networks; Ctrl-C keeps the networks finished."""
    out: dict[str, Any] = {}
    by_name = {c.name: c for c in chosen}
    try:
        for r in results:
            case = by_name[r.name]
            if case.data == MNIST:
                n = min(PRECISION_IMAGES, r.deepfool.images)
                out[r.name] = precision_bits(case.model, case.data, n)
    except KeyboardInterrupt:
        print(f"interrupted: {len(out)} network(s) with certified bits", file=sys.stderr)
        return out, True
    return out, False


def reproduce_thesis(
    out_dir: Path,
    limit: int | None = None,
    progress: bool = True,
    cases: tuple[Case, ...] | None = None,
) -> dict[str, Any]:
    """Run every case; write ``report.md``, ``report.json`` and the figures into ``out_dir``.
    ``limit``: images per network (default: each case's own). Returns the JSON document."""
    start = time.perf_counter()
    chosen = CASES if cases is None else cases
    results, interrupted = _run_cases(chosen, limit, progress)
    if not results:
        raise KeyboardInterrupt
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = thesis_figures(
        {c.name: c.deepfool.kappa for c in results},
        {c.name: c.random.kappa for c in results},
        {c.name: c.deepfool.relative_perturbation for c in results},
        out_dir,
    )
    settings: dict[str, Any] = {
        "images_per_network": {c.name: c.deepfool.images for c in results},
        "per_image": str(_per_image(results, out_dir / "per_image.npz")),
        "layer_images": LAYER_IMAGES,
        "draws": DRAWS,
        "certified_images": CERTIFIED_IMAGES,
        "figures": {k: str(v) for k, v in figures.items()},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "interrupted": interrupted,
    }
    precision, stopped = _precision(results, chosen)
    settings["interrupted"] = interrupted or stopped
    settings["precision_table"] = precision_table(
        {c.name: c.deepfool.summary()["min_bits"] for c in results}, precision
    )
    settings["time_s"] = time.perf_counter() - start
    doc = {
        "settings": settings,
        "tables": {**_tables(results), "certified_bits": precision},
        "networks": {c.name: _case_json(c) for c in results},
    }
    (out_dir / "report.md").write_text(_markdown(results, settings))
    write_json(doc, str(out_dir / "report.json"))
    return doc
