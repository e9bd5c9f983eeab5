"""Branch and bound over the input box for ``max objective(x, theta)``.

Keeps a pool of sub-boxes with sound upper bounds. Each round splits the boxes with the
highest upper bounds along their widest (relative) side, bounds the children in one batch,
searches for witnesses inside the most promising children, and drops every box whose upper
bound cannot beat the best witness. Anytime: ``[lower, upper]`` is valid after every round;
a timeout or Ctrl-C ends the search with the bounds so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from quantcert.engines.attack import Witness
from quantcert.ops.base import Box

BoundFn = Callable[[Box], Tensor]  # boxes (B, *in) -> sound upper bounds (B,)
#: boxes (B, d) -> (sound upper bounds (B,), split score per coordinate (B, d))
ScoredBoundFn = Callable[[Box], tuple[Tensor, Tensor]]
AttackFn = Callable[[Box, int], Witness]  # boxes, effort (steps) -> best witness


@dataclass(frozen=True)
class BabOutcome:
    lower: float
    upper: float
    witness: Witness
    status: str  # "optimal" (gap reached), "timeout", "interrupted", "exhausted"
    boxes: int
    rounds: int


def maximise(
    bound: BoundFn,
    attack: AttackFn,
    root: Box,
    gap: float,
    deadline: float,
    batch: int = 256,
    max_boxes: int = 200_000,
    decided: Callable[[float, float], bool] | None = None,
    initial: Witness | None = None,
    progress: Callable[[float, float, int], None] | None = None,
    split_by_gradient: bool = False,
) -> BabOutcome:
    """``root`` is one box (batch 1). ``deadline`` is a ``time.perf_counter`` value.
    ``decided(lower, upper)`` may end the search early (verification queries); ``initial`` is
    a witness already found (else the search starts with a thorough attack on the root).
    Splits take the widest side relative to the root box; with ``split_by_gradient`` and more
    than three coordinates (up to three, every side is split each round), the side the bound
    depends on most (``gradient_scored``)."""
    width = (root.hi - root.lo).flatten(1)[0]
    scale = torch.where(width > 0, width, torch.ones_like(width))
    lo, hi = root.lo.flatten(1), root.hi.flatten(1)
    shape = root.lo.shape[1:]
    scored = gradient_scored(bound) if split_by_gradient and lo.shape[1] > 3 else None

    def bounded(boxes: Box) -> tuple[Tensor, Tensor]:
        if scored is not None:
            return scored(boxes)
        flat = (boxes.hi - boxes.lo).flatten(1)
        return bound(boxes), flat / scale

    ub, score = bounded(root)
    best = initial if initial is not None else attack(root, 60)
    pruned_max = -torch.inf
    rounds, status, seen, interval = 0, "exhausted", 1, 1
    try:
        while True:
            upper = max(float(ub.max()) if ub.numel() else -torch.inf, pruned_max, best.value)
            if progress is not None:
                progress(best.value, upper, seen)
            if upper - best.value <= gap or (decided is not None and decided(best.value, upper)):
                status = "optimal"
                break
            if time.perf_counter() > deadline:
                status = "timeout"
                break
            if lo.shape[0] > max_boxes or not bool((width > 0).any()):
                break
            rounds += 1
            order = ub.argsort(descending=True)
            pick, rest = order[: max(1, batch // 2)], order[max(1, batch // 2) :]
            c_lo, c_hi = _split(lo[pick], hi[pick], score[pick])
            c_box = Box(c_lo.reshape(-1, *shape), c_hi.reshape(-1, *shape))
            c_ub, c_score = bounded(c_box)
            top = c_ub.argsort(descending=True)[:2]
            # Attack while a better witness may still exist; after attacks that found nothing
            # better, only every 2nd, 4th, then 8th round (most rounds only move the bound).
            if float(c_ub[top[0]]) > best.value + gap and rounds % interval == 0:
                found = attack(Box(c_box.lo[top], c_box.hi[top]), 4)
                improved = found.value > best.value
                best = found if improved else best
                interval = 1 if improved else min(2 * interval, 8)
            seen += c_lo.shape[0]
            lo, hi, ub = (
                torch.cat([lo[rest], c_lo]),
                torch.cat([hi[rest], c_hi]),
                torch.cat([ub[rest], c_ub]),
            )
            score = torch.cat([score[rest], c_score])
            keep = ub > best.value
            if not bool(keep.all()):
                pruned_max = max(pruned_max, float(ub[~keep].max()))
            lo, hi, ub, score = lo[keep], hi[keep], ub[keep], score[keep]
    except KeyboardInterrupt:
        status = "interrupted"
    upper = max(float(ub.max()) if ub.numel() else -torch.inf, pruned_max, best.value)
    return BabOutcome(best.value, upper, best, status, seen, rounds)


def best_of(first: BabOutcome, second: BabOutcome) -> BabOutcome:
    """Two searches for the same maximum: the better witness, the smaller of the two sound
    upper bounds (never below the lower one), the second's status, the counts added."""
    witness = second.witness if second.lower > first.lower else first.witness
    lower = max(first.lower, second.lower)
    upper = max(min(first.upper, second.upper), lower)
    boxes, rounds = first.boxes + second.boxes, first.rounds + second.rounds
    return BabOutcome(lower, upper, witness, second.status, boxes, rounds)


def gradient_scored(bound: BoundFn) -> ScoredBoundFn:
    """``bound`` plus, per box and coordinate, how much the bound depends on the width of
    that side: ``|d upper / d hi - d upper / d lo| * width``, by autograd through the bound.
    Splitting the highest-scoring side narrows the bound most, to first order."""

    def scored(boxes: Box) -> tuple[Tensor, Tensor]:
        lo, hi = boxes.lo.clone().requires_grad_(True), boxes.hi.clone().requires_grad_(True)
        with torch.enable_grad():
            upper = bound(Box(lo, hi))
            g_lo, g_hi = torch.autograd.grad(upper.sum(), [lo, hi], allow_unused=True)
        zero = torch.zeros_like(lo)
        g_lo = zero if g_lo is None else g_lo
        g_hi = zero if g_hi is None else g_hi
        width = (boxes.hi - boxes.lo).flatten(1)
        gain = ((g_hi - g_lo).abs().flatten(1)) * width
        # A tiny share of the relative width breaks ties where the bound is flat everywhere.
        tie = 1e-9 * width / width.max(1, keepdim=True).values.clamp(min=1e-300)
        return upper.detach(), (gain + tie).detach()

    return scored


def _split(lo: Tensor, hi: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
    """Split each box (rows of lo/hi) at the middle of its highest-scoring sides: all sides
    when there are at most three (2**d children: low-dimensional domains converge in fewer
    rounds), else the best one. Only sides of positive width are split."""
    sides = lo.shape[1] if lo.shape[1] <= 3 else 1
    sides = max(1, min(sides, int((hi > lo).sum(1).min())))
    score = torch.where(hi > lo, score, -torch.inf)
    for _ in range(sides):
        dim = score.argmax(1)
        rows = torch.arange(lo.shape[0])
        mid = (lo[rows, dim] + hi[rows, dim]) / 2
        left_hi, right_lo = hi.clone(), lo.clone()
        left_hi[rows, dim] = mid
        right_lo[rows, dim] = mid
        score = score.clone()
        score[rows, dim] = -torch.inf  # each side once per round
        lo, hi, score = (
            torch.cat([lo, right_lo]),
            torch.cat([left_hi, hi]),
            torch.cat([score, score]),
        )
    return lo, hi
