"""Seed 000 Def. 3 at many points at once: can some parameter setting in the box change the
label at ``x``? One bound pass and one batched witness search for all points.

Per point (binary head, logit threshold ``t``, label ``z >= t``): flippable (status 1) when a
witness theta really changes the label (re-evaluated in float64); not flippable (0) when a
sound bound of the perturbed logit stays on the nominal side (``lb z_p >= t`` for a positive
point, ``ub z_p < t`` for a negative one); undecided (-1) otherwise. Undecided points get a
second, single-point flip analysis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from quantcert.analyses.epsilon import Budget
from quantcert.analyses.flip import flip, labels, score_objective, threshold
from quantcert.engines.attack import search_rows
from quantcert.engines.bounds import Method, bound_spec, engine_threads
from quantcert.engines.pair import plain_radii
from quantcert.engines.perturbation import Perturbation
from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import DTYPE, Box


@dataclass(frozen=True)
class LocalFlips:
    """``status`` (N,) int: 1 flips (witness), 0 proved robust, -1 undecided; ``score``
    (N,) the witness's flip score (> 0 iff it flips); ``witness_offsets`` theta - theta0 per
    point {name: (N, *shape)}; ``points`` (N, *input_shape)."""

    status: np.ndarray
    score: np.ndarray
    points: np.ndarray
    witness_offsets: dict[str, np.ndarray]
    time_s: float


def local_flips(
    net: Network,
    pert: Perturbation,
    points: np.ndarray,
    level: float | None = None,
    method: Method = "crown",
    steps: int = 20,
    fallback: int = 200,
) -> LocalFlips:
    """Def. 3 at each row of ``points`` (N, *input_shape), binary single-logit networks.
    Points the batched pass leaves undecided (at most ``fallback`` of them) get the full
    single-point flip analysis (``flip``), whose witness search restarts from random corners."""
    if int(np.prod(net.shapes()[net.logits_node])) != 1:
        raise InputError("local_flips handles single-logit (binary) networks")
    with engine_threads(net):
        start = time.perf_counter()
        t = threshold(net, level)
        x = torch.as_tensor(points, dtype=DTYPE).reshape(-1, *net.input_shape)
        spec = torch.tensor([[1.0], [-1.0]], dtype=DTYPE)
        ub, _ = bound_spec(
            net, Box(x, x), plain_radii(pert, net), spec, method, target=net.logits_node
        )
        with torch.no_grad():
            z_n = net.logits(x)[:, 0]
        positive = z_n >= t
        robust = torch.where(positive, -ub[:, 1] >= t, ub[:, 0] < t)
        score, params = search_rows(net, pert, Box(x, x), score_objective(net, t), steps)
        with torch.no_grad():
            flipped = labels(net.logits(x, params), t) != labels(net.logits(x), t)
        status = torch.where(flipped, 1, torch.where(robust, 0, -1)).numpy()
        nominal = net.param_tensors()
        offsets = {k: (v - nominal[k]).numpy() for k, v in params.items()}
        scores = score.numpy()
        _settle(net, pert, x, level, status, scores, offsets, fallback)
        return LocalFlips(status, scores, x.numpy(), offsets, time.perf_counter() - start)


def _settle(
    net: Network,
    pert: Perturbation,
    x: Tensor,
    level: float | None,
    status: np.ndarray,
    scores: np.ndarray,
    offsets: dict[str, np.ndarray],
    limit: int,
) -> None:
    """Run the full flip analysis (random-corner restarts) on up to ``limit`` undecided
    points, updating ``status``, ``scores`` and ``offsets`` in place."""
    for i in np.flatnonzero(status == -1)[:limit]:
        cert = flip(net, pert, Box(x[i : i + 1], x[i : i + 1]), Budget(timeout=2.0), level)
        c = cert.overall
        if c.status == "falsified" and c.witness is not None:
            status[i], scores[i] = 1, c.lower
            for k, v in c.witness.param_offsets.items():
                offsets[k][i] = v
        elif c.status == "verified":
            status[i] = 0
