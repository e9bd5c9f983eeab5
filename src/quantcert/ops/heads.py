"""Softmax head (interval transfer only; the engine bounds the logits linearly)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from quantcert.ops.base import REL_MARGIN, Box, Op


class Softmax(Op):
    nonlinear = True

    def forward(self, xs: Sequence[Tensor], params: Mapping[str, Tensor]) -> Tensor:
        return torch.softmax(xs[0], dim=-1)

    def interval(self, boxes: Sequence[Box], radius: Mapping[str, Tensor]) -> Box:
        # p_i = 1 / (1 + sum_{j != i} exp(z_j - z_i)), monotone up in z_i, down in z_j.
        lo, hi = boxes[0].lo, boxes[0].hi
        diff_hi = hi.unsqueeze(-2) - lo.unsqueeze(-1)  # [i, j] = hi_j - lo_i
        diff_lo = lo.unsqueeze(-2) - hi.unsqueeze(-1)
        eye = torch.eye(lo.shape[-1], dtype=torch.bool)
        p_lo = 1 / torch.exp(diff_hi.masked_fill(eye, 0.0)).sum(-1)
        p_hi = 1 / torch.exp(diff_lo.masked_fill(eye, 0.0)).sum(-1)
        return Box((p_lo - REL_MARGIN).clamp(min=0), (p_hi + REL_MARGIN).clamp(max=1))
