"""Seed 000's Figs. 6-8, drawn with matplotlib's Agg canvas (no pyplot, no display).

Per model, four panels like the paper's (a)-(d):

- (a, b) local eps (Def. 1) at random inputs, coloured by the certified upper bound, with the
  decision boundary ``f_n = l`` (blue);
- (c, d) local flips (Def. 3) at random inputs: red = a witness flips the label, green = a
  sound bound proves no flip, grey = undecided; the decision boundary (blue) and the two sigma
  lines ``f_n = l + sigma_above`` and ``f_n = l - sigma_below`` (dashed, Def. 5, certified
  upper bounds).

Inputs: ``points`` (N, 2) in data units, a ``Grid`` of the nominal output over the domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

#: Colours of the flip panels: status 1 (flips), 0 (proved robust), -1 (undecided).
FLIP_COLOURS = {1: "tab:red", 0: "tab:green", -1: "0.6"}
FLIP_NAMES = {1: "flippable (witness)", 0: "not flippable (proved)", -1: "undecided"}


@dataclass(frozen=True)
class Grid:
    """The nominal output ``f`` (ny, nx) on the mesh ``x`` (nx,), ``y`` (ny,)."""

    x: np.ndarray
    y: np.ndarray
    f: np.ndarray


@dataclass(frozen=True)
class Axes2D:
    """Axis labels (with units) and the decision level."""

    xlabel: str
    ylabel: str
    level: float


def _frame(ax: Axes, grid: Grid, axes: Axes2D, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(axes.xlabel)
    ax.set_ylabel(axes.ylabel)
    ax.set_xlim(grid.x[0], grid.x[-1])
    ax.set_ylim(grid.y[0], grid.y[-1])
    if grid.f.min() < axes.level < grid.f.max():
        ax.contour(grid.x, grid.y, grid.f, levels=[axes.level], colors="blue", linewidths=1.2)


def eps_panel(
    ax: Axes, points: np.ndarray, eps: np.ndarray, grid: Grid, axes: Axes2D, title: str
) -> None:
    """Local eps (N,) at ``points`` (N, 2) as a colour map, and the decision boundary."""
    _frame(ax, grid, axes, title)
    sc = ax.scatter(points[:, 0], points[:, 1], c=eps, s=7, cmap="viridis")
    ax.figure.colorbar(sc, ax=ax, label="local eps (certified upper)")
    ax.legend(handles=[Line2D([], [], color="blue", label=f"f = {axes.level:g}")], fontsize=7)


def flip_panel(
    ax: Axes,
    points: np.ndarray,
    status: np.ndarray,
    grid: Grid,
    axes: Axes2D,
    sigmas: tuple[float, float],
    title: str,
) -> None:
    """Flip status (N,) in {1, 0, -1} at ``points``, boundary and sigma lines
    (``sigmas`` = (above, below))."""
    _frame(ax, grid, axes, title)
    handles = [Line2D([], [], color="blue", label=f"f = {axes.level:g}")]
    for code in (0, 1, -1):
        sel = status == code
        if sel.any():
            ax.scatter(points[sel, 0], points[sel, 1], s=7, color=FLIP_COLOURS[code])
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="",
                    marker="o",
                    ms=4,
                    color=FLIP_COLOURS[code],
                    label=f"{FLIP_NAMES[code]} ({int(sel.sum())})",
                )
            )
    for sign, value, name in ((1.0, sigmas[0], "above"), (-1.0, sigmas[1], "below")):
        lv = axes.level + sign * value
        if value > 0 and grid.f.min() < lv < grid.f.max():
            ax.contour(
                grid.x,
                grid.y,
                grid.f,
                levels=[lv],
                colors="darkred",
                linestyles="dashed",
                linewidths=1.2,
            )
        handles.append(Line2D([], [], color="darkred", ls="--", label=f"sigma {name} {value:.4g}"))
    ax.legend(handles=handles, fontsize=6, loc="best")


def save(fig: Figure, path: Path) -> str:
    """Write ``fig`` as PNG; returns the path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return str(path)


def panel_figure() -> tuple[Figure, Axes]:
    """One panel (a sub-figure of the paper)."""
    fig = Figure(figsize=(5.0, 4.0), layout="constrained")
    return fig, fig.add_subplot()


@dataclass(frozen=True)
class LocalPanels:
    """What one model's figure shows for one delta: local eps upper bounds (N,), flip status
    (N,) and sigma (above, below) upper bounds."""

    delta: float
    eps: np.ndarray
    status: np.ndarray
    sigmas: tuple[float, float]


def model_figures(
    out: Path,
    fig_no: int,
    model: str,
    points: np.ndarray,
    grid: Grid,
    axes: Axes2D,
    panels: list[LocalPanels],
) -> list[str]:
    """Panels (a, b) eps and (c, d) flips for one or two deltas as separate PNGs
    ``fig{fig_no}{letter}_{model}_....png``, and all four in ``fig{fig_no}_{model}.png``;
    returns the paths."""
    paths = []
    title = f"Fig. {fig_no} {model}"
    cols = len(panels[:2])
    whole = Figure(figsize=(5.0 * cols, 8.0), layout="constrained")
    whole.suptitle(title)
    grid_axes = whole.subplots(2, cols, squeeze=False)
    for row, kind in enumerate(("eps", "flip")):
        for col, p in enumerate(panels[:2]):
            letter = "abcd"[2 * row + col]
            name = f"({letter}) delta = {p.delta:g}: " + (
                "local eps" if kind == "eps" else "flips and sigma"
            )
            fig, ax = panel_figure()
            for target in (ax, grid_axes[row][col]):
                if kind == "eps":
                    eps_panel(target, points, p.eps, grid, axes, f"{title} {name}")
                else:
                    flip_panel(target, points, p.status, grid, axes, p.sigmas, f"{title} {name}")
            paths.append(save(fig, out / f"fig{fig_no}{letter}_{model}_{kind}_{p.delta:g}.png"))
    paths.append(save(whole, out / f"fig{fig_no}_{model}.png"))
    return paths
