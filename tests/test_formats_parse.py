"""Format strings parse into typed configs; bad strings are one-line errors."""

from __future__ import annotations

import pytest

from quantcert.errors import InputError
from quantcert.formats import (
    FixedFormat,
    FloatFormat,
    IntFormat,
    MXFormat,
    NVFP4Format,
    parse_format,
    parse_layer_map,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("int8", IntFormat(8)),
        ("int4:per-channel", IntFormat(4, granularity="channel")),
        ("int4:group=128", IntFormat(4, granularity="group", axis=-1, group_size=128)),
        ("uint8:asym", IntFormat(8, signed=False, symmetric=False)),
        ("uint8", IntFormat(8, signed=False, symmetric=False)),
        ("int8:asym:reduce-range", IntFormat(8, symmetric=False, reduce_range=True)),
        ("int8:observer=torch", IntFormat(8, observer="torch")),
        ("int8:rounding=any", IntFormat(8, rounding="any")),
        ("q4.12", FixedFormat(4, 12)),
        ("fp16", FloatFormat("fp16")),
        ("bf16", FloatFormat("bf16")),
        ("fp8-e4m3", FloatFormat("fp8-e4m3")),
        ("fp8-e4m3:scaled", FloatFormat("fp8-e4m3", scaled=True)),
        ("fp8-e5m2", FloatFormat("fp8-e5m2")),
        ("fp4-e2m1", FloatFormat("fp4-e2m1")),
        ("mxfp4", MXFormat("fp4-e2m1")),
        ("mxfp8-e4m3", MXFormat("fp8-e4m3")),
        ("mxint8", MXFormat("int8")),
        ("nvfp4", NVFP4Format()),
    ],
)
def test_format_strings_parse_to_configs(text: str, expected: object) -> None:
    assert parse_format(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("int1", "2 to 16"),
        ("int17", "2 to 16"),
        ("int4:group=48", "group size"),
        ("int4:group=x", "integer"),
        ("int4:per-channel:group=32", "exclude"),
        ("int8:bogus", "bogus"),
        ("fp8-e4m3:per-channel", "per-channel"),
        ("fp7", "unknown format"),
        ("int8:rounding=up", "rounding"),
        ("q40.0", "2 to 32"),
    ],
)
def test_bad_format_strings_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        parse_format(text)
    assert "\n" not in str(err.value)


def test_layer_maps() -> None:
    assert parse_layer_map("int8") == {"*": IntFormat(8)}
    got = parse_layer_map("conv1=int4:group=32,*=int8")
    assert got == {
        "conv1": IntFormat(4, granularity="group", axis=-1, group_size=32),
        "*": IntFormat(8),
    }
    for bad in ("conv1=,*=int8", "=int8", "a=int8,a=int4"):
        with pytest.raises(InputError):
            parse_layer_map(bad)
