"""Command line: ``quantcert COMMAND ...``. Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from quantcert.cli_glue import PERTURB_HELP, SELF_CHECK_HELP, attach_onnx_witness
from quantcert.cli_precision import register as register_precision
from quantcert.errors import InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Certified robustness of neural networks to lower precision.",
)

ModelArg = Annotated[
    str,
    typer.Argument(
        help="The network: a .onnx, .pt (saved PyTorch module) or .joblib (scikit-learn) "
        "file, or a built-in case: cat, ath-relu, ath-linear"
    ),
]
JsonOpt = Annotated[
    str | None,
    typer.Option(
        "--json",
        help="Also write the result as JSON to PATH ('-': to stdout, instead of the table); "
        "the path is checked before any work",
    ),
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("quantcert")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"quantcert {_version()}")
        raise typer.Exit()


@app.callback()
def _app(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the quantcert version and exit",
        ),
    ] = None,
) -> None:
    """Certified robustness of neural networks to lower precision."""


def check_output(json_target: str | None) -> None:
    """Refuse an unwritable ``--json`` path before any work (one line, exit 2)."""
    from quantcert.report.output import check_output_path

    check_output_path(json_target, "--json")


def emit(result: Any, json_target: str | None) -> None:
    """Print a result's table, or write its JSON (``result`` has to_text/to_dict)."""
    from quantcert.report.output import write_json

    check_output(json_target)
    if json_target is None:
        typer.echo(result.to_text())
    else:
        write_json(result.to_dict(), json_target)
        if json_target != "-":
            typer.echo(result.to_text())


@app.command(
    help="What quantcert sees in MODEL: input shape, layers, the tensors --delta moves.\n\n"
    "Each layer with its output shape, and every parameter tensor a perturbation moves, with "
    "its size and value range (the names --select takes)."
)
def info(
    model: ModelArg,
    perturb: PerturbOpt = "file",
    self_check: SelfCheckOpt = True,
    json: JsonOpt = None,
) -> None:
    """What quantcert sees in MODEL: input shape, layers, the tensors --delta moves."""
    from quantcert.analyses.info import describe
    from quantcert.cli_glue import check_on_box, load_model

    check_output(json)
    net = load_model(model, perturb)
    if self_check:
        check_on_box(net)
    emit(describe(net), json)


DeltaOpt = Annotated[
    float | None,
    typer.Option(
        "--delta",
        help="How far each weight and bias may move, in its own units: |theta - theta0| <= D "
        "(rounding to a step q moves it by at most q/2)",
    ),
]
RelOpt = Annotated[
    float | None,
    typer.Option(
        "--relative",
        help="How far each weight and bias may move, as a fraction of its size: "
        "|theta - theta0| <= R |theta0| (floating-point rounding to p bits: R = 2**-p)",
    ),
]
SelectOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--select",
        help="Perturb only this tensor or layer (names as `quantcert info` lists them); "
        "repeat for several; the others stay fixed",
    ),
]
AtOpt = Annotated[
    str | None,
    typer.Option(
        "--at",
        help="Ask at one input: X1,X2,..., a .npy file (uint8 values are divided by 255, as "
        "kappa --data does) or a .vnnlib file (its box centre)",
    ),
]
DomainOpt = Annotated[
    str | None,
    typer.Option(
        "--domain",
        help="Ask over every input in a box: LO:HI per input (one LO:HI: the same for all), "
        "a .vnnlib file, or a .csv (the bounding box of its numeric columns)",
    ),
]
GapOpt = Annotated[
    float,
    typer.Option(
        "--gap",
        help="Stop when the certified upper bound and the lower bound a witness attains are "
        "GAP apart (status optimal)",
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Time budget in seconds; when it ends the bounds so far are the answer "
        "(status bounded)",
    ),
]
MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="How bounds are computed: crown (linear bounds), alpha (CROWN with optimised "
        "ReLU slopes: tighter, slower) or ibp (intervals: fastest, loosest)",
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (a GPU for nets of 100k+ parameters), cpu, cuda")
]
LevelOpt = Annotated[
    float | None,
    typer.Option(
        help="Decision level: default 0 on a raw score, 0.5 after a sigmoid (several classes: "
        "argmax); every engine uses it, and the JSON spec echoes it"
    ),
]
MemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--memory-budget",
        help="Memory for the query, bytes or with a suffix (512M, 4G); default half the "
        "machine's. A search that would pass it stops with the bounds so far (bounded)",
    ),
]

