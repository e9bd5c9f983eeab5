"""Model intake: every supported source becomes a ``Network``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from quantcert.errors import InputError
from quantcert.network import Network

BUILTIN_CASES = ("cat", "ath-relu", "ath-linear")


def load(
    source: str | Path,
    perturb: Literal["file", "folded"] = "file",
    self_check: bool = True,
    output: str | None = None,
) -> Network:
    """Load a model: a path (``.onnx``, ``.pt``/``.pth``, ``.joblib``/``.pkl``) or a built-in
    case-study name (``cat``, ``ath-relu``, ``ath-linear``).

    ONNX only: ``perturb`` says whether radii are stated on the file's initializers
    (``file``, BatchNormalization kept) or on the folded network (``folded``);
    ``self_check`` compares the loaded network with onnxruntime; ``output`` names the graph
    output to load when the graph has several (without it such a graph is refused)."""
    text = str(source)
    if text in BUILTIN_CASES:
        from quantcert.cases.builtin import load_case

        return load_case(text)
    path = Path(text)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise InputError(f"model path {text} is a directory, not a model file")
    if not path.exists():
        names = ", ".join(BUILTIN_CASES)
        raise InputError(f"model not found: {text} (not a file, nor a built-in case: {names})")
    if suffix == ".onnx":
        from quantcert.intake.onnx_model import from_onnx

        return from_onnx(path, perturb, self_check, output)
    if suffix in (".pt", ".pth"):
        from quantcert.intake.torch_module import load_torch

        return load_torch(path)
    if suffix in (".joblib", ".pkl"):
        from quantcert.intake.sklearn_model import load_joblib

        return load_joblib(path)
    raise InputError(
        f"unknown model format {suffix or '(no extension)'!r}: use .onnx, .pt, .joblib"
    )
