"""Seed 003's figures for the kappa analysis, drawn with matplotlib's Agg canvas (no pyplot,
no display): one panel per network, like the thesis' (a)/(b) sub-figures.

- Fig. 4.3: relative DeepFool perturbation ``|dx| / |x|`` per image (log scale).
- Figs. 5.1 / 5.3: kappa per image (DeepFool / random), the smallest marked with a red
  triangle and the largest with a yellow square (log scale).
- Fig. 5.2: histogram of kappa over the images (log-spaced bins), mean and median marked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Panel = Callable[[Axes, np.ndarray, str], None]


def _finite(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image indices and values where the value is finite and positive (log axes)."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(v) & (v > 0))
    return idx, v[idx]


def _frame(ax: Axes, title: str, xlabel: str, ylabel: str, values: np.ndarray) -> bool:
    """Title and axis labels; False (with a note on the panel) when there is nothing to plot."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if values.size == 0:
        ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")
        return False
    return True


def kappa_panel(ax: Axes, kappa: np.ndarray, title: str) -> None:
    """Kappa per image: blue circles, min (red triangle) and max (yellow square)."""
    idx, v = _finite(kappa)
    if not _frame(ax, title, "image", "kappa", v):
        return
    ax.scatter(
        idx,
        v,
        s=6,
        facecolors="none",
        edgecolors="tab:blue",
        linewidths=0.6,
        label="kappa per image",
    )
    lo, hi = int(np.argmin(v)), int(np.argmax(v))
    ax.scatter(
        [idx[lo]], [v[lo]], marker="^", s=60, color="red", zorder=3, label=f"min {v[lo]:.3g}"
    )
    ax.scatter(
        [idx[hi]],
        [v[hi]],
        marker="s",
        s=60,
        color="gold",
        edgecolors="black",
        zorder=3,
        label=f"max {v[hi]:.3g}",
    )
    ax.set_yscale("log")
    ax.legend(loc="best", fontsize=7)


def histogram_panel(ax: Axes, kappa: np.ndarray, title: str) -> None:
    """Distribution of the images over kappa (log-spaced bins)."""
    _, v = _finite(kappa)
    if not _frame(ax, title, "kappa", "images", v):
        return
    lo, hi = math.log10(v.min()), math.log10(v.max())
    bins = np.logspace(lo, hi if hi > lo else lo + 1e-3, 40)
    ax.hist(v, bins=bins.tolist(), color="tab:blue", alpha=0.8)
    ax.axvline(float(v.mean()), color="red", linestyle="--", label=f"mean {v.mean():.3g}")
    ax.axvline(
        float(np.median(v)), color="black", linestyle=":", label=f"median {np.median(v):.3g}"
    )
    ax.set_xscale("log")
    ax.legend(loc="best", fontsize=7)


def perturbation_panel(ax: Axes, relative: np.ndarray, title: str) -> None:
    """Relative DeepFool perturbation ``|dx| / |x|`` per image (log scale)."""
    idx, v = _finite(relative)
    if not _frame(ax, title, "image", "|dx| / |x|", v):
        return
    ax.scatter(idx, v, s=6, color="tab:blue")
    ax.axhline(float(v.mean()), color="red", linestyle="--", label=f"mean {v.mean():.3g}")
    ax.set_yscale("log")
    ax.legend(loc="best", fontsize=7)


def panels_figure(series: Mapping[str, np.ndarray], panel: Panel, path: Path, title: str) -> Path:
    """One panel per entry of ``series`` (network name -> values), saved as PNG at ``path``."""
    n = max(1, len(series))
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(6.0 * cols, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, values) in enumerate(series.items()):
        panel(fig.add_subplot(rows, cols, i + 1), np.asarray(values), name)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def thesis_figures(
    deepfool: Mapping[str, np.ndarray],
    random: Mapping[str, np.ndarray],
    relative: Mapping[str, np.ndarray],
    out_dir: Path,
) -> dict[str, Path]:
    """Figs. 4.3, 5.1, 5.2 and 5.3 for several networks, written into ``out_dir``."""
    return {
        "fig_4_3": panels_figure(
            relative,
            perturbation_panel,
            out_dir / "fig_4_3_perturbation.png",
            "Fig. 4.3: relative DeepFool perturbation |dx|/|x|",
        ),
        "fig_5_1": panels_figure(
            deepfool,
            kappa_panel,
            out_dir / "fig_5_1_kappa_deepfool.png",
            "Fig. 5.1: kappa per image, DeepFool perturbations",
        ),
        "fig_5_2": panels_figure(
            deepfool,
            histogram_panel,
            out_dir / "fig_5_2_kappa_histogram.png",
            "Fig. 5.2: distribution of the images over kappa (DeepFool)",
        ),
        "fig_5_3": panels_figure(
            random,
            kappa_panel,
            out_dir / "fig_5_3_kappa_random.png",
            "Fig. 5.3: kappa per image, random perturbations",
        ),
    }
