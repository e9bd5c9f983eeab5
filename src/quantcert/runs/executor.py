"""Where the units of a batch analysis run: one interface, two executors, and ``run_units``.

- ``Executor.map(fn, units)`` yields ``(i, fn(units[i]))`` pairs as units finish, in any
  order (each ``i`` once).
- ``InProcess()`` (the default): one unit after another in this process, in order.
- ``DaskExecutor("tcp://host:port")``: a ``dask.distributed`` scheduler; ``fn`` and the units
  are pickled (cloudpickle) to its workers. A worker that dies mid-unit (killed, out of
  memory) costs nothing: the scheduler runs its units again on another worker (up to
  ``distributed.scheduler.allowed-failures`` times, then ``KilledWorker``). A scheduler that
  cannot be reached within ``timeout`` seconds is an ``InputError`` (one line).
- ``run_units(executor, store, study, fn, units)``: skips the units already in the store,
  records each new one as it finishes, and returns every result in the units' order, so a
  resumed run returns exactly what an uninterrupted one does.
"""

from __future__ import annotations

import re
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from quantcert.errors import InputError
from quantcert.runs.store import Store, StudyKey

U = TypeVar("U")
R = TypeVar("R")
#: ``progress(done, total)``: called once before the first unit runs and after each one.
Progress = Callable[[int, int], None]
_ADDRESS = re.compile(r"^tcp://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class Executor(ABC):
    """Runs ``fn`` over units; a context manager (``close`` releases what it holds)."""

    name = "executor"

    @abstractmethod
    def map(self, fn: Callable[[U], R], units: Sequence[U]) -> Iterator[tuple[int, R]]:
        """``(i, fn(units[i]))`` for every ``i``, as each finishes (any order)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections or workers (nothing for ``InProcess``)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class InProcess(Executor):
    """Every unit in this process, in order."""

    name = "in-process"

    def map(self, fn: Callable[[U], R], units: Sequence[U]) -> Iterator[tuple[int, R]]:
        for i, unit in enumerate(units):
            yield i, fn(unit)

    def close(self) -> None:
        return None


def check_address(address: str) -> str:
    """``address`` if it reads ``tcp://HOST:PORT`` (port 1-65535); ``InputError`` else."""
    match = _ADDRESS.match(address.strip())
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise InputError(f"--scheduler wants tcp://HOST:PORT, got {address!r}")
    return address.strip()


class DaskExecutor(Executor):
    """Units on the workers of the ``dask.distributed`` scheduler at ``address``
    (``tcp://host:port``), connected at construction (``timeout`` seconds at most)."""

    name = "dask"

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        try:
            from distributed import Client as DaskClient
        except ImportError:
            raise InputError(
                "--scheduler needs dask.distributed: pip install 'quantcert[dask]'"
            ) from None
        client: Any = DaskClient
        self.address = check_address(address)
        try:
            self.client: Any = client(self.address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise InputError(
                f"cannot reach the dask scheduler at {self.address} within {timeout:g} s "
                f"({type(exc).__name__})"
            ) from None

    def map(self, fn: Callable[[U], R], units: Sequence[U]) -> Iterator[tuple[int, R]]:
        from distributed import as_completed as completed

        as_completed: Any = completed
        if not units:
            return
        with warnings.catch_warnings():
            # The units travel inside the task graph (not scattered): the scheduler can then
            # rerun a unit whose worker died, which it cannot for scattered data.
            warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
            futures = self.client.map(fn, list(units), pure=False)
        index = {future.key: i for i, future in enumerate(futures)}
        try:
            finished = as_completed(futures, loop=self.client.loop, with_results=True)
            for future, result in finished:
                yield index[future.key], result
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def close(self) -> None:
        self.client.close()


def _timed(fn: Callable[[U], R]) -> Callable[[U], tuple[R, float]]:
    """``fn`` returning ``(fn(unit), seconds)``: the unit's own run time, where it ran. A
    closure, so cloudpickle sends it by value: workers need not import quantcert for it."""

    def timed(unit: U) -> tuple[R, float]:
        start = time.perf_counter()
        value = fn(unit)
        return value, time.perf_counter() - start

    return timed


def executor_for(scheduler: str | None, timeout: float = 5.0) -> Executor:
    """``DaskExecutor(scheduler)`` when an address is given, else ``InProcess()``."""
    return InProcess() if scheduler is None else DaskExecutor(scheduler, timeout)


def run_units(
    executor: Executor,
    store: Store | None,
    study: StudyKey | None,
    fn: Callable[[U], Any],
    units: Sequence[U],
    key: Callable[[U], str] = str,
    progress: Progress | None = None,
) -> list[Any]:
    """``[fn(u) for u in units]``, computing only the units whose ``key(u)`` the store does
    not hold for ``study`` and recording each as it finishes (``store=None``: nothing kept).
    Results come back as the store reads them (``Store.record``), so resumed and fresh runs
    agree exactly. Keys must be unique."""
    keys = [key(u) for u in units]
    if len(set(keys)) != len(keys):
        raise ValueError("unit keys must be unique")
    if (store is None) != (study is None):
        raise ValueError("give both a store and a study, or neither")
    done = {} if store is None or study is None else store.done(study)
    results: dict[int, Any] = {i: done[k] for i, k in enumerate(keys) if k in done}
    pending = [i for i in range(len(units)) if i not in results]
    if progress is not None:
        progress(len(results), len(units))
    for j, (value, seconds) in executor.map(_timed(fn), [units[i] for i in pending]):
        i = pending[j]
        if store is not None and study is not None:
            value = store.record(study, keys[i], value, seconds)
        results[i] = value
        if progress is not None:
            progress(len(results), len(units))
    return [results[i] for i in range(len(units))]
