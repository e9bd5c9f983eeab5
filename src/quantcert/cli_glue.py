"""Command-line glue shared by the query commands: loading with the intake checks against
the query's own input box, and the replayable ONNX witness written beside the JSON."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops import QuantNoise

PERTURB_HELP = (
    "file: radii on the initializers the ONNX file stores (BatchNormalization kept, Gemm "
    "alpha/beta carried); folded: on the folded network's parameters"
)
SELF_CHECK_HELP = "Compare the loaded ONNX network with onnxruntime before the query"


def load_model(model: str, perturb: str) -> Network:
    """The model, loaded without the self-check (``check_on_box`` runs it on the query's
    box instead)."""
    from quantcert.intake import load

    if perturb not in ("file", "folded"):
        raise InputError(f"--perturb must be 'file' or 'folded', got {perturb!r}")
    return load(model, perturb, self_check=False)  # type: ignore[arg-type]


def make_perturbation(
    net: Network,
    delta: float | None,
    rel: float | None,
    select: list[str] | None,
    weights: str | None,
    biases: str | None,
    activations: bool = False,
) -> Any:
    """The parameter box of ``--delta``, ``--relative``, or the formats of ``--weights`` and
    ``--biases`` (exactly one kind; none at all when ``activations``: formats on the
    activations or the input stand alone, the parameters stay float)."""
    from quantcert.engines import perturbation

    kinds = (delta is not None) + (rel is not None) + (weights is not None or biases is not None)
    if kinds == 0 and activations:
        if select:
            raise InputError("--select needs --delta or --relative")
        return perturbation.Perturbation({}, {"kind": "formats"})
    if kinds != 1:
        raise InputError(
            "give exactly one of --delta, --relative, or --weights/--biases "
            "(or --activations/--input alone)"
        )
    if delta is not None:
        return perturbation.absolute(net, delta, select)
    if rel is not None:
        return perturbation.relative(net, rel, select)
    if select:
        raise InputError("--select does not combine with --weights/--biases: use a layer map")
    from quantcert.formats import parse_layer_map
    from quantcert.formats.apply import format_perturbation

    w = parse_layer_map(weights) if weights is not None else None
    b = parse_layer_map(biases) if biases is not None else None
    return format_perturbation(net, w, b)


def load_calibration(path: str) -> np.ndarray:
    """``--calibration FILE.npz``: an array ``x`` or ``images`` of inputs (N, ...); uint8
    images are scaled to [0, 1], as everywhere else in the project."""
    import zipfile

    if not Path(path).is_file():
        raise InputError(f"--calibration {path}: file not found")
    if not zipfile.is_zipfile(path):  # else numpy reads it as a pickle and says so
        raise InputError(f"--calibration {path}: not an .npz archive")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"--calibration {path}: cannot read it as .npz ({exc})") from None
    with archive:
        key = next((k for k in ("x", "images") if k in archive.files), None)
        if key is None:
            raise InputError(
                f"--calibration {path}: no 'x' or 'images' array (found: "
                f"{', '.join(archive.files) or 'none'})"
            )
        data = np.asarray(archive[key])
    if data.dtype.kind not in "buif" or data.ndim < 1 or data.shape[0] == 0:
        raise InputError(f"--calibration {path}: '{key}' is not an array of inputs")
    scale = 255.0 if data.dtype == np.uint8 else 1.0
    return data.astype(np.float64) / scale


def add_activation_noise(
    net: Network,
    pert: Any,
    box: Any,
    activations: str | None,
    input_format: str | None,
    calibration: str | None,
) -> tuple[Network, Any]:
    """The network with quantization noise on its activations (``--activations``) and its
    input (``--input``), and the perturbation with the noise radii added."""
    if activations is None and input_format is None:
        if calibration is not None:
            raise InputError("--calibration needs --activations or --input")
        return net, pert
    from quantcert.engines.perturbation import Perturbation, explicit
    from quantcert.formats import parse_format
    from quantcert.formats.activations import describe_sites, quantize_activations

    acts = parse_format(activations) if activations is not None else None
    inp = parse_format(input_format) if input_format is not None else None
    data = load_calibration(calibration) if calibration is not None else None
    qnet, noise = quantize_activations(net, acts, inp, box, data, pert.radius)
    merged = explicit(qnet, {**pert.radius, **noise})
    description = {
        **pert.description,
        "kind": "formats",
        "activations": None if acts is None else acts.describe(),
        "input": None if inp is None else inp.describe(),
        "quantized_tensors": describe_sites(net, acts, inp),
        "scales_from": "calibration" if data is not None else "bounds on the box",
    }
    return qnet, Perturbation(merged.radius, description)


def check_on_box(net: Network, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> None:
    """The load-time self-check at random inputs inside the query's box (ONNX models; no
    box: random inputs of [-1, 1]). A point is checked there and at such random inputs."""
    if net.origin is None:
        return
    import onnx

    from quantcert.intake.self_check import check_against_onnxruntime

    model = onnx.load(net.origin)
    if lo is None or hi is None or np.array_equal(lo, hi):
        check_against_onnxruntime(model, net)
    if lo is not None and hi is not None:
        check_against_onnxruntime(model, net, np.ravel(lo), np.ravel(hi))


def attach_onnx_witness(result: Any, net: Network, json_target: str | None) -> Any:
    """Beside ``--json PATH``, write the witness as the user's own ONNX graph with its
    perturbed initializers (``PATH.witness.onnx`` and ``PATH.witness.input.npz``), replay it
    in onnxruntime, and record both in the result's witness entry."""
    witness = result.overall.witness
    if json_target in (None, "-") or witness is None or not witness.param_offsets:
        return result
    if net.origin is None or not net.sources:
        return result
    if any(isinstance(n.op, QuantNoise) for n in net.nodes):
        note = (
            "the witness moves activation quantization noise, which no initializer holds: "
            "it is stated in the JSON only"
        )
        return dataclasses.replace(result, witness_files={"onnx_note": note})
    import onnx

    from quantcert.report.replay import write_onnx_witness

    out = Path(str(json_target)).with_suffix(".witness.onnx")
    try:
        replay = write_onnx_witness(net, onnx.load(net.origin), witness, out)
    except InputError as exc:
        return dataclasses.replace(result, witness_files={"onnx_note": str(exc)})
    files = {
        "onnx": str(replay.files.model),
        "onnx_input": str(replay.files.input),
        "onnx_replayed_change": replay.change,
        "onnx_stored_exactly": replay.files.exact,
        "onnx_note": "the user's graph with the perturbed initializers; run it with "
        "onnxruntime on the input file. Values are cast to the initializers' dtype"
        + ("" if replay.files.exact else ", which moved the witness slightly"),
    }
    return dataclasses.replace(result, witness_files=files)
