"""DeepFool (Moosavi-Dezfooli et al., CVPR 2016; seed 003 section 4.1): the multi-class L2
attack that linearises the classifier around the current point and steps to the nearest
linearised decision boundary, until the predicted label changes.

Conventions (those of the reference implementation and of foolbox's ``L2DeepFoolAttack``):
the candidate classes are the top-``candidates`` classes at the clean point (the first one
is the clean prediction ``k0``); each step is ``r_i = (|f_k| + 1e-4) / |w_k|^2 * w_k`` with
``f_k = l_k - l_k0``, ``w_k = grad f_k`` and ``k`` the candidate with the smallest
``|f_k| / |w_k|``; the iterate is ``x0 + (1 + overshoot) * sum_i r_i`` (clipped to ``bounds``
when given). An image whose label changed is frozen; the others continue up to
``max_iter`` steps. Everything is float64 and batched over images and candidate classes: the
per-class gradients come from one forward pass whose graph is pulled back once per
candidate class (or in one vmapped pass, ``vmap_classes=True``; see ``boundary_gradients``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from quantcert.network import Network
from quantcert.ops.base import DTYPE

#: ``fn(x, index)``: logits ``(N, K)`` of the inputs ``x`` ``(N, *shape)``, which are the
#: images at positions ``index`` ``(N,)`` of the batch being attacked (so a function of a
#: hidden layer can look up the clean values of the other branches of a DAG).
LogitsFn = Callable[[Tensor, Tensor], Tensor]

#: Added to each step's distance, as in the reference implementation and foolbox.
STEP_EPS = 1e-4


@dataclass(frozen=True)
class DeepFoolResult:
    """Per image: ``perturbation`` (N, *shape) = x_adv - x, ``norm`` (N,) its L2 norm,
    ``flipped`` (N,) bool, ``iterations`` (N,) steps taken, ``original`` / ``adversarial``
    (N,) the predicted classes at x and x_adv, ``logits`` / ``adv_logits`` (N, K)."""

    perturbation: Tensor
    norm: Tensor
    flipped: Tensor
    iterations: Tensor
    original: Tensor
    adversarial: Tensor
    logits: Tensor
    adv_logits: Tensor

    @property
    def success_rate(self) -> float:
        return float(self.flipped.double().mean()) if self.flipped.numel() else 0.0


def as_logits_fn(model: Network | LogitsFn) -> LogitsFn:
    """A ``Network`` becomes ``(x, index) -> net.logits(x)``; a callable is kept."""
    if isinstance(model, Network):
        net = model
        return lambda x, index: net.logits(x)
    return model


def boundary_gradients(
    fn: LogitsFn, x: Tensor, index: Tensor, classes: Tensor, vmap_classes: bool = False
) -> tuple[Tensor, Tensor]:
    """For ``x`` (N, *shape) and per image its classes (N, C) (clean class first): the logit
    differences ``f`` (N, C-1) = l_k - l_k0 and their gradients ``w`` (N, C-1, *shape).

    One forward pass, then the C-1 cotangents ``e_k - e_k0`` are pulled back through the
    same graph: one backward pass each (default; measured faster on CPU, notably for
    convolutions), or all at once with ``vmap_classes`` (``is_grads_batched``)."""
    xg = x.detach().requires_grad_(True)
    n, c = classes.shape
    with torch.enable_grad():
        logits = fn(xg, index)
        cot = torch.zeros((c - 1, n, logits.shape[1]), dtype=logits.dtype)
        cot.scatter_(2, classes[:, 1:].T.unsqueeze(2), 1.0)
        cot.scatter_add_(
            2, classes[:, :1].T.expand(c - 1, n).unsqueeze(2), -torch.ones_like(cot[..., :1])
        )
        if vmap_classes:
            (jac,) = torch.autograd.grad(logits, xg, cot, is_grads_batched=True)
        else:
            jac = torch.stack(
                [
                    torch.autograd.grad(logits, xg, cot[k], retain_graph=k < c - 2)[0]
                    for k in range(c - 1)
                ]
            )
    f = logits.detach().gather(1, classes)
    return f[:, 1:] - f[:, :1], jac.transpose(0, 1)


def _step(f: Tensor, w: Tensor) -> Tensor:
    """One DeepFool step (N, *shape) from the logit differences ``f`` (N, C-1) and their
    gradients ``w`` (N, C-1, *shape): to the nearest linearised boundary, plus ``STEP_EPS``."""
    n = f.shape[0]
    flat = w.reshape(n, f.shape[1], -1)
    wn = torch.linalg.vector_norm(flat, dim=2)
    dist = f.abs() / (wn + 1e-8)
    best = dist.argmin(1)
    rows = torch.arange(n)
    scale = (dist[rows, best] + STEP_EPS) / (wn[rows, best] + 1e-8)
    step: Tensor = scale.unsqueeze(1) * flat[rows, best]
    return step.reshape(n, *w.shape[2:])


def deepfool(
    model: Network | LogitsFn,
    x: Tensor,
    overshoot: float = 0.02,
    max_iter: int = 50,
    candidates: int | None = None,
    bounds: tuple[float, float] | None = None,
    vmap_classes: bool = False,
) -> DeepFoolResult:
    """Run DeepFool on the batch ``x`` (N, *shape) float64. ``candidates`` limits the classes
    tried to the top ones at x (all when None); ``bounds`` clips the iterates (the thesis'
    Eq. 4.1 has no domain constraint: None). Returns the perturbation found per image.

    Only images whose label has not changed yet are differentiated: after each step a cheap
    forward pass (no gradients) decides which images go on."""
    fn = as_logits_fn(model)
    x0 = x.detach().to(DTYPE)
    n = x0.shape[0]
    everyone = torch.arange(n)
    with torch.no_grad():
        logits0 = fn(x0, everyone)
    k = logits0.shape[1] if candidates is None else min(candidates, logits0.shape[1])
    if k < 2:
        raise ValueError("DeepFool needs at least two classes")
    classes = logits0.argsort(1, descending=True)[:, :k]
    original = classes[:, 0]
    r_tot = torch.zeros_like(x0)
    x_adv = x0.clone()
    adv_logits = logits0.clone()
    iterations = torch.zeros(n, dtype=torch.long)
    active = everyone
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        f, w = boundary_gradients(fn, x_adv[active], active, classes[active], vmap_classes)
        r_tot[active] += _step(f, w)
        x_adv[active] = x0[active] + (1 + overshoot) * r_tot[active]
        if bounds is not None:
            x_adv[active] = x_adv[active].clamp(bounds[0], bounds[1])
        iterations[active] += 1
        with torch.no_grad():
            adv_logits[active] = fn(x_adv[active], active)
        active = active[adv_logits[active].argmax(1) == original[active]]
    delta = x_adv - x0
    adversarial = adv_logits.argmax(1)
    return DeepFoolResult(
        perturbation=delta,
        norm=torch.linalg.vector_norm(delta.reshape(n, -1), dim=1),
        flipped=adversarial != original,
        iterations=iterations,
        original=original,
        adversarial=adversarial,
        logits=logits0,
        adv_logits=adv_logits,
    )
