"""Command line: ``quantcert COMMAND ...``. Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from quantcert.cli_glue import PERTURB_HELP, SELF_CHECK_HELP, attach_onnx_witness
from quantcert.errors import InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Certified robustness of neural networks to lower precision.",
)

ModelArg = Annotated[
    str, typer.Argument(help="A .onnx/.pt/.joblib path or cat, ath-relu, ath-linear")
]
JsonOpt = Annotated[
    str | None, typer.Option("--json", help="Write the result as JSON to PATH ('-': stdout)")
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


@app.command()
def info(
    model: ModelArg,
    perturb: PerturbOpt = "file",
    self_check: SelfCheckOpt = True,
    json: JsonOpt = None,
) -> None:
    """What quantcert sees in MODEL: the input shape, each layer with its output shape, and
    the parameter tensors that --delta moves, with their value ranges."""
    from quantcert.analyses.info import describe
    from quantcert.cli_glue import check_on_box, load_model

    check_output(json)
    net = load_model(model, perturb)
    if self_check:
        check_on_box(net)
    emit(describe(net), json)


DeltaOpt = Annotated[
    float | None, typer.Option("--delta", help="Absolute radius on every parameter")
]
RelOpt = Annotated[
    float | None, typer.Option("--relative", help="Relative radius: delta * |theta0|")
]
SelectOpt = Annotated[
    list[str] | None, typer.Option("--select", help="Perturb only these layers/tensors")
]
AtOpt = Annotated[str | None, typer.Option("--at", help="A point: X1,X2,... | .npy | .vnnlib")]
DomainOpt = Annotated[
    str | None, typer.Option("--domain", help="A box: LO:HI,... | .vnnlib | .csv")
]
GapOpt = Annotated[float, typer.Option("--gap", help="Stop when upper - lower <= GAP")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Time budget in seconds")]
MethodOpt = Annotated[
    str, typer.Option("--method", help="Bounds: crown, alpha (optimised ReLU slopes) or ibp")
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
SelfCheckOpt = Annotated[bool, typer.Option("--self-check/--no-self-check", help=SELF_CHECK_HELP)]
EngineOpt = Annotated[
    str, typer.Option("--engine", help="quantcert (bounds + B&B) or exact (SCIP, small nets)")
]


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
) -> tuple[Any, Any, Any]:
    from quantcert.analyses.epsilon import input_box
    from quantcert.cli_glue import check_on_box, load_model, make_perturbation
    from quantcert.intake.domain import parse_domain, parse_point

    net = load_model(model, perturb)
    pert = make_perturbation(net, delta, rel, select, weights, biases)
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
    if net is not None:
        result = attach_onnx_witness(result, net, json_target)
    emit(result, json_target)


@app.command()
def epsilon(
    model: ModelArg,
    delta: DeltaOpt = None,
    relative: RelOpt = None,
    weights: WeightsOpt = None,
    biases: BiasesOpt = None,
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
    """Largest output change |f_theta(x) - f_theta0(x)| (seed 000 Defs. 1-2)."""
    net, pert, box = _query_setup(
        model, delta, relative, select, at, domain, perturb, self_check, weights, biases
    )
    budget = _budget(gap, timeout, method, device, memory_budget)
    if _engine(engine) == "exact":
        from quantcert.analyses.exact_queries import epsilon_exact

        _emit_query(epsilon_exact(net, pert, box, budget), json, budget, net)
        return
    from quantcert.analyses.epsilon import epsilon as run

    _emit_query(run(net, pert, box, budget), json, budget, net)


@app.command()
def flip(
    model: ModelArg,
    delta: DeltaOpt = None,
    relative: RelOpt = None,
    weights: WeightsOpt = None,
    biases: BiasesOpt = None,
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
    """Can a parameter setting in the box change the label? (seed 000 Defs. 3-4)."""
    net, pert, box = _query_setup(
        model, delta, relative, select, at, domain, perturb, self_check, weights, biases
    )
    budget = _budget(0.0, timeout, method, device, memory_budget)
    if _engine(engine) == "exact":
        from quantcert.analyses.exact_queries import flip_exact

        _emit_query(flip_exact(net, pert, box, budget, level), json, budget, net)
        return
    from quantcert.analyses.flip import flip as run

    _emit_query(run(net, pert, box, budget, level), json, budget, net)


@app.command()
def sigma(
    model: ModelArg,
    domain: Annotated[str, typer.Option("--domain", help="A box: LO:HI,... | .vnnlib | .csv")],
    delta: DeltaOpt = None,
    relative: RelOpt = None,
    level: LevelOpt = None,
    gap: GapOpt = 1e-4,
    timeout: TimeoutOpt = 60.0,
    engine: EngineOpt = "quantcert",
    memory_budget: MemoryOpt = None,
    json: JsonOpt = None,
) -> None:
    """Largest distance from the decision level that can still flip, per side (Def. 5)."""
    from quantcert.analyses.paper_cli import sigma_command

    limit = parse_memory(memory_budget)
    sigma_command(model, delta, relative, domain, level, gap, timeout, _engine(engine), json, limit)


@app.command()
def kappa(
    model: ModelArg,
    data: Annotated[str, typer.Option("--data", help=".npz (images, labels) or .vnnlib")],
    method: Annotated[
        str, typer.Option("--method", help="deepfool, random, analytic or certified")
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
) -> None:
    """How much MODEL amplifies small relative input errors (condition number kappa, seed
    003), measured on the images in --data, and the input bits this implies: min bits =
    ceil(log2 kappa) + 1, the bits an input needs so that its rounding error, amplified by
    kappa, stays below half the size of the outputs."""
    from quantcert.analyses.kappa_cli import kappa_command

    check_output(json)
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    kappa_command(model, data, method, limit, json, per_layer, radius)


@app.command()
def reproduce(
    what: Annotated[str, typer.Argument(help="paper (seed 000) or thesis (seed 003)")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Images per network (thesis)")
    ] = None,
) -> None:
    """Reproduce a seed's tables and figures, with certificates: paper (seed 000, the
    perturbation bounds) or thesis (seed 003, kappa and input bit widths), into --out."""
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
    """Re-train the athletes MLPs (fixed seed) into --out; the shipped weights stay as they
    are."""
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


def main() -> None:
    try:
        app(standalone_mode=True)
    except InputError as exc:
        typer.echo(f"quantcert: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("quantcert: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # never a traceback for the user unless asked for
        if os.environ.get("QUANTCERT_DEBUG"):
            raise
        typer.echo(f"quantcert: internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
