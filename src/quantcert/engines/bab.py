"""Branch and bound over the input box for ``max objective(x, theta)``.

Keeps a pool of sub-boxes with sound upper bounds. Each round splits the boxes with the
highest upper bounds along their widest (relative) side, bounds the children in one batch,
searches for witnesses inside the most promising children, and drops every box whose upper
bound cannot beat the best witness. Anytime: ``[lower, upper]`` is valid after every round;
a timeout, Ctrl-C or the memory budget ends the search with the bounds so far.

Non-finite values are never dropped: a box whose bound is NaN gets the upper bound ``+inf``
(it is never pruned and the search never says ``optimal`` while it is in the pool), and a
witness whose value is NaN proves nothing (its value becomes ``-inf``). Every max and min of
bounds goes through ``upper_of`` / ``tightest`` / ``lower_of``, which treat NaN that way:
Python's ``max(nan, x)`` keeps or drops the NaN depending on the argument order.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from quantcert.engines.attack import Witness
from quantcert.ops.base import Box

BoundFn = Callable[[Box], Tensor]  # boxes (B, *in) -> sound upper bounds (B,)
#: boxes (B, d) -> (sound upper bounds (B,), split score per coordinate (B, d))
ScoredBoundFn = Callable[[Box], tuple[Tensor, Tensor]]
AttackFn = Callable[[Box, int], Witness]  # boxes, effort (steps) -> best witness


#: Bytes one queued box costs per input coordinate: lo, hi and the split score (float64).
QUEUE_BYTES_PER_COORD = 3 * 8
#: The share of the memory headroom at the start (budget minus the memory in use) the pool
#: of boxes may fill, and the share of the headroom left in a round one bound batch may use;
#: the rest covers witness searches and copies of the pool.
QUEUE_SHARE, BATCH_SHARE = 0.5, 0.5


def upper_of(*values: float) -> float:
    """The largest of sound upper bounds; ``+inf`` (no bound) if any of them is NaN."""
    return math.inf if any(math.isnan(v) for v in values) else max(values)


def tightest(*values: float) -> float:
    """The smallest of sound upper bounds of one quantity; NaN ones carry no bound."""
    return min((v for v in values if not math.isnan(v)), default=math.inf)


def lower_of(*values: float) -> float:
    """The largest of attained values; NaN ones attain nothing."""
    return max((v for v in values if not math.isnan(v)), default=-math.inf)


def reached(lower: float, upper: float, gap: float) -> bool:
    """``upper - lower <= gap`` with both bounds finite: the only condition for "optimal"."""
    return math.isfinite(lower) and math.isfinite(upper) and upper - lower <= gap


def sane_bound(ub: Tensor) -> Tensor:
    """Sound upper bounds with NaN replaced by ``+inf`` (a NaN bounds nothing)."""
    return torch.where(torch.isnan(ub), torch.full_like(ub, torch.inf), ub)


def sane_witness(w: Witness) -> Witness:
    """A witness whose value is NaN (or ``+inf``, an overflow) attains nothing: ``-inf``."""
    if math.isnan(w.value) or w.value == math.inf:
        return Witness(-math.inf, w.x, w.params)
    return w


def best_witness(found: Iterable[Witness]) -> Witness:
    """The witness of largest value, NaN values ranked last (``max`` would keep a NaN first)."""
    return max((sane_witness(w) for w in found), key=lambda w: w.value)


def machine_memory() -> int:
    """Bytes of memory this process may use: physical memory, or the cgroup's limit if lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return int(total)


def default_memory_budget() -> int:
    """Half the machine's memory."""
    return machine_memory() // 2


class PeakRss:
    """Context manager: the largest resident memory seen while it is open, sampled every
    ``period`` seconds by a thread (torch's kernels release the GIL). ``growth`` is that
    peak minus the memory at entry."""

    def __init__(self, period: float = 0.002) -> None:
        self.period = period
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRss:
        self.base = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return max(self.peak - self.base, 0)


