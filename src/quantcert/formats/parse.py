"""Format strings to typed format configs, and per-layer maps (torchao's
``ModuleFqnToConfig``, as text).

Grammar: ``NAME[:OPTION]...`` with options ``per-channel``, ``group=G``, ``axis=A``,
``asym``, ``sym``, ``reduce-range``, ``observer=torch``, ``scaled`` and ``rounding=any``.
Names: ``intK``/``uintK`` (K in 2..16; a bare ``intK`` is symmetric per tensor, as
onnxruntime quantizes weights; ``uintK`` is asymmetric), ``qM.N`` (fixed point), ``fp16``,
``bf16``, ``fp8-e4m3``, ``fp8-e5m2``, ``fp6-e3m2``, ``fp6-e2m3``, ``fp4-e2m1``, ``mxfp8-e4m3``,
``mxfp8-e5m2``, ``mxfp6-e3m2``, ``mxfp6-e2m3``, ``mxfp4``, ``mxint8``, ``nvfp4``.

A layer map is ``PATTERN=FORMAT,...`` with ``*`` for every other tensor:
``conv1=int4:group=32,*=int8``.
"""

from __future__ import annotations

import re
from typing import Any, get_args

from quantcert.errors import InputError
from quantcert.formats.base import Format
from quantcert.formats.fixed import FixedFormat
from quantcert.formats.floating import FloatFormat, FloatKind
from quantcert.formats.integer import IntFormat
from quantcert.formats.microscaling import MXFormat, NVFP4Format

GROUP_SIZES = (16, 32, 64, 128)
_MX = {
    "mxfp8-e4m3": "fp8-e4m3",
    "mxfp8-e5m2": "fp8-e5m2",
    "mxfp6-e3m2": "fp6-e3m2",
    "mxfp6-e2m3": "fp6-e2m3",
    "mxfp4": "fp4-e2m1",
    "mxint8": "int8",
}


def _options(text: str, parts: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in parts:
        key, _, value = part.partition("=")
        if not key:
            raise InputError(f"format {text!r}: empty option")
        out[key] = value
    return out


def _take(text: str, opts: dict[str, str], allowed: set[str]) -> None:
    extra = sorted(set(opts) - allowed)
    if extra:
        raise InputError(
            f"format {text!r}: option {extra[0]!r} is not supported here "
            f"(supported: {', '.join(sorted(allowed)) or 'none'})"
        )


def _rounding(text: str, opts: dict[str, str]) -> Any:
    value = opts.get("rounding", "nearest")
    if value not in ("nearest", "any"):
        raise InputError(f"format {text!r}: rounding must be nearest or any, got {value!r}")
    return value


def _int(text: str, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(f"format {text!r}: {what} must be an integer, got {value!r}") from None


def _integer(text: str, signed: bool, bits: int, opts: dict[str, str]) -> IntFormat:
    _take(text, opts, {"per-channel", "group", "axis", "asym", "sym", "reduce-range",
                       "observer", "rounding"})  # fmt: skip
    if not 2 <= bits <= 16:
        raise InputError(f"format {text!r}: integer bits must be 2 to 16, got {bits}")
    if "per-channel" in opts and "group" in opts:
        raise InputError(f"format {text!r}: per-channel and group= exclude each other")
    group = _int(text, opts["group"], "group") if "group" in opts else None
    if group is not None and group not in GROUP_SIZES:
        raise InputError(f"format {text!r}: group size must be one of {GROUP_SIZES}")
    granularity = "group" if group else "channel" if "per-channel" in opts else "tensor"
    observer = opts.get("observer", "onnxruntime")
    if observer not in ("onnxruntime", "torch"):
        raise InputError(f"format {text!r}: observer must be onnxruntime or torch")
    symmetric = "sym" in opts or (signed and "asym" not in opts)
    axis_default = -1 if granularity == "group" else 0
    axis = _int(text, opts["axis"], "axis") if "axis" in opts else axis_default
    return IntFormat(bits, signed, symmetric, granularity, axis, group,  # type: ignore[arg-type]
                     "reduce-range" in opts, observer, _rounding(text, opts))  # type: ignore[arg-type]  # fmt: skip


def parse_format(text: str) -> Format:
    """The format a string names; a bad string is a one-line ``InputError``."""
    name, *rest = text.strip().lower().split(":")
    opts = _options(text, rest)
    m = re.fullmatch(r"(u?)int(\d+)", name)
    if m:
        return _integer(text, not m.group(1), int(m.group(2)), opts)
    m = re.fullmatch(r"q(\d+)\.(\d+)", name)
    if m:
        _take(text, opts, {"rounding", "unsigned"})
        m_bits, n_bits = int(m.group(1)), int(m.group(2))
        if m_bits + n_bits > 32 or m_bits + n_bits < 2:
            raise InputError(f"format {text!r}: Qm.n needs 2 to 32 bits in all")
        return FixedFormat(m_bits, n_bits, "unsigned" not in opts, _rounding(text, opts))
    if name in get_args(FloatKind):
        _take(text, opts, {"scaled", "rounding"})
        return FloatFormat(name, "scaled" in opts, _rounding(text, opts))  # type: ignore[arg-type]
    if name in _MX:
        _take(text, opts, {"axis", "rounding"})
        axis = _int(text, opts.get("axis", "-1"), "axis")
        return MXFormat(_MX[name], 32, axis, _rounding(text, opts))  # type: ignore[arg-type]
    if name == "nvfp4":
        _take(text, opts, {"axis", "rounding"})
        return NVFP4Format(16, _int(text, opts.get("axis", "-1"), "axis"), _rounding(text, opts))
    raise InputError(
        f"unknown format {text!r}: use intK, uintK, qM.N, fp16, bf16, fp8-e4m3, fp8-e5m2, "
        "fp6-e3m2, fp6-e2m3, fp4-e2m1, mxfp4, mxfp6-*, mxfp8-*, mxint8 or nvfp4"
    )


def parse_layer_map(text: str) -> dict[str, Format]:
    """``PATTERN=FORMAT,...`` (``*``: every other tensor), or one bare format for all."""
    text = text.strip()
    if "=" not in text.split(":")[0]:
        return {"*": parse_format(text)}
    out: dict[str, Format] = {}
    for item in text.split(","):
        pattern, sep, fmt = item.partition("=")
        if not sep or not pattern.strip() or not fmt.strip():
            raise InputError(f"layer map entry {item!r}: write PATTERN=FORMAT")
        if pattern.strip() in out:
            raise InputError(f"layer map names {pattern.strip()!r} twice")
        out[pattern.strip()] = parse_format(fmt)
    return out
