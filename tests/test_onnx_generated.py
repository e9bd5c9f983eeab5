"""Every generated ONNX graph (``onnx_cases``: each supported op over its attribute values
and broadcast shapes, float32 and float64, opsets 13..19 and some older) either loads and
matches onnxruntime (1e-6 relative against a float64 reference, 1e-5 where onnxruntime computes in
float32 only) or is refused with an ``InputError`` naming the op. A silent mismatch fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_cases import all_cases
from onnx_generator import Case, run_case

CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_generated_graph_matches_or_is_refused(case: Case, tmp_path: Path) -> None:
    outcome = run_case(case, tmp_path)
    assert outcome.kind in ("match", "refused"), f"{outcome.kind}: {outcome.detail}"


def test_the_enumeration_covers_every_supported_op() -> None:
    from quantcert.intake.onnx_layers import HANDLERS

    covered = {c.op for c in CASES}
    # FakeQuant is internal (domain quantcert.internal, made by the QDQ rewrite from
    # QuantizeLinear/DequantizeLinear pairs): tests/test_compare.py checks it against onnxruntime.
    missing = set(HANDLERS) - covered - {"FakeQuant"}
    assert not missing, missing
    assert set(range(13, 20)) <= {c.opset for c in CASES}
    assert len(CASES) >= 300
