"""Where the engine computes: the same code on a CPU or a CUDA GPU.

Inside ``placed(device)`` torch's factory functions (``zeros``, ``eye``, ``arange``, ``rand``,
``as_tensor``...) create their tensors on that device, so the engine's code names no device;
only its inputs (network parameters, radii, boxes) are moved, by ``to_device``, and its
outputs are brought back to the CPU where they become numpy arrays.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from quantcert.errors import InputError

#: ``auto`` puts networks of at least this many parameters on a GPU when one is present;
#: below it, kernel launches cost more than the arithmetic.
GPU_MIN_PARAMS = 100_000
DEVICES = ("auto", "cpu", "cuda")


def pick_device(spec: str, num_params: int) -> torch.device:
    """``auto``, ``cpu`` or ``cuda`` (``cuda:N``) -> a device that exists here."""
    if spec == "auto":
        use_gpu = torch.cuda.is_available() and num_params >= GPU_MIN_PARAMS
        return torch.device("cuda" if use_gpu else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: no CUDA device is available here")
        try:
            return torch.device(spec)
        except RuntimeError as err:
            raise InputError(f"--device {spec}: {err}") from None
    raise InputError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {spec!r}")


@contextmanager
def placed(device: torch.device) -> Iterator[None]:
    """Factory functions default to ``device`` inside the block."""
    if device.type == "cpu":
        yield
        return
    with torch.device(device):
        yield
