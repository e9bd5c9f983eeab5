"""A resume store: every finished unit of a batch analysis, recorded as it finishes.

One embedded SQLite file, ``<folder>/quantcert-runs.sqlite``, in WAL mode with one commit per
unit (``synchronous=FULL``): a process killed at any instant (SIGKILL included) loses only the
units still in flight, and a later run with the same study skips every recorded unit.

A study is identified by a ``StudyKey``: the model's content hash (``model_hash``: sha256 of
the model file's bytes) and the canonical JSON of the query's options (``canonical_json``:
sorted keys, no spaces). Within a study each unit has a text key (an image index, a chunk
``"start:hash"``, ``"layer/bits"``...).

Values are JSON with numpy arrays encoded exactly (dtype, shape and the raw bytes in base64),
so ``decode(encode(v))`` reproduces ``v`` bit for bit: floats (NaN, infinities and -0.0
included) and arrays of every non-object dtype. Tuples come back as lists and numpy scalars
as Python numbers of the same value; ``Store.record`` returns the value as it will be read
back, so a fresh result and a resumed one are the same object shape.

A folder that cannot be made or written, or a file there that is not a store, is an
``InputError`` with one line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from quantcert.errors import InputError

FILENAME = "quantcert-runs.sqlite"
FORMAT = "quantcert-runs"
VERSION = "1"
_ARRAY = "__ndarray__"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS studies (id INTEGER PRIMARY KEY, model TEXT NOT NULL, "
    "spec TEXT NOT NULL, created REAL NOT NULL, UNIQUE (model, spec))",
    "CREATE TABLE IF NOT EXISTS units (study INTEGER NOT NULL REFERENCES studies(id), "
    "unit TEXT NOT NULL, value TEXT NOT NULL, time_s REAL, recorded REAL NOT NULL, "
    "PRIMARY KEY (study, unit))",
)


def model_hash(path: str | Path) -> str:
    """sha256 (hex, 64 characters) of the bytes of the model file at ``path``."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise InputError(f"cannot read the model file {path} ({type(exc).__name__})") from None
    return digest.hexdigest()


def canonical_json(spec: Mapping[str, Any]) -> str:
    """The options of a query as one canonical JSON text (sorted keys, no spaces); plain JSON
    values only (no NaN: a spec must compare equal to itself)."""
    try:
        return json.dumps(
            dict(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"a study's spec must be plain JSON ({exc})") from None


@dataclass(frozen=True)
class StudyKey:
    """One study: ``model`` (the model's sha256, or another stable identity) and ``spec``
    (canonical JSON of the options, from ``StudyKey.of``)."""

    model: str
    spec: str

    @classmethod
    def of(cls, model: str, spec: Mapping[str, Any]) -> StudyKey:
        return cls(model, canonical_json(spec))


def _to_json(value: Any) -> Any:
    """``value`` with numpy arrays (and scalars) replaced by exact JSON forms."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("numpy arrays of Python objects cannot be stored")
        data = base64.b64encode(np.ascontiguousarray(value).tobytes()).decode("ascii")
        return {_ARRAY: {"dtype": value.dtype.str, "shape": list(value.shape), "data": data}}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        if _ARRAY in value:
            raise TypeError(f"the key {_ARRAY!r} is reserved for arrays")
        if not all(isinstance(k, str) for k in value):
            raise TypeError("dictionary keys must be strings")
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store a value of type {type(value).__name__}")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if _ARRAY in value:
            a = value[_ARRAY]
            raw = base64.b64decode(a["data"])
            return np.frombuffer(raw, dtype=np.dtype(a["dtype"])).reshape(a["shape"]).copy()
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def encode(value: Any) -> str:
    """JSON text of ``value`` (JSON values, numpy arrays and scalars); ``TypeError`` else."""
    return json.dumps(_to_json(value), allow_nan=True, separators=(",", ":"))


def decode(text: str) -> Any:
    """The value ``encode`` wrote (arrays back as writable numpy arrays)."""
    return _from_json(json.loads(text))


class Store:
    """The resume store of one results folder; use ``Store.open(folder)`` (a context
    manager; ``close`` when done)."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._ids: dict[StudyKey, int] = {}

    @classmethod
    def open(cls, folder: str | Path) -> Store:
        """The store in ``folder`` (created with the folder when missing)."""
        root = Path(folder)
        path = root / FILENAME
        try:
            root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise InputError(f"cannot use {root} as a results folder ({_why(exc)})") from None
        try:
            _prepare(db, path)
        except BaseException:
            db.close()
            raise
        return cls(db, path)

    def _study_id(self, study: StudyKey, create: bool) -> int | None:
        if study in self._ids:
            return self._ids[study]
        query = "SELECT id FROM studies WHERE model = ? AND spec = ?"
        row = self._db.execute(query, (study.model, study.spec)).fetchone()
        if row is None and create:
            self._db.execute(
                "INSERT OR IGNORE INTO studies (model, spec, created) VALUES (?, ?, ?)",
                (study.model, study.spec, time.time()),
            )
            row = self._db.execute(query, (study.model, study.spec)).fetchone()
        if row is None:
            return None
        self._ids[study] = int(row[0])
        return int(row[0])

    def done(self, study: StudyKey) -> dict[str, Any]:
        """Every recorded unit of ``study``: unit key -> value (decoded)."""
        sid = self._study_id(study, create=False)
        if sid is None:
            return {}
        rows = self._db.execute("SELECT unit, value FROM units WHERE study = ?", (sid,))
        return {unit: decode(text) for unit, text in rows}

    def record(self, study: StudyKey, unit: str, value: Any, time_s: float | None = None) -> Any:
        """Record (commit) ``value`` for ``unit`` of ``study``, replacing an earlier one;
        returns the value as ``done`` will read it back. ``time_s``: the unit's run time."""
        text = encode(value)
        sid = self._study_id(study, create=True)
        self._db.execute(
            "INSERT OR REPLACE INTO units (study, unit, value, time_s, recorded) "
            "VALUES (?, ?, ?, ?, ?)",
            (sid, unit, text, time_s, time.time()),
        )
        return decode(text)

    def studies(self) -> list[tuple[StudyKey, int]]:
        """Every study in the store with its number of recorded units."""
        rows = self._db.execute(
            "SELECT s.model, s.spec, COUNT(u.unit) FROM studies s "
            "LEFT JOIN units u ON u.study = s.id GROUP BY s.id ORDER BY s.id"
        )
        return [(StudyKey(model, spec), int(n)) for model, spec, n in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    """Refuse files that are not stores (before writing to them); then WAL mode, the schema
    and the format mark."""
    try:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if names:
            _check_marks(db, path, names)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        with db:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)", (VERSION,))
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{path} is not a usable quantcert results store ({_why(exc)})") from None


def _check_marks(db: sqlite3.Connection, path: Path, names: set[str]) -> None:
    if "meta" not in names:
        raise InputError(f"{path} is not a quantcert results store (other tables)")
    marks = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if marks.get("format") != FORMAT or marks.get("version") != VERSION:
        raise InputError(
            f"{path} is not a quantcert results store of version {VERSION} "
            f"(format {marks.get('format')!r}, version {marks.get('version')!r})"
        )


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def same(a: Any, b: Any) -> bool:
    """Exact equality of stored values: arrays by dtype, shape and bytes; floats bit for bit
    (NaN equals NaN, -0.0 differs from 0.0)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)
