"""Progress on stderr: a live status line for anytime searches (the current
``[lower, upper]``), and progress of batch runs over units.

- ``BoundsProgress``: a tqdm status line, only on a terminal.
- ``UnitProgress``: callable as ``progress(done, total)`` (``quantcert.runs.run_units``): a
  live tqdm bar when the stream is a terminal, else plain lines (``label: 30/100 units (30%),
  12 s``) through the ``quantcert.progress`` logger, at most one each ``every`` seconds plus
  the last; nothing when quiet.
- ``configure_logging(quiet)``: the ``quantcert`` loggers write their messages, one flushed
  line each, to stderr; ``quiet=True`` keeps only warnings and errors (no progress either).
  ``logging_to_stderr(quiet)``: the same for one ``with`` block.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

#: The logger of progress lines; ``configure_logging(quiet=True)`` silences it.
log = logging.getLogger("quantcert.progress")
_HANDLER_NAME = "quantcert-stderr"


def configure_logging(quiet: bool = False, stream: TextIO | None = None) -> logging.Handler:
    """Send the ``quantcert`` loggers' messages to ``stream`` (default stderr) as plain lines,
    INFO and above, or WARNING and above when ``quiet``. Calling it again replaces the handler
    it installed (idempotent); returns that handler."""
    root = logging.getLogger("quantcert")
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    return handler


@contextmanager
def logging_to_stderr(quiet: bool = False, stream: TextIO | None = None) -> Iterator[None]:
    """``configure_logging(quiet, stream)`` for the ``with`` block only: the handler is removed
    and the ``quantcert`` logger's level restored afterwards."""
    root = logging.getLogger("quantcert")
    level = root.level
    handler = configure_logging(quiet, stream)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def is_quiet() -> bool:
    """True when progress lines would be dropped (``configure_logging(quiet=True)``)."""
    return not log.isEnabledFor(logging.INFO)


class UnitProgress:
    """``progress(done, total)`` for a batch run labelled ``label``: a tqdm bar on ``stream``
    (default stderr) when it is a terminal (or ``live=True``), else a plain line through the
    ``quantcert.progress`` logger at most every ``every`` seconds and when ``done == total``.
    Silent when quiet, and so until ``configure_logging`` (or the application's own logging
    set-up) enables INFO: a library prints nothing by itself. ``close`` ends the bar."""

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        every: float = 10.0,
        live: bool | None = None,
        unit: str = "units",
    ) -> None:
        self.label, self.every, self.unit = label, every, unit
        self.stream = sys.stderr if stream is None else stream
        self.quiet = is_quiet()
        self.live = (not self.quiet) and (_is_tty(self.stream) if live is None else live)
        self.bar: tqdm[None] | None = None
        self.start = time.perf_counter()
        self.last = -float("inf")

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.live:
            if self.bar is None:
                self.bar = tqdm(
                    total=total, initial=done, desc=self.label, file=self.stream, unit=self.unit
                )
            self.bar.update(done - self.bar.n)
            return
        now = time.perf_counter()
        if done < total and now - self.last < self.every:
            return
        self.last = now
        share = 100.0 * done / total if total else 100.0
        log.info(
            "%s: %d/%d %s (%.0f%%), %.0f s",
            self.label,
            done,
            total,
            self.unit,
            share,
            now - self.start,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


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
