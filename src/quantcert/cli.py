"""Command line: ``quantcert COMMAND ...``. Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from quantcert.errors import InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Certified robustness of neural networks to lower precision.",
)

ModelArg = Annotated[str, typer.Argument(help="A .onnx/.pt/.joblib path or cat, ath-relu, ath-linear")]
JsonOpt = Annotated[
    str | None, typer.Option("--json", help="Write the result as JSON to PATH ('-': stdout)")
]


def emit(result: Any, json_target: str | None) -> None:
    """Print a result's table, or write its JSON (``result`` has to_text/to_dict)."""
    from quantcert.report.output import write_json

    if json_target is None:
        typer.echo(result.to_text())
    else:
        write_json(result.to_dict(), json_target)
        if json_target != "-":
            typer.echo(result.to_text())


@app.command()
def info(model: ModelArg, json: JsonOpt = None) -> None:
    """Input shape, layers with output shapes, parameter tensors and their ranges."""
    from quantcert.analyses.info import describe
    from quantcert.intake import load

    emit(describe(load(model)), json)


@app.command()
def demo(out: Annotated[Path, typer.Option(help="Folder for figures")] = Path("quantcert-demo")) -> None:
    """The built-in case study: the seed's cat model."""
    from quantcert.analyses.demo import run_demo

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
