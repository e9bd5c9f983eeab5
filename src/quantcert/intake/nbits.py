"""``MatMulNBits`` (com.microsoft, weight-only 2/4/8-bit blocks, as
``onnxruntime.quantization.matmul_nbits_quantizer`` writes it) as a MatMul with the exactly
dequantized float32 weight.

``B`` (N, k_blocks, blob) packs ``8 / bits`` codes per byte, low bits first along K;
``scales`` (N * k_blocks) float32; ``zero_points`` (optional) packs one code per block the
same way (N, ceil(k_blocks * bits / 8)), default ``2**(bits - 1)``. onnxruntime's CPU kernel
(float32 compute, MLAS ``Q4BitBlkDequantBForSgemm_CompFp32``) dequantizes
``W[k, n] = float32(code - zp) * scale[n, k // block_size]``, one float32 product, which is
what this fold computes. Refused by name: ``accuracy_level`` other than 0/1 (level 4
quantizes A to int8 on the fly: another computation), float zero points, ``g_idx``, and
non-float32 scales.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from quantcert.errors import InputError


def _refuse(n: onnx.NodeProto, why: str) -> InputError:
    return InputError(f"ONNX MatMulNBits node {n.name!r}: {why}")


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Codes of ``packed`` (uint8, last axis the bytes), low bits first: ``count`` per row."""
    per = 8 // bits
    b = np.asarray(packed, dtype=np.uint8)[..., None]
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    codes = (b >> shifts) & np.uint8((1 << bits) - 1)
    flat = codes.reshape(*packed.shape[:-1], packed.shape[-1] * per)
    out: np.ndarray = flat[..., :count].astype(np.int64)
    return out


def dequantized_weight(n: onnx.NodeProto, consts: dict[str, np.ndarray]) -> np.ndarray:
    """The (K, N) float32 weight onnxruntime's kernel multiplies by."""
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    for name in attrs:
        if name not in ("K", "N", "bits", "block_size", "accuracy_level"):
            raise _refuse(n, f"attribute {name} is not supported")
    if int(attrs.get("accuracy_level", 0)) not in (0, 1):
        raise _refuse(
            n,
            f"accuracy_level={attrs['accuracy_level']} is not supported (0 or 1: float32 "
            "compute; 4 quantizes the input to int8)",
        )
    k, nn, bits, bs = (int(attrs[a]) for a in ("K", "N", "bits", "block_size"))
    if bits not in (2, 4, 8) or bs < 16 or bs & (bs - 1):
        raise _refuse(n, f"bits={bits}, block_size={bs} are not supported")
    if len(n.input) > 4 and n.input[4]:
        raise _refuse(n, "g_idx is not supported")
    for i in n.input[1:3]:
        if i not in consts:
            raise _refuse(n, f"input {i!r} must be a constant")
    blocks = -(-k // bs)
    b = consts[n.input[1]]
    if b.dtype != np.uint8 or b.shape != (nn, blocks, bs * bits // 8):
        raise _refuse(n, f"B of shape {list(b.shape)} ({b.dtype}) does not match K, N")
    scale = consts[n.input[2]]
    if scale.dtype != np.float32 or scale.size != nn * blocks:
        raise _refuse(n, "scales must be float32, one per block")
    scale = scale.reshape(nn, blocks)
    if len(n.input) > 3 and n.input[3]:
        zp_arr = consts.get(n.input[3])
        if zp_arr is None or zp_arr.dtype != np.uint8:
            raise _refuse(n, "zero points must be a packed uint8 constant (float: unsupported)")
        zp = unpack(zp_arr.reshape(nn, -1), bits, blocks)
    else:
        zp = np.full((nn, blocks), 1 << (bits - 1), dtype=np.int64)
    codes = unpack(b.reshape(nn, blocks * b.shape[2]), bits, blocks * bs)[:, :k]
    idx = np.arange(k) // bs
    w = (codes - zp[:, idx]).astype(np.float32) * scale[:, idx]
    out: np.ndarray = np.ascontiguousarray(w.T)
    return out


def matmul_nbits(
    n: onnx.NodeProto, consts: dict[str, np.ndarray], new_inits: dict[str, np.ndarray]
) -> list[onnx.NodeProto]:
    """The MatMul (and the bias Add) replacing ``n``; the weight goes into ``new_inits``."""
    name = n.name or n.output[0]
    w_name = f"{name}_dequantized_weight"
    new_inits[w_name] = dequantized_weight(n, consts)
    bias = n.input[5] if len(n.input) > 5 and n.input[5] else None
    if bias is None:
        return [helper.make_node("MatMul", [n.input[0], w_name], [n.output[0]], name=name)]
    if bias not in consts or consts[bias].dtype != np.float32:
        raise _refuse(n, "the bias must be a float32 constant")
    mid = f"{name}_matmul"
    return [
        helper.make_node("MatMul", [n.input[0], w_name], [mid], name=mid),
        helper.make_node("Add", [mid, bias], [n.output[0]], name=name),
    ]
