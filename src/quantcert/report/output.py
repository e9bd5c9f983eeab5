"""Writing results: JSON to a path or stdout, text to the terminal.

Output paths are checked before any work (``check_output_path`` for a file,
``check_output_dir`` for a folder), so a long computation never ends in an unwritable path;
files are written atomically (a temporary file in the same folder, then ``os.replace``), so
a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from quantcert.errors import InputError


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


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _writable_folder(folder: Path, what: str) -> None:
    """Create ``folder`` (and its parents) if missing and check a file can be created in it."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what}: {folder} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{what}: a parent of {folder} is a file, not a folder") from None
    except OSError as exc:
        raise InputError(f"{what}: cannot create folder {folder} ({_reason(exc)})") from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(f"{what}: cannot write in {folder} ({_reason(exc)})") from None


def check_output_path(target: str | os.PathLike[str] | None, what: str = "output file") -> None:
    """Refuse (``InputError``, one line) an output file path that could not be written:
    a folder, a path below a file, an unwritable or uncreatable folder, an existing file that
    cannot be replaced. ``None`` and ``-`` (stdout) pass. Creates missing parent folders."""
    if target is None or os.fspath(target) == "-":
        return
    text = os.fspath(target)
    if not text.strip():
        raise InputError(f"{what} path is empty")
    path = Path(text)
    if path.is_dir():
        raise InputError(f"{what} {text} is a folder: give a file path")
    if path.exists() and not path.is_file():
        raise InputError(f"{what} {text} is not a regular file")
    _writable_folder(path.parent, f"{what} {text}")


def check_output_dir(target: str | os.PathLike[str], what: str = "output folder") -> None:
    """Refuse (``InputError``, one line) an output folder that is a file or cannot be created
    or written; creates it when missing."""
    text = os.fspath(target)
    if not text.strip():
        raise InputError(f"{what} path is empty")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {text} is a file, not a folder")
    _writable_folder(path, f"{what} {text}")


def write_atomic(target: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through ``write(stream)`` into a temporary file beside ``target``, then
    rename it onto ``target``: readers see the old file or the whole new one, never half."""
    path = Path(target)
    check_output_path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"cannot write {path} ({_reason(exc)})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(data: dict[str, Any], target: str) -> None:
    """Write ``data`` as JSON to ``target`` (a path, or ``-`` for stdout), atomically."""
    text = json.dumps(_clean(data), indent=2)
    if target == "-":
        sys.stdout.write(text + "\n")
        return
    payload = (text + "\n").encode()

    def write(stream: IO[bytes]) -> None:
        stream.write(payload)

    write_atomic(target, write)


def write_npz(target: str | os.PathLike[str], **arrays: Any) -> None:
    """``np.savez_compressed`` to ``target`` (name kept as given), atomically."""

    def write(stream: IO[bytes]) -> None:
        np.savez_compressed(stream, **arrays)

    write_atomic(target, write)
