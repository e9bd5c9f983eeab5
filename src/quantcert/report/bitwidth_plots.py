"""The bar chart of ``quantcert bitwidth``: certified and empirical weight bits per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def plot_layer_bits(result: dict[str, Any], path: Path) -> None:
    """Bars per layer (the model's order): certified bits, and the empirical bits beside
    them; an infeasible layer is drawn at the ladder's top, hatched."""
    layers = result["layers"]
    names = [layer["name"] for layer in layers]
    certified = [layer["weights"].get("bits") for layer in layers]
    empirical = [layer["weights_empirical_bits"] for layer in layers]
    top = max([b for b in certified + empirical if b] + [16])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.2))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [b or top for b in certified], 0.4, label="certified",
           hatch=None, color="#1f77b4")  # fmt: skip
    ax.bar([x + 0.2 for x in xs], [b or 0 for b in empirical], 0.4, label="empirical (measured)",
           color="#ff7f0e")  # fmt: skip
    for x, b in zip(xs, certified, strict=True):
        if b is None:
            ax.bar(x - 0.2, top, 0.4, fill=False, hatch="//", edgecolor="k")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("weight bits")
    ax.set_title(f"{result['target']}: bits per layer")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pareto(result: dict[str, Any], path: Path) -> None:
    """Model size (weight bits) against the accuracy drop, certified (upper bound of the
    drop) and measured, for the uniform widths judged and the mixed assignment."""
    ladder = result.get("uniform_ladder") or []
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    size = [p["weight_bits"] / 8 / 1024 for p in ladder]
    ax.plot(size, [100 * p["certified_drop"] for p in ladder], "o-", label="uniform, certified")
    ax.plot(size, [100 * p["measured_drop"] for p in ladder], "s--", label="uniform, measured")
    for p, s in zip(ladder, size, strict=True):
        ax.annotate(str(p["bits"]), (s, 100 * p["certified_drop"]), textcoords="offset points",
                    xytext=(3, 3), fontsize=7)  # fmt: skip
    mixed = result.get("mixed") or {}
    if mixed.get("status") == "verified":
        kib = mixed["cost"]["bytes"] / 1024
        fa = result["float_accuracy"]
        ax.plot([kib], [100 * (fa - mixed["certificate"]["lower"])], "*", ms=12,
                label="mixed, certified")  # fmt: skip
        ax.plot([kib], [100 * (fa - mixed["measured"])], "x", ms=9, label="mixed, measured")
    ax.set_xlabel("weights (KiB)")
    ax.set_ylabel("accuracy drop (points)")
    ax.set_title(f"{result['target']}: size against drop")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
