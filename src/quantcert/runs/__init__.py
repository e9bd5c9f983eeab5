"""Batch runs: a resume store (``store``) and executors (``executor``) that the batch
analyses (kappa over a data set, local queries over many points, accuracy, bit widths) go
through. See the two modules' docstrings."""

from __future__ import annotations

from quantcert.runs.executor import (
    DaskExecutor,
    Executor,
    InProcess,
    Progress,
    check_address,
    executor_for,
    run_units,
)
from quantcert.runs.store import (
    Store,
    StudyKey,
    canonical_json,
    decode,
    encode,
    model_hash,
    same,
)

__all__ = [
    "DaskExecutor",
    "Executor",
    "InProcess",
    "Progress",
    "Store",
    "StudyKey",
    "canonical_json",
    "check_address",
    "decode",
    "encode",
    "executor_for",
    "model_hash",
    "run_units",
    "same",
]