_SUFFIXES = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(text: str | None) -> int | None:
    """``--memory-budget``: bytes, or a number with K, M, G or T (binary units, an optional
    trailing B or iB); ``None`` keeps the default (half the machine)."""
    if text is None:
        return None
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, suffix = (raw[:-1], raw[-1]) if raw and raw[-1] in _SUFFIXES else (raw, "")
    try:
        value = float(number) * _SUFFIXES[suffix]
    except ValueError:
        raise InputError(
            f"--memory-budget must be bytes or a size like 512M or 4G, got {text!r}"
        ) from None
    if not value >= 1 or value == float("inf"):
        raise InputError(f"--memory-budget must be a positive size, got {text!r}")
    return int(value)


WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="Quantize the weights of Gemm/MatMul/Conv to a format (int8, int4:per-channel, "
        "int4:group=128, fp8-e4m3, mxfp4, ...), or per layer: conv1=int4:group=32,*=int8",
    ),
]
BiasesOpt = Annotated[
    str | None, typer.Option("--biases", help="Quantize the biases to a format (as --weights)")
]
PerturbOpt = Annotated[str, typer.Option("--perturb", help=PERTURB_HELP)]
ActivationsOpt = Annotated[
    str | None,
    typer.Option(
        "--activations",
        help="Quantize the inputs of every Gemm/MatMul/Conv (as onnxruntime's QDQ does) to a "
        "format: uint8 (asymmetric, per tensor), int8, fp8-e4m3, qM.N, ...",
    ),
]
InputFmtOpt = Annotated[
    str | None, typer.Option("--input", help="Quantize the network input to a format")
]
CalibrationOpt = Annotated[
    str | None,
    typer.Option(
        "--calibration",
        help="Inputs (.npz with 'x' or 'images') whose min/max give the integer activation "
        "scales, as onnxruntime's MinMax calibrator; default: bounds over the domain",
    ),
]
SelfCheckOpt = Annotated[bool, typer.Option("--self-check/--no-self-check", help=SELF_CHECK_HELP)]
EngineOpt = Annotated[
    str, typer.Option("--engine", help="quantcert (bounds + B&B) or exact (SCIP, small nets)")
]


EPSILON_HELP = (
    "How far can the outputs move when every weight and bias moves within the box?\n\n"
    "The largest change |f_theta(x) - f_theta0(x)| of each output, at the point --at "
    "or over the box --domain: a certified upper bound, a lower bound that a stored "
    "witness attains, and a status (seed 000, Defs. 1-2). The box: --delta, "
    "--relative, or the formats of --weights/--biases (and --activations/--input)."
)
FLIP_HELP = (
    "Can moving the weights within the box change the decision?\n\n"
    "Whether some parameters in the box change the label (or cross --level) at --at "
    "or anywhere in --domain: verified (no flip is possible), falsified (a witness "
    "flips it), or unknown with a reason (seed 000, Defs. 3-4)."
)
SIGMA_HELP = (
    "How close to the decision level can an input be and still flip?\n\n"
    "Over --domain, for each side of the level, the largest distance of the nominal "
    "output from the level at which some parameters within --delta/--relative still "
    "flip the decision; inputs farther away keep their label (seed 000, Def. 5)."
)


