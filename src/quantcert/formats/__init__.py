"""Numeric formats: one frozen config class per family, one protocol (``Format``), and the
parser of format strings and per-layer maps."""

from quantcert.formats.base import Format, Rounding
from quantcert.formats.fixed import FixedFormat
from quantcert.formats.floating import FloatFormat
from quantcert.formats.integer import IntFormat
from quantcert.formats.microscaling import MXFormat, NVFP4Format
from quantcert.formats.parse import parse_format, parse_layer_map

__all__ = [
    "FixedFormat",
    "FloatFormat",
    "Format",
    "IntFormat",
    "MXFormat",
    "NVFP4Format",
    "Rounding",
    "parse_format",
    "parse_layer_map",
]
