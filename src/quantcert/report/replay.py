"""Replaying a witness: the stored ``(x, theta)`` evaluated again, in the IR (float64) and,
for an ONNX model, as the user's own graph with the perturbed initializers in onnxruntime.

A witness is worth what its replay shows: ``x`` inside the input box, ``theta`` inside the
perturbation set, and the value it reaches at least the ``lower`` reported with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from quantcert.engines.perturbation import Perturbation
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import DTYPE, Box
from quantcert.report.results import WitnessRecord
from quantcert.report.witness_onnx import (
    WitnessFiles,
    replay_witness,
    run_onnx,
    stored_input,
    write_witness_model,
)


def witness_params(net: Network, w: WitnessRecord) -> dict[str, torch.Tensor]:
    """The IR parameters of a witness: ``theta0 + offsets`` (float64)."""
    nominal = net.param_tensors()
    return {
        k: nominal[k].detach().cpu().to(DTYPE) + torch.as_tensor(np.asarray(v), dtype=DTYPE)
        for k, v in w.param_offsets.items()
    }


def epsilon_value(net: Network, w: WitnessRecord, output: int | None = None) -> float:
    """``max_k |f_theta(x)_k - f_theta0(x)_k|`` at the witness (only ``k = output`` when
    given), in float64."""
    x = torch.as_tensor(np.asarray(w.x), dtype=DTYPE).reshape(1, *net.input_shape)
    with torch.no_grad():
        change = (net(x, witness_params(net, w)) - net(x)).abs().flatten()
    return float(change.max() if output is None else change[output])


def labels_differ(net: Network, w: WitnessRecord, threshold: float) -> bool:
    """Whether the witness changes the label at its input: the argmax of the logits for
    several classes, else the side of ``threshold`` on the one logit (``flip.threshold``)."""
    x = torch.as_tensor(np.asarray(w.x), dtype=DTYPE).reshape(1, *net.input_shape)
    with torch.no_grad():
        moved, base = net.logits(x, witness_params(net, w)).flatten(), net.logits(x).flatten()
    if moved.numel() > 1:
        return int(moved.argmax()) != int(base.argmax())
    return bool((moved[0] >= threshold) != (base[0] >= threshold))


def inside(net: Network, pert: Perturbation, box: Box, w: WitnessRecord) -> bool:
    """``x`` in the input box and every parameter offset within its radius."""
    x = torch.as_tensor(np.asarray(w.x), dtype=DTYPE).reshape(box.lo.shape[1:])
    if not bool(((x >= box.lo[0].cpu()) & (x <= box.hi[0].cpu())).all()):
        return False
    nominal = net.param_tensors()
    for name, off in w.param_offsets.items():
        r = pert.radius.get(name)
        limit = torch.zeros(()) if r is None else r.detach().cpu()
        # theta - theta0 is itself rounded: allow its last bit.
        slack = 2.0**-50 * (limit + nominal[name].detach().cpu().abs())
        if not bool((torch.as_tensor(np.asarray(off)).abs() <= limit + slack).all()):
            return False
    return True


@dataclass(frozen=True)
class OnnxReplay:
    """The witness as an ONNX model and what onnxruntime computes with it: ``change`` is
    ``max_k |f_witness(x)_k - f_file(x)_k|``, both run by onnxruntime in the file's dtype."""

    files: WitnessFiles
    change: float


def write_onnx_witness(
    net: Network, model: onnx.ModelProto, w: WitnessRecord, out_onnx: Path
) -> OnnxReplay:
    """Write the witness as the user's own graph with its perturbed initializers (and the
    witness input beside it), then replay it and the stored model in onnxruntime."""
    if not net.sources:
        raise InputError("the witness is stated on folded parameters: no file tensor to write")
    files = write_witness_model(model, net.file_params(witness_params(net, w)), w.x, out_onnx)
    moved = replay_witness(files.model).astype(np.float64)
    nominal = run_onnx(model, stored_input(files.model), "the stored model").astype(np.float64)
    return OnnxReplay(files, float(np.abs(moved - nominal).max()))