def _query_setup(
    model: str,
    delta: float | None,
    rel: float | None,
    select: list[str] | None,
    at: str | None,
    domain: str | None,
    perturb: str = "file",
    self_check: bool = True,
    weights: str | None = None,
    biases: str | None = None,
    activations: str | None = None,
    input_format: str | None = None,
    calibration: str | None = None,
) -> tuple[Any, Any, Any]:
    from quantcert.analyses.epsilon import input_box
    from quantcert.cli_glue import (
        add_activation_noise,
        check_on_box,
        load_model,
        make_perturbation,
    )
    from quantcert.intake.domain import parse_domain, parse_point

    net = load_model(model, perturb)
    noisy = activations is not None or input_format is not None
    pert = make_perturbation(net, delta, rel, select, weights, biases, noisy)
    if (at is None) == (domain is None):
        raise InputError("give exactly one of --at (a point) and --domain (a box)")
    n_inputs = 1
    for d in net.input_shape:
        n_inputs *= d
    if at is not None:
        x = parse_point(at, n_inputs)
        box = input_box(net, x, x)
    else:
        lo, hi = parse_domain(domain or "", n_inputs, csv_columns=_case_columns(model))
        box = input_box(net, lo, hi)
    if self_check:
        check_on_box(net, box.lo.numpy(), box.hi.numpy())
    net, pert = add_activation_noise(net, pert, box, activations, input_format, calibration)
    return net, pert, box


def _case_columns(model: str) -> tuple[str, ...] | None:
    """A built-in case's CSV columns in model input order (for ``--domain FILE.csv``)."""
    from quantcert.intake import BUILTIN_CASES

    if model not in BUILTIN_CASES:
        return None
    from quantcert.cases.builtin import case_info

    return case_info(model).columns


def _engine(name: str) -> str:
    if name not in ("quantcert", "exact"):
        raise InputError(f"--engine must be quantcert or exact, got {name!r}")
    return name


def _budget(
    gap: float, timeout: float, method: str, device: str = "auto", memory: str | None = None
) -> Any:
    from quantcert.analyses.epsilon import Budget
    from quantcert.engines.device import pick_device

    pick_device(device, 0)  # a bad --device fails here, before any work
    if method not in ("crown", "alpha", "ibp"):
        raise InputError(f"--method must be crown, alpha or ibp, got {method!r}")
    if not gap >= 0 or not timeout > 0:
        raise InputError("--gap must be >= 0 and --timeout > 0")
    from quantcert.report.progress import BoundsProgress

    limit = parse_memory(memory)
    progress = BoundsProgress("branch and bound")
    return Budget(
        gap=gap,
        timeout=timeout,
        method=method,  # type: ignore[arg-type]
        progress=progress,
        device=device,
        memory=limit,
    )


def _emit_query(result: Any, json_target: str | None, budget: Any = None, net: Any = None) -> None:
    """Write a query result; a large witness goes to an .npz beside the JSON, and for an
    ONNX model the witness is also written as a replayable ONNX model."""
    if budget is not None and budget.progress is not None:
        budget.progress.close()
    import dataclasses

    import numpy as np

    witness = result.overall.witness
    if json_target not in (None, "-") and witness is not None:
        from quantcert.report.output import write_npz

        path = Path(str(json_target)).with_suffix(".witness.npz")
        offsets = {k.replace("/", "_"): np.asarray(v) for k, v in witness.param_offsets.items()}
        write_npz(path, x=np.asarray(witness.x), **offsets)
        result = dataclasses.replace(result, params_file=str(path))
        if len(result.per_output) > 1:  # each output's witness in its own file
            files: list[str | None] = []
            for k, cert in enumerate(result.per_output):
                w = cert.witness
                if w is None:
                    files.append(None)
                    continue
                one = Path(str(json_target)).with_suffix(f".witness.output{k}.npz")
                parts = {n.replace("/", "_"): np.asarray(v) for n, v in w.param_offsets.items()}
                write_npz(one, x=np.asarray(w.x), **parts)
                files.append(str(one))
            result = dataclasses.replace(result, per_output_files=tuple(files))
    stopped = "code" in _STOPPED_BY or (result.overall.reason or "").startswith("interrupted")
    if stopped:
        result = dataclasses.replace(result, spec={**result.spec, "interrupted": True})
    if net is not None:
        result = attach_onnx_witness(result, net, json_target)
    emit(result, json_target)
    if stopped:
        typer.echo("quantcert: interrupted: the bounds above are those reached so far", err=True)
        sys.exit(_STOPPED_BY.get("code", 130))


