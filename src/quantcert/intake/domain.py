"""Input domains (boxes) and input points from their command-line forms.

A domain is ``LO:HI,LO:HI,...`` (one ``LO:HI`` alone is the same interval for every input),
a ``.vnnlib`` file (its input box) or a ``.csv`` file (the bounding box of its numeric
columns). A point is ``X1,X2,...``, a ``.npy`` file (flattened; uint8 values are divided by
255, the convention of ``kappa --data``) or a ``.vnnlib`` file (its box centre, which a
warning says). Every problem raises ``InputError`` with a one-line message; dimensions and
coordinates in messages count from 1.

CSV rows lacking a value in a used column are dropped; ``csv_box`` returns how many, and
``parse_domain`` logs a warning on the ``quantcert.intake.domain`` logger (printed to stderr
when logging is not configured); so does ``parse_point`` for a ``.vnnlib`` point.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantcert.errors import InputError
from quantcert.intake.vnnlib import NUMBER, load_vnnlib

log = logging.getLogger(__name__)

MISSING = frozenset({"", "na", "nan", "n/a", "null", "none", "?", "-"})
_HINT = "give LO:HI,LO:HI,..., a .vnnlib file or a .csv file"


@dataclass(frozen=True, eq=False)
class CsvBox:
    """Bounding box of CSV columns: ``lower`` / ``upper`` of shape ``(len(columns),)``.

    ``n_rows``: rows used; ``n_dropped``: rows dropped for a missing value in ``columns``;
    ``skipped``: the columns left out as not numeric, each with its first non-number.
    """

    lower: np.ndarray
    upper: np.ndarray
    columns: tuple[str, ...]
    n_rows: int
    n_dropped: int
    skipped: tuple[str, ...] = ()


def parse_domain(
    spec: str | os.PathLike[str],
    n_inputs: int | None = None,
    csv_columns: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The box ``(lower, upper)``, float64 arrays of shape ``(n,)``, described by ``spec``.

    ``n_inputs``: when given, the box must have that many dimensions. ``csv_columns``: for a
    CSV domain, the numeric columns to use, in the model's input order (default: all numeric
    columns in file order); ignored for other forms.
    """
    text = os.fspath(spec).strip()
    if not text:
        raise InputError(f"domain is empty: {_HINT}")
    suffix = text.lower().rsplit(".", 1)[-1]
    if suffix == "vnnlib":
        vnn = load_vnnlib(text)
        lo, hi = vnn.lower.copy(), vnn.upper.copy()
    elif suffix == "csv":
        box = csv_box(text, csv_columns)
        if box.n_dropped:
            log.warning(
                "CSV file %s: dropped %d of %d rows lacking a value in %s",
                text,
                box.n_dropped,
                box.n_dropped + box.n_rows,
                ", ".join(box.columns),
            )
        lo, hi = box.lower, box.upper
        if box.skipped and n_inputs is not None and lo.shape[0] != n_inputs:
            raise InputError(
                f"CSV file {text} has {lo.shape[0]} numeric columns, the model takes "
                f"{n_inputs} inputs (not numeric: {', '.join(box.skipped)})"
            )
    else:
        lo, hi = _parse_intervals(text)
        if lo.shape[0] == 1 and n_inputs is not None:
            lo, hi = np.full(n_inputs, lo[0]), np.full(n_inputs, hi[0])
    _check_count(lo.shape[0], n_inputs, "domain", "dimension")
    return lo, hi


def parse_point(spec: str | os.PathLike[str], n_inputs: int | None = None) -> np.ndarray:
    """The point described by ``spec``: a float64 array of shape ``(n,)``.

    ``n_inputs``: when given, the point must have that many coordinates.
    """
    text = os.fspath(spec).strip()
    if not text:
        raise InputError("point is empty: give X1,X2,..., a .npy file or a .vnnlib file")
    suffix = text.lower().rsplit(".", 1)[-1]
    if suffix == "vnnlib":
        x = load_vnnlib(text).centre()
        log.warning(
            "note: --at %s is a box; using its centre as the point (give --domain %s for the "
            "whole box)",
            text,
            text,
        )
    elif suffix == "npy":
        x = _load_npy(text)
    else:
        x = np.array(
            [_number(tok, f"point coordinate {k}") for k, tok in enumerate(text.split(","), 1)],
            dtype=np.float64,
        )
    _check_count(x.shape[0], n_inputs, "point", "coordinate")
    return x


