"""Branch and bound over the joint box of inputs and parameters.

Bounds with a whole parameter box relax every product of a perturbed weight and a perturbed
activation; across layers these products leave a gap that no input or ReLU split closes
(seed 000's local queries at a point, large ``delta``). Here chosen scalar parameters become
coordinates of the box that ``bab.maximise`` splits, next to the input coordinates: a sub-box
of a parameter is a new centre and a smaller radius, and every sub-box is bounded in one
batch by re-centring the perturbed copy of the difference network (``Op.with_params``).

Soundness: the root box of each chosen parameter is ``[theta0 - D, theta0 + D]`` rounded
outward, and each sub-box ``[a, b]`` becomes centre ``(a + b) / 2`` and a radius rounded up
to cover both ends, so the children always cover the real parameter box.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from quantcert.engines.attack import Objective, Witness, search
from quantcert.engines.bab import BabOutcome, Memory, best_witness, maximise
from quantcert.engines.bounds import Radii
from quantcert.engines.pair import PERTURBED
from quantcert.engines.perturbation import Perturbation, inner_limits
from quantcert.network import Network
from quantcert.ops.base import DTYPE, Box

#: Perturbation sets of at most this many scalars are split automatically, each scalar a
#: coordinate. Larger sets are not: splitting even the 64 most sensitive of mnist-net_256x2's
#: 269k scalars did not move its bound (docs/benchmarks.md); ``choose_parameters`` with a
#: sensitivity still builds such a layout for the API.
SPLIT_LIMIT = 512
#: Batched parameter tensors cost B times their size; keep B * size under this.
BATCH_ELEMENTS = 4_000_000


def splits_parameters(pert: Perturbation) -> bool:
    """Small perturbation sets are split as coordinates of the branch-and-bound box."""
    return 0 < pert.count <= SPLIT_LIMIT


@dataclass(frozen=True)
class JointLayout:
    """The flat joint coordinates: the input (``n_x`` values), then the chosen parameters.

    ``index[k]`` holds flat indices into the tensor ``names[k]`` (``"<node>.<param>"``)."""

    net: Network
    pert: Perturbation
    names: tuple[str, ...]
    index: tuple[Tensor, ...]

    @property
    def n_x(self) -> int:
        return int(torch.Size(self.net.input_shape).numel())

    @property
    def n_theta(self) -> int:
        return sum(int(i.numel()) for i in self.index)

    def batch_size(self) -> int:
        """How many joint boxes to bound at once: every chosen tensor is batched."""
        params = self.net.param_tensors()
        size = sum(int(params[k].numel()) for k in self.names)
        return int(max(8, min(256, BATCH_ELEMENTS // max(size, 1))))

    def root(self, box: Box) -> Box:
        """The joint box (1, n_x + n_theta) of an input box (batch 1)."""
        params = self.net.param_tensors()
        t0 = torch.cat(
            [params[k].flatten()[i] for k, i in zip(self.names, self.index, strict=True)]
        )
        r = torch.cat(
            [self.pert.radius[k].flatten()[i] for k, i in zip(self.names, self.index, strict=True)]
        )
        lo = torch.nextafter(t0 - r, torch.tensor(-torch.inf, dtype=DTYPE))
        hi = torch.nextafter(t0 + r, torch.tensor(torch.inf, dtype=DTYPE))
        return Box(
            torch.cat([box.lo.flatten(1), lo.unsqueeze(0)], 1),
            torch.cat([box.hi.flatten(1), hi.unsqueeze(0)], 1),
        )

    def inputs(self, joint: Box) -> Box:
        """The input part of joint boxes, shaped (B, *input_shape)."""
        shape = (-1, *self.net.input_shape)
        return Box(joint.lo[:, : self.n_x].reshape(shape), joint.hi[:, : self.n_x].reshape(shape))

    def _pieces(self, values: Tensor) -> dict[str, Tensor]:
        out, start = {}, self.n_x
        for name, idx in zip(self.names, self.index, strict=True):
            out[name] = values[:, start : start + idx.numel()]
            start += idx.numel()
        return out

    def parameter_boxes(self, joint: Box) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Centres and radii (B, *shape) of the chosen tensors over the joint boxes."""
        params = self.net.param_tensors()
        lo, hi = self._pieces(joint.lo), self._pieces(joint.hi)
        centres, radii = {}, {}
        for name, idx in zip(self.names, self.index, strict=True):
            c = (lo[name] + hi[name]) / 2
            # Round the radius up so that [c - r, c + r] covers [a, b] in real arithmetic.
            r = torch.nextafter(
                torch.maximum(hi[name] - c, c - lo[name]), torch.tensor(torch.inf, dtype=DTYPE)
            )
            centres[name] = _scatter(params[name], idx, c)
            radii[name] = _scatter(self.pert.radius[name], idx, r)
        return centres, radii

    def attack_limits(self, joint: Box) -> dict[str, tuple[Tensor, Tensor]]:
        """Per joint box, float limits of the chosen tensors for a witness search: the sub-box
        clipped to the limits strictly inside the perturbation set."""
        params = self.net.param_tensors()
        lo, hi = self._pieces(joint.lo), self._pieces(joint.hi)
        out = {}
        for name, idx in zip(self.names, self.index, strict=True):
            inner_lo, inner_hi = inner_limits(params[name], self.pert.radius[name])
            floor, ceil = inner_lo.flatten()[idx], inner_hi.flatten()[idx]
            sub_lo = torch.clamp(lo[name], floor, ceil)
            sub_hi = torch.clamp(hi[name], sub_lo, ceil)
            out[name] = (_scatter(inner_lo, idx, sub_lo), _scatter(inner_hi, idx, sub_hi))
        return out