@app.command(help=EPSILON_HELP)
def epsilon(
    model: ModelArg,
    delta: DeltaOpt = None,
    relative: RelOpt = None,
    weights: WeightsOpt = None,
    biases: BiasesOpt = None,
    activations: ActivationsOpt = None,
    input_format: InputFmtOpt = None,
    calibration: CalibrationOpt = None,
    select: SelectOpt = None,
    at: AtOpt = None,
    domain: DomainOpt = None,
    gap: GapOpt = 1e-4,
    timeout: TimeoutOpt = 60.0,
    method: MethodOpt = "crown",
    engine: EngineOpt = "quantcert",
    device: DeviceOpt = "auto",
    memory_budget: MemoryOpt = None,
    perturb: PerturbOpt = "file",
    self_check: SelfCheckOpt = True,
    json: JsonOpt = None,
) -> None:
    """How far can the outputs move when every weight and bias moves within the box?"""
    check_output(json)
    net, pert, box = _query_setup(
        model,
        delta,
        relative,
        select,
        at,
        domain,
        perturb,
        self_check,
        weights,
        biases,
        activations,
        input_format,
        calibration,
    )
    budget = _budget(gap, timeout, method, device, memory_budget)
    if _engine(engine) == "exact":
        from quantcert.analyses.exact_queries import epsilon_exact

        _emit_query(epsilon_exact(net, pert, box, budget), json, budget, net)
        return
    from quantcert.analyses.epsilon import epsilon as run

    _emit_query(run(net, pert, box, budget), json, budget, net)


@app.command(help=FLIP_HELP)
def flip(
    model: ModelArg,
    delta: DeltaOpt = None,
    relative: RelOpt = None,
    weights: WeightsOpt = None,
    biases: BiasesOpt = None,
    activations: ActivationsOpt = None,
    input_format: InputFmtOpt = None,
    calibration: CalibrationOpt = None,
    select: SelectOpt = None,
    at: AtOpt = None,
    domain: DomainOpt = None,
    timeout: TimeoutOpt = 60.0,
    method: MethodOpt = "crown",
    level: LevelOpt = None,
    engine: EngineOpt = "quantcert",
    device: DeviceOpt = "auto",
    memory_budget: MemoryOpt = None,
    perturb: PerturbOpt = "file",
    self_check: SelfCheckOpt = True,
    json: JsonOpt = None,
) -> None:
    """Can moving the weights within the box change the decision?"""
    check_output(json)
    net, pert, box = _query_setup(
        model,
        delta,
        relative,
        select,
        at,
        domain,
        perturb,
        self_check,
        weights,
        biases,
        activations,
        input_format,
        calibration,
    )
    budget = _budget(0.0, timeout, method, device, memory_budget)
    if _engine(engine) == "exact":
        from quantcert.analyses.exact_queries import flip_exact

        _emit_query(flip_exact(net, pert, box, budget, level), json, budget, net)
        return
    from quantcert.analyses.flip import flip as run

    _emit_query(run(net, pert, box, budget, level), json, budget, net)


@app.command(help=SIGMA_HELP)
def sigma(
    model: ModelArg,
    domain: Annotated[str, typer.Option("--domain", help="A box: LO:HI,... | .vnnlib | .csv")],
    delta: DeltaOpt = None,
    relative: RelOpt = None,
    weights: WeightsOpt = None,
    biases: BiasesOpt = None,
    activations: ActivationsOpt = None,
    input_format: InputFmtOpt = None,
    calibration: CalibrationOpt = None,
    level: LevelOpt = None,
    gap: GapOpt = 1e-4,
    timeout: TimeoutOpt = 60.0,
    engine: EngineOpt = "quantcert",
    memory_budget: MemoryOpt = None,
    json: JsonOpt = None,
) -> None:
    """How close to the decision level can an input be and still flip?"""
    check_output(json)
    limit = parse_memory(memory_budget)
    formats = (weights, biases, activations, input_format, calibration)
    if all(f is None for f in formats):
        from quantcert.analyses.paper_cli import sigma_command

        sigma_command(
            model, delta, relative, domain, level, gap, timeout, _engine(engine), json, limit
        )
        return
    from quantcert.analyses.epsilon import Budget
    from quantcert.analyses.sigma import sigma_run

    net, pert, box = _query_setup(
        model, delta, relative, None, None, domain, "file", True, *formats
    )
    budget = Budget(gap=gap, timeout=timeout, memory=limit)
    sigma_run(net, pert, box, budget, level, _engine(engine), json)


