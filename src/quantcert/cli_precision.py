"""Command-line glue of the precision questions: ``quantcert accuracy`` and ``quantcert
bitwidth`` (registered on the main app by ``register``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from quantcert.errors import InputError

ACCURACY_HELP = (
    "Certified accuracy on a data set when the weights, biases, activations or input are "
    "quantized to the given formats: per image, 'verified' (no rounding the formats allow "
    "changes the label), 'falsified' (a concrete rounding does, witness stored) or 'unknown'; "
    "with the measured accuracy of the model really quantized and the float accuracy."
)

ModelArg = Annotated[str, typer.Argument(help="The network: a .onnx or .pt file, or a case")]
DataOpt = Annotated[
    str, typer.Option("--data", help="Images and labels (.npz with 'images' and 'labels')")
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights", help="Format of the weights, e.g. int8:per-channel, or conv1=int4,*=int8"
    ),
]
BiasesOpt = Annotated[str | None, typer.Option("--biases", help="Format of the biases")]
ActsOpt = Annotated[
    str | None,
    typer.Option("--activations", help="Format of the layers' inputs, e.g. uint8:asym"),
]
InputOpt = Annotated[str | None, typer.Option("--input", help="Format of the network input")]
CalibOpt = Annotated[
    str | None,
    typer.Option(
        "--calibration",
        help="Calibration inputs (.npz 'x' or 'images') for the activation scales; default: "
        "the --data images",
    ),
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Use the first N images only")]
JsonOpt = Annotated[
    str | None,
    typer.Option(
        "--json",
        help="Write the result as JSON to PATH ('-': stdout); per-image statuses and the "
        "witnesses go to PATH.witness.npz",
    ),
]


def _check_output(json_target: str | None) -> None:
    if json_target not in (None, "-"):
        from quantcert.report.output import check_output_path

        check_output_path(json_target, "--json")


def accuracy(
    model: ModelArg,
    data: DataOpt,
    weights: WeightsOpt = None,
    biases: BiasesOpt = None,
    activations: ActsOpt = None,
    input_format: InputOpt = None,
    calibration: CalibOpt = None,
    limit: LimitOpt = None,
    json: JsonOpt = None,
) -> None:
    """Certified, measured and float accuracy under a quantization scheme."""
    _check_output(json)
    from quantcert.analyses.kappa_data import load_images
    from quantcert.analyses.precision import Scheme
    from quantcert.analyses.precision import accuracy as run
    from quantcert.cli_glue import check_on_box, load_calibration, load_model

    scheme = Scheme.parse(weights, biases, activations, input_format)
    net = load_model(model, "file")
    images = load_images(data, net.input_shape, limit)
    if images.labels is None:
        raise InputError(f"{data}: no 'labels' array: accuracy needs the true labels")
    points = images.images.numpy()
    check_on_box(net, points.min(0), points.max(0))
    calib = load_calibration(calibration) if calibration is not None else None
    result = run(net, points, images.labels, scheme, calib, progress=_progress())
    summary = {"query": "accuracy", "model": model, "data": data, **result.summary()}
    if json is None:
        typer.echo(_accuracy_text(summary))
        return
    from quantcert.report.output import write_json

    if json != "-":
        witness = Path(json).with_suffix(".witness.npz")
        write_accuracy_witness(result, witness)
        summary["witness_file"] = str(witness)
    write_json(summary, json)


def write_accuracy_witness(result: Any, path: Path) -> None:
    """Per image: status, how falsified, certified margin, labels; the attack witnesses'
    parameter offsets as ``offset/<tensor>`` (n_attack, *shape), in ``attack_images`` order."""
    from quantcert.report.output import write_npz

    arrays: dict[str, np.ndarray] = {
        "status": result.status,
        "falsified_by": result.by,
        "margin": result.margin,
        "labels": result.labels,
        "float_pred": result.float_pred,
        "measured_pred": result.measured_pred,
        "attack_images": result.attack_images,
    }
    arrays.update({f"offset/{k}": v for k, v in result.attack_offsets.items()})
    write_npz(path, **arrays)


def _accuracy_text(s: dict[str, Any]) -> str:
    c, by = s["counts"], s["falsified_by"]
    lines = [
        f"accuracy on {s['images']} images of {s['data']}",
        f"  float accuracy        {s['float_accuracy']:.2%}",
        f"  measured (quantized)  {s['measured_accuracy']:.2%}",
        f"  certified (lower)     {s['certified_accuracy']:.2%}   verified {c['verified']}",
        f"  worst case (upper)    {s['worst_case_accuracy']:.2%}   falsified {c['falsified']} "
        f"(float {by['float']}, real rounding {by['rounding']}, attack {by['attack']})",
        f"  unknown               {c['unknown']}"
        + (f"   ({s['unknown_reason']})" if c["unknown"] else ""),
        "  certified: no rounding the formats allow changes these labels; worst case: the "
        "images no concrete rounding misclassifies",
    ]
    return "\n".join(lines)


def _progress() -> Any:
    import sys
    import time

    start = time.perf_counter()

    def report(stage: str, done: int, total: int) -> None:
        if sys.stderr.isatty():
            typer.echo(f"  {time.perf_counter() - start:6.1f} s  {stage}", err=True)

    return report


def register(app: typer.Typer) -> None:
    """Add the precision commands to ``app``."""
    app.command(help=ACCURACY_HELP)(accuracy)
