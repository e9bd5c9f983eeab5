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
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Results folder: each finished chunk of images is recorded there, and the same "
        "command again skips the chunks already done",
    ),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option("--scheduler", help="Run the chunks on the dask.distributed scheduler tcp://H:P"),
]
JsonOpt = Annotated[
    str | None,
    typer.Option(
        "--json",
        help="Write the result as JSON to PATH ('-': stdout); per-image statuses and the "
        "witnesses go to PATH.witness.npz",
    ),
]


def _check_output(target: str | None, flag: str) -> None:
    from quantcert.report.output import check_output_path

    check_output_path(target, flag)


def _model_id(model: str) -> str:
    """The store's identity of MODEL: the file's sha256, or the built-in case's name."""
    from quantcert.runs import model_hash

    return model_hash(model) if Path(model).is_file() else f"case:{model}"


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
    store: StoreOpt = None,
    scheduler: SchedulerOpt = None,
) -> None:
    """Certified, measured and float accuracy under a quantization scheme."""
    _check_output(json, "--json")
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
    if store is None and scheduler is None:
        result = run(net, points, images.labels, scheme, calib, progress=_stage_progress())
    else:
        result = _accuracy_units(model, net, points, images.labels, scheme, calib, store, scheduler)
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


def _accuracy_units(
    model: str,
    net: Any,
    points: np.ndarray,
    labels: np.ndarray,
    scheme: Any,
    calib: np.ndarray | None,
    store: str | None,
    scheduler: str | None,
) -> Any:
    """``accuracy`` as resumable chunks (``--store``), possibly on a cluster (``--scheduler``);
    Ctrl-C keeps the finished chunks and says how to go on."""
    from contextlib import ExitStack

    from quantcert.analyses.precision.accuracy_runs import accuracy_units
    from quantcert.runs import Store, executor_for

    model_id = _model_id(model)
    with ExitStack() as stack:
        db = None if store is None else stack.enter_context(Store.open(store))
        executor = stack.enter_context(executor_for(scheduler))
        try:
            return accuracy_units(net, points, labels, scheme, model_id, calib, db, executor)
        except KeyboardInterrupt:
            if store is not None:
                typer.echo(
                    f"interrupted: the finished chunks are recorded in {store}; the same "
                    "command resumes there",
                    err=True,
                )
            raise


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


def _stage_progress() -> Any:
    """A line per finished stage on a terminal's stderr (``report(stage, *counts)``)."""
    import sys
    import time

    start = time.perf_counter()

    def report(stage: str, *counts: int) -> None:
        if sys.stderr.isatty():
            typer.echo(f"  {time.perf_counter() - start:6.1f} s  {stage}", err=True)

    return report


BITWIDTH_HELP = (
    "The fewest bits per tensor kind and per layer that provably meet --target on the data: "
    "the certificate at those bits, what one bit fewer does (a concrete rounding that breaks "
    "the target, or 'unknown'), the measured effect of really quantizing, the empirical "
    "per-layer bits engineers measure today, and a certified mixed assignment."
)


def bitwidth(
    model: ModelArg,
    data: Annotated[
        str | None, typer.Option("--data", help="Images and labels (.npz): targets on data")
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option("--domain", help="LO:HI,... , .vnnlib or .csv: eps<=E over the whole box"),
    ] = None,
    target: Annotated[
        str, typer.Option("--target", help="accuracy-drop<=P% (certified) or noflip")
    ] = "accuracy-drop<=1%",
    family_name: Annotated[str, typer.Option("--family", help="int or float")] = "int",
    granularity: Annotated[
        str, typer.Option("--granularity", help="per-tensor, per-channel or group=G")
    ] = "per-channel",
    kinds: Annotated[
        str,
        typer.Option(
            "--kinds", help="Tensor kinds of the uniform answer: weights,activations,input"
        ),
    ] = "weights,activations",
    limit: LimitOpt = None,
    plot: Annotated[
        str | None,
        typer.Option(
            "--plot", help="Bar chart of the bits per layer (.png), and PLOT.pareto.png beside it"
        ),
    ] = None,
    json: JsonOpt = None,
    store: StoreOpt = None,
    space: Annotated[
        str, typer.Option("--space", help="eps<=E on the output (probabilities) or logits")
    ] = "output",
) -> None:
    """Certified minimum bits per layer, with a witness one bit below."""
    _check_output(json, "--json")
    _check_output(plot, "--plot")
    if (data is None) == (domain is None):
        raise InputError("give exactly one of --data and --domain")
    if domain is not None:
        _eps_bitwidth(model, domain, target, family_name, space, json)
        return
    assert data is not None
    from quantcert.analyses.kappa_data import load_images
    from quantcert.analyses.precision.bitwidth import bitwidth as run
    from quantcert.analyses.precision.bitwidth import family
    from quantcert.analyses.precision.targets import parse_target
    from quantcert.cli_glue import check_on_box, load_model

    goal = parse_target(target)
    fam = family(family_name, granularity)
    chosen = tuple(k.strip() for k in kinds.split(",") if k.strip())
    bad = [k for k in chosen if k not in ("weights", "activations", "input")]
    if bad or not chosen:
        raise InputError(f"--kinds {kinds!r}: use weights, activations and input")
    net = load_model(model, "file")
    images = load_images(data, net.input_shape, limit)
    if images.labels is None and goal.kind == "accuracy-drop":
        raise InputError(f"{data}: no 'labels' array: accuracy-drop needs the true labels")
    points = images.images.numpy()
    labels = images.labels if images.labels is not None else np.zeros(len(points), np.int64)
    check_on_box(net, points.min(0), points.max(0))
    from contextlib import ExitStack

    from quantcert.runs import Store

    model_id = _model_id(model)
    with ExitStack() as stack:
        db = None if store is None else stack.enter_context(Store.open(store))
        try:
            result = run(net, points, labels, goal, fam, chosen, True, _stage_progress(), db,
                         model_id)  # fmt: skip
        except KeyboardInterrupt:
            if store is not None:
                typer.echo(f"interrupted: the judged settings are kept in {store}", err=True)
            raise
    result = {"model": model, "data": data, **result}
    if plot is not None:
        from quantcert.report.bitwidth_plots import plot_layer_bits, plot_pareto

        plot_layer_bits(result, Path(plot))
        pareto = Path(plot).with_suffix(".pareto.png")
        plot_pareto(result, pareto)
        result["plot"], result["pareto_plot"] = plot, str(pareto)
    if json is None:
        typer.echo(_bitwidth_text(result))
        return
    from quantcert.report.output import write_json

    write_json(result, json)