@app.command(
    help="How much MODEL amplifies input errors (kappa, seed 003) and the input bits it "
    "needs.\n\n"
    "kappa = (|dy|/|y|) / (|dx|/|x|): how many times a small relative error of the input "
    "(rounding it, noise) grows in the outputs, measured on the images in --data.\n\n"
    "min bits = ceil(log2 kappa) + 1: the bits an input needs so that its rounding error, "
    "amplified by kappa, stays below half the size of the outputs."
)
def kappa(
    model: ModelArg,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Inputs to measure at: an .npz with 'images' (uint8 divided by 255) and "
            "optional 'labels', a .vnnlib file or a folder of them (box centres)",
        ),
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="deepfool (the smallest label-changing input error, measured), random "
            "(random errors of that size), analytic (a sound upper bound from the Lipschitz "
            "bound) or certified (measured and a sound bound per image)",
        ),
    ] = "deepfool",
    limit: Annotated[int | None, typer.Option("--limit", help="First N images")] = None,
    per_layer: Annotated[
        bool, typer.Option("--per-layer", help="Also kappa from each layer's output on")
    ] = False,
    radius: Annotated[
        float | None,
        typer.Option(
            "--radius", help="certified: one L2 radius for all images (default: DeepFool's)"
        ),
    ] = None,
    json: JsonOpt = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Results folder: each finished chunk of images is recorded there, and a "
            "rerun with the same model, images and options skips the chunks already done "
            "(deepfool, random, certified)",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler", help="Run the chunks on the dask.distributed scheduler tcp://HOST:PORT"
        ),
    ] = None,
) -> None:
    """How much MODEL amplifies input errors (kappa, seed 003) and the input bits it needs."""
    from quantcert.analyses.kappa_cli import kappa_command

    check_output(json)
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    kappa_command(model, data, method, limit, json, per_layer, radius, store, scheduler)


@app.command()
def compare(
    float_model: Annotated[str, typer.Argument(help="The float ONNX model")],
    quant_model: Annotated[str, typer.Argument(help="Its QDQ-quantized ONNX model")],
    at: Annotated[str | None, typer.Option("--at", help="A point X1,X2,...")] = None,
    domain: Annotated[
        str | None, typer.Option("--domain", help="LO:HI,... , a .vnnlib or a .csv")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Images (.npz): one label certificate each")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds")] = 60.0,
    gap: Annotated[float, typer.Option("--gap", help="Stop when upper - lower <= G")] = 1e-4,
    json: Annotated[
        str | None, typer.Option("--json", help="Write JSON here (- for stdout)")
    ] = None,
) -> None:
    """Certify a quantized (QDQ) ONNX model against its float original: the largest output
    difference over the domain, and whether any input gets a different label."""
    check_output(json)
    import numpy as np

    from quantcert.analyses.compare import check_compatible, compare_points, label_certificate
    from quantcert.analyses.compare import compare as run
    from quantcert.analyses.epsilon import Budget, input_box
    from quantcert.intake.domain import parse_domain, parse_point
    from quantcert.intake.onnx_model import from_onnx
    from quantcert.intake.qdq import from_qdq

    if sum(v is not None for v in (at, domain, data)) != 1:
        raise InputError("give exactly one of --at, --domain and --data")
    float_net = from_onnx(float_model)
    quant_net = from_qdq(quant_model)
    check_compatible(float_net, quant_net)
    n = int(np.prod(float_net.input_shape))
    if data is not None:
        from quantcert.analyses.kappa_data import load_images

        points = load_images(data, float_net.input_shape).images.numpy()
        summary = compare_points(float_net, quant_net, points)
        if json is None:
            typer.echo(
                f"compare --data: verified {summary['verified']}, falsified "
                f"{summary['falsified']}, unknown {summary['unknown']} (verified also under "
                f"any float32 evaluation: {summary['verified_float32']}); falsified images: "
                f"{summary['falsified_images']}"
            )
        else:
            from quantcert.report.output import write_json

            write_json({"query": "compare data", **summary}, json)
        return
    if at is not None:
        p = parse_point(at, n)
        lo, hi = p, p
    else:
        assert domain is not None
        lo, hi = parse_domain(domain, n)
    box = input_box(float_net, lo, hi)
    result = run(float_net, quant_net, box, Budget(gap=gap, timeout=timeout))
    labels = label_certificate(float_net, quant_net, box)
    import dataclasses

    spec = {**result.spec, "labels": labels.to_dict()}
    emit(dataclasses.replace(result, spec=spec), json)


