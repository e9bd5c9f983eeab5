"""Model intake: every supported source becomes a ``Network``."""

from __future__ import annotations

from pathlib import Path

from quantcert.errors import InputError
from quantcert.network import Network

BUILTIN_CASES = ("cat", "ath-relu", "ath-linear")


def load(source: str | Path) -> Network:
    """Load a model: a path (``.onnx``, ``.pt``/``.pth``, ``.joblib``/``.pkl``) or a built-in
    case-study name (``cat``, ``ath-relu``, ``ath-linear``)."""
    text = str(source)
    if text in BUILTIN_CASES:
        from quantcert.cases.builtin import load_case

        return load_case(text)
    path = Path(text)
    suffix = path.suffix.lower()
    if not path.exists():
        names = ", ".join(BUILTIN_CASES)
        raise InputError(f"model not found: {text} (not a file, nor a built-in case: {names})")
    if suffix == ".onnx":
        from quantcert.intake.onnx_model import from_onnx

        return from_onnx(path)
    if suffix in (".pt", ".pth"):
        from quantcert.intake.torch_module import load_torch

        return load_torch(path)
    if suffix in (".joblib", ".pkl"):
        from quantcert.intake.sklearn_model import load_joblib

        return load_joblib(path)
    raise InputError(
        f"unknown model format {suffix or '(no extension)'!r}: use .onnx, .pt, .joblib"
    )