def csv_box(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> CsvBox:
    """Bounding box of the numeric ``columns`` of a CSV file with a header row (a first row of
    numbers is read as data, the columns then named ``"1"``, ``"2"``, ...)."""
    name = os.fspath(path)
    header, rows = _read_csv(name)
    cells = [[row[j].strip() for row in rows] for j in range(len(header))]
    chosen = _choose_columns(name, header, cells, columns)
    table = np.array(
        [[math.nan if c.lower() in MISSING else float(c) for c in cells[j]] for j in chosen],
        dtype=np.float64,
    ).T.reshape(len(rows), len(chosen))
    keep = ~np.isnan(table).any(axis=1)
    names = tuple(header[j] for j in chosen)
    if not keep.any():
        raise InputError(f"CSV file {name} has no row with values in all of {', '.join(names)}")
    used = table[keep]
    n_used = int(keep.sum())
    skipped = tuple(
        f"{header[j]!r} ({bad!r})"
        for j in range(len(header))
        if j not in chosen and (bad := _bad_cell(cells[j])) is not None
    )
    return CsvBox(used.min(axis=0), used.max(axis=0), names, n_used, len(rows) - n_used, skipped)


def _read_csv(name: str) -> tuple[list[str], list[list[str]]]:
    """Header and data rows (blank lines skipped; every row as wide as the header)."""
    try:
        with open(name, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            numbered = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    except FileNotFoundError:
        raise InputError(f"domain file {name} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"CSV file {name} cannot be read ({type(exc).__name__})") from None
    if not numbered:
        raise InputError(f"CSV file {name} is empty")
    header = [c.strip() for c in numbered[0][1]]
    if all(_is_number(c) for c in header):
        header = [str(j + 1) for j in range(len(header))]
    else:
        numbered = numbered[1:]
    for line, row in numbered:
        if len(row) != len(header):
            raise InputError(
                f"CSV file {name} line {line} has {len(row)} fields, expected {len(header)}"
            )
    return header, [row for _, row in numbered]


def _choose_columns(
    name: str, header: list[str], cells: list[list[str]], columns: Sequence[str] | None
) -> list[int]:
    """Indices of the columns to use: the requested ones, else every numeric column."""
    if columns is None:
        chosen = [j for j, col in enumerate(cells) if _bad_cell(col) is None and _any_value(col)]
        if not chosen:
            raise InputError(f"CSV file {name} has no numeric columns")
        return chosen
    if isinstance(columns, str) or not columns:
        raise InputError("CSV columns must be a non-empty list of column names")
    chosen = []
    for col in columns:
        if col not in header:
            raise InputError(f"CSV file {name} has no column {col!r} (has {', '.join(header)})")
        j = header.index(col)
        bad = _bad_cell(cells[j])
        if bad is not None:
            raise InputError(f"CSV column {col!r} in {name} is not numeric ({bad!r})")
        chosen.append(j)
    return chosen


def _bad_cell(column: list[str]) -> str | None:
    """The first cell that is neither missing nor a finite number, if any."""
    return next((c for c in column if c.lower() not in MISSING and not _is_number(c)), None)


def _any_value(column: list[str]) -> bool:
    return any(c.lower() not in MISSING for c in column)


def _is_number(text: str) -> bool:
    return NUMBER.match(text) is not None and math.isfinite(float(text))


def _parse_intervals(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``LO:HI,LO:HI,...`` as ``(lower, upper)`` arrays of shape ``(n,)``."""
    lows, highs = [], []
    for k, token in enumerate(text.split(","), 1):
        where = f"domain dimension {k}"
        parts = [p.strip() for p in token.split(":")]
        if len(parts) != 2:
            if not token.strip():
                raise InputError(f"{where} is empty")
            raise InputError(f"{where}: {token.strip()!r} is not LO:HI ({_HINT})")
        lo, hi = (_number(p, where) for p in parts)
        if lo > hi:
            raise InputError(f"{where}: lower {parts[0]} > upper {parts[1]}")
        lows.append(lo)
        highs.append(hi)
    return np.array(lows, dtype=np.float64), np.array(highs, dtype=np.float64)


def _number(token: str, where: str) -> float:
    """One finite number; ``where`` names its place in error messages."""
    text = token.strip()
    if not text:
        raise InputError(f"{where} is empty")
    if text.lower().lstrip("+-") == "nan":
        raise InputError(f"{where} is NaN")
    if NUMBER.match(text) is None:
        raise InputError(f"{where}: {text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"{where}: {text} is not finite")
    return value


def _load_npy(name: str) -> np.ndarray:
    """A ``.npy`` array, flattened to float64 of shape ``(n,)``; uint8 divided by 255."""
    if not Path(name).is_file():
        raise InputError(f"point file {name} not found")
    try:
        arr = np.load(name, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"point file {name} is not a .npy array ({type(exc).__name__})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf" or arr.size == 0:
        raise InputError(f"point file {name} does not hold a non-empty array of real numbers")
    x = arr.astype(np.float64).reshape(-1)
    if arr.dtype == np.uint8:  # the convention of ``kappa --data`` (``kappa_data._fit``)
        x = x / 255.0
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise InputError(f"point file {name}: coordinate {int(bad[0]) + 1} is not finite")
    return x


def _check_count(n: int, n_inputs: int | None, what: str, unit: str) -> None:
    if n_inputs is not None and n != n_inputs:
        units = unit if n == 1 else unit + "s"
        inputs = "input" if n_inputs == 1 else "inputs"
        raise InputError(f"{what} has {n} {units}, the model takes {n_inputs} {inputs}")