def rss_bytes() -> int:
    """The resident memory of this process now (0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(frozen=True)
class Memory:
    """A memory budget for one search: the process may use ``limit`` bytes; one box of a bound
    batch costs about ``per_box`` bytes (``bounds.batch_bytes``)."""

    limit: int
    per_box: int = 0


@dataclass(frozen=True)
class BabOutcome:
    lower: float
    upper: float
    witness: Witness
    # "optimal" (gap reached), "timeout", "interrupted", "exhausted", "memory" (the budget
    # stopped it: the bounds so far)
    status: str
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
    memory: Memory | None = None,
) -> BabOutcome:
    """``root`` is one box (batch 1). ``deadline`` is a ``time.perf_counter`` value.
    ``decided(lower, upper)`` may end the search early (verification queries); ``initial`` is
    a witness already found (else the search starts with a thorough attack on the root).
    Splits take the widest side relative to the root box; with ``split_by_gradient`` and more
    than three coordinates (up to three, every side is split each round), the side the bound
    depends on most (``gradient_scored``).

    ``memory`` caps the pool of boxes (``QUEUE_SHARE`` of the headroom left at the start) and
    each round's bound batch (``BATCH_SHARE`` of the headroom left then, at the larger of
    ``memory.per_box`` and the memory the root's bound was measured to take); when the pool
    is full, not one split fits, or the process's resident memory passes ``memory.limit``, the
    search stops with status ``memory`` and the bounds so far."""
    width = (root.hi - root.lo).flatten(1)[0]
    scale = torch.where(width > 0, width, torch.ones_like(width))
    lo, hi = root.lo.flatten(1), root.hi.flatten(1)
    shape = root.lo.shape[1:]
    scored = gradient_scored(bound) if split_by_gradient and lo.shape[1] > 3 else None
    pool_cap = 0  # boxes the memory budget lets the pool hold (with ``memory``)
    per_box = 0 if memory is None else memory.per_box
    if memory is not None:
        per_queued = QUEUE_BYTES_PER_COORD * lo.shape[1] + 8
        pool_cap = int(QUEUE_SHARE * max(memory.limit - rss_bytes(), 0)) // per_queued

    def bounded(boxes: Box) -> tuple[Tensor, Tensor]:
        if scored is not None:
            ub, sc = scored(boxes)
            return sane_bound(ub), sc
        flat = (boxes.hi - boxes.lo).flatten(1)
        return sane_bound(bound(boxes)), flat / scale

    def picks(wanted: int, children: int) -> int:
        """How many boxes to split this round: ``wanted``, fewer where the budget says so,
        0 when not one split fits (the search then stops)."""
        if memory is None:
            return wanted
        room = memory.limit - rss_bytes()
        fit = int(BATCH_SHARE * room) // max(per_box * children, 1)
        fit = min(fit, (pool_cap - lo.shape[0]) // max(children - 1, 1))
        return max(0, min(wanted, fit))

    if memory is None:
        ub, score = bounded(root)
    else:
        with PeakRss() as measured:
            ub, score = bounded(root)
        per_box = max(per_box, measured.growth)
    best = sane_witness(initial if initial is not None else attack(root, 60))
    pruned_max = -math.inf
    rounds, status, seen, interval = 0, "exhausted", 1, 1
    try:
        while True:
            upper = upper_of(float(ub.max()) if ub.numel() else -math.inf, pruned_max, best.value)
            if progress is not None:
                progress(best.value, upper, seen)
            if reached(best.value, upper, gap) or (
                decided is not None and decided(best.value, upper)
            ):
                status = "optimal"
                break
            if time.perf_counter() > deadline:
                status = "timeout"
                break
            if lo.shape[0] > max_boxes or lo.shape[0] == 0 or not bool((width > 0).any()):
                break
            n_pick = picks(min(max(1, batch // 2), lo.shape[0]), _children_per_box(lo.shape[1]))
            if n_pick == 0:
                status = "memory"
                break
            rounds += 1
            order = ub.argsort(descending=True)
            pick, rest = order[:n_pick], order[n_pick:]
            c_lo, c_hi = _split(lo[pick], hi[pick], score[pick])
            c_box = Box(c_lo.reshape(-1, *shape), c_hi.reshape(-1, *shape))
            c_ub, c_score = bounded(c_box)
            top = c_ub.argsort(descending=True)[:2]
            # Attack while a better witness may still exist; after attacks that found nothing
            # better, only every 2nd, 4th, then 8th round (most rounds only move the bound).
            if float(c_ub[top[0]]) > best.value + gap and rounds % interval == 0:
                found = sane_witness(attack(Box(c_box.lo[top], c_box.hi[top]), 4))
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
            # ub holds no NaN (sane_bound) and best.value none (sane_witness): every box whose
            # bound may beat the witness stays, +inf boxes always.
            keep = ub > best.value
            if not bool(keep.all()):
                pruned_max = upper_of(pruned_max, float(ub[~keep].max()))
            lo, hi, ub, score = lo[keep], hi[keep], ub[keep], score[keep]
    except KeyboardInterrupt:
        status = "interrupted"
    upper = upper_of(float(ub.max()) if ub.numel() else -math.inf, pruned_max, best.value)
    return BabOutcome(best.value, upper, best, status, seen, rounds)


def best_of(first: BabOutcome, second: BabOutcome) -> BabOutcome:
    """Two searches for the same maximum: the better witness, the smaller of the two sound
    upper bounds (never below the lower one), the second's status, the counts added."""
    witness = second.witness if second.lower > first.lower else first.witness
    lower = lower_of(first.lower, second.lower)
    upper = upper_of(tightest(first.upper, second.upper), lower)
    boxes, rounds = first.boxes + second.boxes, first.rounds + second.rounds
    return BabOutcome(lower, upper, witness, second.status, boxes, rounds)


def _children_per_box(d: int) -> int:
    """Children of one split box: ``2**d`` up to three coordinates (``_split``), else 2."""
    return 2**d if d <= 3 else 2


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