@app.command(
    help="Reproduce a seed's tables and figures, with certificates, into --out.\n\n"
    "paper: seed 000's bounds on what perturbing the weights does to outputs and labels; "
    "thesis: seed 003's kappa and the input bit widths it implies."
)
def reproduce(
    what: Annotated[str, typer.Argument(help="paper (seed 000) or thesis (seed 003)")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Images per network (thesis)")
    ] = None,
) -> None:
    """Reproduce a seed's tables and figures, with certificates, into --out."""
    from quantcert.report.output import check_output_dir

    if what not in ("paper", "thesis"):
        raise InputError(f"reproduce what? {what!r}: use paper or thesis")
    check_output_dir(out or Path(f"quantcert-{what}"), "--out")
    if what == "thesis":
        from quantcert.analyses.kappa_cli import reproduce_thesis_command

        reproduce_thesis_command(out or Path("quantcert-thesis"), limit)
    else:
        from quantcert.analyses.paper_cli import reproduce_paper_command

        reproduce_paper_command(out or Path("quantcert-paper"))


@app.command("train-case")
def train_case(
    case: Annotated[str, typer.Argument(help="The case study to re-train: athletes")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the re-trained weights (ath_*.npz)")
    ] = Path("quantcert-athletes"),
) -> None:
    """Re-train the athletes MLPs (fixed seed) into --out (the shipped ones stay)."""
    if case != "athletes":
        raise InputError(f"unknown case to train {case!r}: the only trainable case is athletes")
    from quantcert.report.output import check_output_dir

    check_output_dir(out, "--out")
    from quantcert.cases.athletes import main as train

    train(out)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for figures")] = Path("quantcert-demo"),
) -> None:
    """The built-in case study: the seed's cat model."""
    from quantcert.analyses.demo import run_demo
    from quantcert.report.output import check_output_dir

    check_output_dir(out, "--out")

    run_demo(out)


register_precision(app)  # accuracy, bitwidth: after the commands above in --help

#: The exit code of the signal that stopped the run (130 SIGINT, 143 SIGTERM), once one came.
_STOPPED_BY: dict[str, int] = {}


def _stop(signum: int, frame: Any) -> None:
    """SIGINT and SIGTERM both end the search as Ctrl-C does: what finished is kept."""
    _STOPPED_BY["code"] = 128 + signum
    raise KeyboardInterrupt


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        try:
            app(standalone_mode=True)
        except SystemExit as exc:
            # click turns a KeyboardInterrupt outside the searches into "Aborted!", exit 1.
            if "code" in _STOPPED_BY and exc.code == 1:
                sys.exit(_STOPPED_BY["code"])
            raise
    except InputError as exc:
        typer.echo(f"quantcert: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("quantcert: interrupted before any result was finished", err=True)
        sys.exit(_STOPPED_BY.get("code", 130))
    except Exception as exc:  # never a traceback for the user unless asked for
        if os.environ.get("QUANTCERT_DEBUG"):
            raise
        typer.echo(f"quantcert: internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
