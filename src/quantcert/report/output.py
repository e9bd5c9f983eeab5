"""Writing results: JSON to a path or stdout, text to the terminal."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _clean(value: Any) -> Any:
    """Make a result JSON-safe: numpy to Python, non-finite floats to strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        return _clean(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_json(data: dict[str, Any], target: str) -> None:
    """Write ``data`` as JSON to ``target`` (a path, or ``-`` for stdout)."""
    text = json.dumps(_clean(data), indent=2)
    if target == "-":
        sys.stdout.write(text + "\n")
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
