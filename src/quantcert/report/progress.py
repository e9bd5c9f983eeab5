"""A live status line for anytime searches: the current ``[lower, upper]`` on stderr."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class BoundsProgress:
    """Callable as ``progress(lower, upper, boxes)``; shows a tqdm status line, at most a few
    updates per second, only when stderr is a terminal (or ``force``)."""

    def __init__(self, label: str, force: bool = False) -> None:
        self.enabled = force or sys.stderr.isatty()
        self.bar = tqdm(total=None, bar_format="{desc}", disable=not self.enabled, file=sys.stderr)
        self.label = label
        self.last = 0.0

    def __call__(self, lower: float, upper: float, boxes: int) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        self.bar.set_description_str(
            f"{self.label}: lower {lower:.6g}  upper {upper:.6g}  gap {upper - lower:.3g}  "
            f"boxes {boxes}"
        )

    def close(self) -> None:
        """Remove the status line (before the result is printed)."""
        self.bar.close()