def _eps_bitwidth(
    model: str, domain: str, target: str, family_name: str, space: str, json: str | None
) -> None:
    """``--domain``: the fewest bits (fraction bits for fixed point) for ``eps<=E`` over the
    box, each rung one global epsilon query."""
    from quantcert.analyses.epsilon import input_box
    from quantcert.analyses.precision.eps_bits import eps_bits, parse_eps_target
    from quantcert.cli_glue import check_on_box, load_model
    from quantcert.intake.domain import parse_domain

    goal = parse_eps_target(target)
    if goal is None:
        raise InputError(f"--target {target!r} with --domain: use eps<=E")
    net = load_model(model, "file")
    from quantcert.cli import _case_columns

    lo, hi = parse_domain(domain, int(np.prod(net.input_shape)), _case_columns(model))
    check_on_box(net, lo, hi)
    fam = "fixed" if family_name == "fixed" else family_name
    found = eps_bits(net, input_box(net, lo, hi), goal, fam, space=space)
    r: dict[str, Any] = {"model": model, "domain": domain, **found}
    if json is not None:
        from quantcert.report.output import write_json

        write_json(r, json)
        return
    if r["bits"] is None:
        typer.echo(f"bitwidth {r['target']}: infeasible on the {fam} ladder")
        return
    below = r["below"] or {}
    typer.echo(
        f"bitwidth {r['target']} over {domain}: {r['bits']} {r['bits_meaning']} "
        f"({r['formats']}); certified change [{r['certificate']['lower']:.6g}, "
        f"{r['certificate']['upper']:.6g}], real rounding measured {r['measured']:.6g}; "
        f"one bit fewer: {below.get('status')} (change {below.get('value')})"
    )


def _bits(answer: Any) -> str:
    return "-" if answer.get("bits") is None else str(answer["bits"])


def _bitwidth_text(r: dict[str, Any]) -> str:
    u, i = r["uniform"], r["input"]
    lines = [
        f"bitwidth for {r['target']} on {r['images']} images (float accuracy "
        f"{r['float_accuracy']:.2%}), family {r['family']} {r['granularity']}",
        f"  uniform ({'+'.join(r['kinds'])}): {_bits(u)} bits"
        + (f", one bit fewer: {u['below']['status']}" if "below" in u else f" ({u['status']})"),
        f"  input alone: {_bits(i)} bits",
        "  layer            weights  certified  measured  one bit fewer  empirical  activations",
    ]
    for layer in r["layers"]:
        w = layer["weights"]
        cert = w.get("certificate", {}).get("lower")
        lines.append(
            f"  {layer['name']:<16} {_bits(w):>7}  "
            + (f"{cert:9.2%}" if cert is not None else "        -")
            + f"  {w.get('measured', float('nan')):8.2%}  "
            + f"{w.get('below', {}).get('status', w.get('status', '')):>13}  "
            + f"{layer['weights_empirical_bits'] if layer['weights_empirical_bits'] else '-':>9}  "
            + f"{_bits(layer['activations']):>11}"
        )
    m = r.get("mixed")
    if m is not None:
        if m.get("status") == "verified":
            lines.append(
                f"  mixed: {m['assignment']} ({m['cost']['bytes'] / 1024:.1f} KiB of weights), "
                f"certified {m['certificate']['lower']:.2%}"
            )
        else:
            lines.append(f"  mixed: {m['status']} ({m.get('reason')})")
    lines.append(
        "  certified: the fewest bits whose every rounding provably meets the target; "
        "empirical: the fewest whose real rounding measured meets it (never more)"
    )
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the precision commands to ``app``."""
    app.command(help=ACCURACY_HELP)(accuracy)
    app.command(help=BITWIDTH_HELP)(bitwidth)