def _scatter(base: Tensor, idx: Tensor, values: Tensor) -> Tensor:
    """``base`` (*shape) repeated per row of ``values`` (B, k), with the flat entries ``idx``
    replaced by that row: (B, *shape)."""
    out = base.flatten().expand(values.shape[0], -1).clone()
    out[:, idx] = values
    return out.reshape(values.shape[0], *base.shape)


def choose_parameters(
    net: Network,
    pert: Perturbation,
    sensitivity: Mapping[str, Tensor] | None = None,
    limit: int = SPLIT_LIMIT,
) -> JointLayout:
    """Every perturbed scalar when there are at most ``limit``, else the ``limit`` with the
    largest ``radius * |sensitivity|`` (e.g. the objective's gradient at a witness)."""
    scores = []
    for name, r in pert.radius.items():
        s = (
            r.abs()
            if sensitivity is None or name not in sensitivity
            else r * sensitivity[name].abs()
        )
        scores.append(torch.where(r > 0, s, -torch.inf).flatten())
    if not scores:
        return JointLayout(net, pert, (), ())
    flat = torch.cat(scores)
    alive = int((flat > -torch.inf).sum())
    top = flat.topk(min(limit, alive)).indices.sort().values
    names, index, start = [], [], 0
    for name, s in zip(pert.radius, scores, strict=True):
        mine = top[(top >= start) & (top < start + s.numel())] - start
        if mine.numel():
            names.append(name)
            index.append(mine)
        start += s.numel()
    return JointLayout(net, pert, tuple(names), tuple(index))


def _per_node(pair_prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """``{"node.param": t}`` -> ``{prefix + "node": {"param": t}}``."""
    out: dict[str, dict[str, Tensor]] = {}
    for full, value in tensors.items():
        node, param = full.rsplit(".", 1)
        out.setdefault(pair_prefix + node, {})[param] = value
    return out


#: (difference network, possibly re-centred; input boxes; radii) -> upper bounds (B,)
PairBound = Callable[[Network, Box, Radii], Tensor]


@dataclass(frozen=True)
class JointSearch:
    """A maximisation over the joint box. ``bound_pair`` bounds the query's objective on the
    difference network ``pair``; ``objective`` has ``columns`` witness columns, and
    ``rescore`` (optional) values a witness by the query's own objective."""

    layout: JointLayout
    pair: Network
    radii: Radii
    bound_pair: PairBound
    objective: Objective
    columns: int
    rescore: Callable[[Witness], Witness] | None = None

    def bound(self, joint: Box) -> Tensor:
        """Sound upper bounds (B,) of the objective over each joint box."""
        centres, radii = self.layout.parameter_boxes(joint)
        moved = self.pair.with_params(_per_node(PERTURBED, centres))
        all_radii = {k: dict(v) for k, v in self.radii.items()}
        for node, own in _per_node(PERTURBED, radii).items():
            all_radii.setdefault(node, {}).update(own)
        return self.bound_pair(moved, self.layout.inputs(joint), all_radii)

    def attack(self, best: list[Witness]) -> Callable[[Box, int], Witness]:
        """A witness search inside joint boxes, warm-started from ``best[0]`` (updated)."""
        net, pert = self.layout.net, self.layout.pert

        def run(joint: Box, steps: int) -> Witness:
            found = search(
                net,
                pert,
                self.layout.inputs(joint),
                self.objective,
                self.columns,
                restarts=3,  # the best parameters so far, and two random sub-box corners
                steps=steps,
                warm=best[0].params,
                param_box=self.layout.attack_limits(joint),
            )
            if self.rescore is not None:
                found = [self.rescore(w) for w in found]
            top = best_witness(found)
            best[0] = top if top.value > best[0].value else best[0]
            return top

        return run

    def maximise(
        self,
        box: Box,
        start: Witness,
        gap: float,
        deadline: float,
        decided: Callable[[float, float], bool] | None = None,
        progress: Callable[[float, float, int], None] | None = None,
        memory: Memory | None = None,
    ) -> BabOutcome:
        """Branch and bound from the input ``box`` (batch 1) and the whole parameter box.
        ``memory.per_box`` is the bound's cost without parameters; each box's batched
        parameter tensors (centres, radii and the moved copy) are added here."""
        best = [start]
        root = self.layout.root(box)
        if memory is not None:
            params = self.layout.net.param_tensors()
            size = sum(int(params[k].numel()) for k in self.layout.names)
            memory = Memory(memory.limit, memory.per_box + 4 * 8 * size)
        return maximise(
            self.bound,
            self.attack(best),
            root,
            gap,
            deadline,
            batch=self.layout.batch_size(),
            decided=decided,
            initial=start,
            progress=progress,
            split_by_gradient=True,
            memory=memory,
        )
