"""Batch runs (``quantcert.runs``): the resume store, the executors, resuming after SIGKILL,
a dask.distributed cluster on loopback (a killed worker loses no unit), kappa over a data set
as units (``analyses.kappa_runs``) and the progress helpers (``report.progress``)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from quantcert.errors import InputError
from quantcert.runs import (
    DaskExecutor,
    InProcess,
    Store,
    StudyKey,
    check_address,
    decode,
    encode,
    model_hash,
    run_units,
    same,
)

STUDY = StudyKey.of("0" * 64, {"analysis": "test", "n": 3, "radius": 0.5})
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # for dask worker processes


# --------------------------------------------------------------------- store
_dtypes = st.sampled_from(["<f8", "<f4", "<i8", "|u1", "|b1", ">f8", "<c16"])
_arrays = _dtypes.flatmap(
    lambda d: hnp.arrays(np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
_values = st.recursive(
    _scalars | _arrays,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=_values)
def test_store_round_trips_values_exactly(tmp_path: Path, value: Any) -> None:
    assert same(decode(encode(value)), value)
    with Store.open(tmp_path) as store:
        unit = hashlib.sha256(encode(value).encode()).hexdigest()
        back = store.record(STUDY, unit, value, 0.1)
        assert same(back, value)
    with Store.open(tmp_path) as store:
        assert same(store.done(STUDY)[unit], value)


def test_store_keeps_studies_apart_and_survives_reopening(tmp_path: Path) -> None:
    other = StudyKey.of(STUDY.model, {"n": 3, "radius": 0.5, "analysis": "other"})
    assert StudyKey.of(STUDY.model, {"radius": 0.5, "n": 3, "analysis": "test"}) == STUDY
    with Store.open(tmp_path / "new" / "folder") as store:
        assert store.done(STUDY) == {}
        store.record(STUDY, "0", {"x": np.arange(3.0)})
        store.record(STUDY, "1", -0.0)
        store.record(other, "0", "other")
        store.record(STUDY, "1", 2.5)  # a unit recorded again: the last value wins
    with Store.open(tmp_path / "new" / "folder") as store:
        done = store.done(STUDY)
        assert set(done) == {"0", "1"} and done["1"] == 2.5
        assert np.array_equal(done["0"]["x"], np.arange(3.0))
        assert store.done(other) == {"0": "other"}
        assert [n for _, n in store.studies()] == [2, 1]
        mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_store_refuses_bad_folders_and_files_with_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    not_db = tmp_path / "garbage"
    not_db.mkdir()
    (not_db / "quantcert-runs.sqlite").write_bytes(b"not a database at all" * 100)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    sqlite3.connect(foreign / "quantcert-runs.sqlite").execute("CREATE TABLE t (a)").close()
    other_meta = tmp_path / "other-meta"
    other_meta.mkdir()
    with sqlite3.connect(other_meta / "quantcert-runs.sqlite") as db:
        db.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    for folder in (a_file, a_file / "sub", not_db, foreign, other_meta):
        with pytest.raises(InputError) as err:
            Store.open(folder)
        assert "\n" not in str(err.value) and str(folder) in str(err.value)
    with sqlite3.connect(other_meta / "quantcert-runs.sqlite") as db:  # left as it was
        assert db.execute("SELECT COUNT(*) FROM meta").fetchone() == (0,)
    with pytest.raises(TypeError):
        encode({"bad": object()})
    with pytest.raises(InputError):
        StudyKey.of("m", {"radius": math.nan})


def test_model_hash_is_the_sha256_of_the_file(tmp_path: Path) -> None:
    f = tmp_path / "m.onnx"
    f.write_bytes(bytes(range(256)) * 5000)
    assert model_hash(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(InputError):
        model_hash(tmp_path / "missing.onnx")


# --------------------------------------------------------------------- run_units
def sweep_value(i: int) -> dict[str, Any]:
    """A small unit's deterministic result (floats that JSON could easily get wrong)."""
    return {
        "i": i,
        "x": np.sin(np.arange(5.0) * i + 0.1) / 3.0,
        "f32": np.float32(i) / np.arange(1, 4, dtype=np.float32),
        "s": math.exp(-i) / 7.0,
        "neg": -0.0,
        "nan": math.nan,
    }


def test_run_units_skips_recorded_units_and_keeps_order(tmp_path: Path) -> None:
    calls: list[int] = []

    def fn(i: int) -> dict[str, Any]:
        calls.append(i)
        return sweep_value(i)

    with Store.open(tmp_path) as store:
        for i in (1, 4):
            store.record(STUDY, str(i), sweep_value(i))
        seen: list[tuple[int, int]] = []
        out = run_units(
            InProcess(), store, STUDY, fn, list(range(6)), progress=lambda d, t: seen.append((d, t))
        )
        assert calls == [0, 2, 3, 5] and seen[0] == (2, 6) and seen[-1] == (6, 6)
        assert same(out, run_units(InProcess(), None, None, sweep_value, list(range(6))))
        calls.clear()
        again = run_units(InProcess(), store, STUDY, fn, list(range(6)))
        assert calls == [] and same(again, out)
    with pytest.raises(ValueError):
        run_units(InProcess(), None, None, fn, [1, 1])


def failing_at_3(i: int) -> int:
    if i == 3:
        raise RuntimeError("unit 3 failed")
    return i


def test_a_failing_unit_keeps_the_units_before_it(tmp_path: Path, threads_cluster: str) -> None:
    with Store.open(tmp_path) as store:
        with pytest.raises(RuntimeError, match="unit 3"):
            run_units(InProcess(), store, STUDY, failing_at_3, list(range(6)))
        assert set(store.done(STUDY)) == {"0", "1", "2"}
        with DaskExecutor(threads_cluster) as dask, pytest.raises(RuntimeError, match="unit 3"):
            run_units(dask, store, STUDY, failing_at_3, list(range(6)))


SWEEP = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from quantcert.runs import InProcess, Store, StudyKey, run_units
    from test_runs import STUDY, sweep_value

    folder, log = sys.argv[1], sys.argv[2]

    def unit(i):
        with open(log, "a") as f:
            f.write(f"{i}\\n")
        time.sleep(0.15)
        return sweep_value(i)

    with Store.open(folder) as store:
        run_units(InProcess(), store, STUDY, unit, list(range(int(sys.argv[3]))))
    """
)


def test_resume_after_sigkill_recomputes_nothing_and_matches(tmp_path: Path) -> None:
    n = 24
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP)
    log = tmp_path / "killed.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    folder = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, str(script), str(folder), str(log), str(n)], env=env)
    try:
        recorded = _wait_for_units(folder, 5, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with Store.open(folder) as store:
        kept = set(store.done(STUDY))
        started = {int(line) for line in log.read_text().split()}
        assert len(kept) >= len(recorded) >= 5 and len(kept) < n
        assert len(started - {int(k) for k in kept}) <= 1  # only the unit in flight is lost
        again: list[int] = []

        def unit(i: int) -> dict[str, Any]:
            again.append(i)
            return sweep_value(i)

        resumed = run_units(InProcess(), store, STUDY, unit, list(range(n)))
    assert not {str(i) for i in again} & kept and len(again) == n - len(kept)
    with Store.open(tmp_path / "fresh") as store:
        fresh = run_units(InProcess(), store, STUDY, sweep_value, list(range(n)))
    assert same(resumed, fresh)
    assert encode(resumed) == encode(fresh)


def _wait_for_units(folder: Path, count: int, proc: subprocess.Popen[bytes]) -> set[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep ended before it was killed"
        if (folder / "quantcert-runs.sqlite").exists():
            with Store.open(folder) as store:
                done = set(store.done(STUDY))
            if len(done) >= count:
                return done
        time.sleep(0.05)
    raise AssertionError("the sweep recorded too few units")


# --------------------------------------------------------------------- dask
def slow_square(i: int) -> dict[str, Any]:
    time.sleep(0.25)
    return sweep_value(i)


@pytest.fixture(scope="module")
def threads_cluster() -> Iterator[str]:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield cluster.scheduler_address


def test_dask_gives_the_in_process_results(threads_cluster: str, tmp_path: Path) -> None:
    units = list(range(20))
    with Store.open(tmp_path) as store, DaskExecutor(threads_cluster) as dask:
        out = run_units(dask, store, STUDY, sweep_value, units)
        assert len(store.done(STUDY)) == 20
    local = run_units(InProcess(), None, None, sweep_value, units)
    assert same(out, local)
    with DaskExecutor(threads_cluster) as dask:
        assert sorted(dask.map(lambda u: u * 2, [3, 1, 2])) == [(0, 6), (1, 2), (2, 4)]


@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
def test_a_killed_dask_worker_loses_no_unit(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        DaskExecutor(cluster.scheduler_address, timeout=30) as dask,
    ):
        pids = list(dask.client.run(os.getpid).values())
        killed: list[int] = []

        def kill_one(done: int, total: int) -> None:
            if done >= 2 and not killed:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        with Store.open(tmp_path) as store:
            out = run_units(dask, store, STUDY, slow_square, list(range(12)), progress=kill_one)
            assert len(store.done(STUDY)) == 12
    assert killed
    assert same(out, [sweep_value(i) for i in range(12)])


def test_an_unreachable_scheduler_is_a_fast_input_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        DaskExecutor(f"tcp://127.0.0.1:{port}", timeout=1.0)
    assert time.perf_counter() - start < 4 and "\n" not in str(err.value)
    for bad in ("localhost:8786", "tcp://host", "tcp://h:0", "http://h:1", "tcp://h:70000"):
        with pytest.raises(InputError):
            check_address(bad)
    assert check_address("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"


# --------------------------------------------------------------------- kappa as units
# The package's data, named here (not from conftest) so the SIGKILL sweep imports little.
DATA = Path(__file__).resolve().parents[1] / "src" / "quantcert" / "data"
MLP = DATA / "models" / "mnistfc" / "mnist-net_256x2.onnx"
MNIST = DATA / "mnist_test.npz"


def test_kappa_units_resume_and_equal_the_plain_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantcert.analyses import kappa_runs
    from quantcert.analyses.kappa import kappa
    from quantcert.analyses.kappa_data import load_images
    from quantcert.analyses.lipschitz import lipschitz_bound
    from quantcert.intake import load

    net = load(MLP)
    data = load_images(MNIST, net.input_shape, 8)
    model_id = kappa_runs.model_identity(str(MLP))
    assert model_id == model_hash(MLP)
    plain = kappa(net, data.images, data.labels, method="deepfool", progress=False)
    bound = lipschitz_bound(net)
    whole = kappa_runs.kappa_runs(
        net, data.images, data.labels, "deepfool", model_id, progress=False, bound=bound
    )
    assert np.array_equal(plain.kappa, whole.kappa)
    assert json.dumps(plain.to_dict() | {"time_s": 0}) == json.dumps(
        whole.to_dict() | {"time_s": 0}
    )
    calls: list[int] = []
    real = kappa_runs.measure_unit

    def counted(net: Any, draws: int, seed: int, chunk: Any, certify: Any) -> dict[str, Any]:
        calls.append(chunk.start)
        return real(net, draws, seed, chunk, certify)

    monkeypatch.setattr(kappa_runs, "measure_unit", counted)
    for method, step in (("deepfool", 4), ("random", 4), ("certified", 2)):
        x = data.images[: 2 * step]
        options: dict[str, Any] = {"step": step, "progress": False, "bound": bound}
        fresh = kappa_runs.kappa_runs(net, x, None, method, model_id, **options)
        with Store.open(tmp_path / method) as store:
            for n in (step, 2 * step):  # a run over the first chunk, then one over both
                calls.clear()
                resumed = kappa_runs.kappa_runs(
                    net, x[:n], None, method, model_id, store, **options
                )
        assert calls == [step]  # the first chunk came from the store
        for name in ("kappa", "gain", "relative_perturbation", "flipped", "predicted"):
            assert same(getattr(resumed, name), getattr(fresh, name)), name
        assert resumed.witness is not None and fresh.witness is not None
        assert same(resumed.witness.to_dict(), fresh.witness.to_dict())
        if method == "certified":
            assert resumed.certified is not None and fresh.certified is not None
            assert same(resumed.certified.kappa, fresh.certified.kappa)
            assert resumed.upper == fresh.upper and resumed.status == "certified"
    with pytest.raises(InputError):
        kappa_runs.kappa_runs(net, data.images, None, "analytic", model_id, progress=False)


def test_kappa_cli_store_and_scheduler(tmp_path: Path, threads_cluster: str) -> None:
    from quantcert.analyses.kappa_cli import kappa_command

    store = tmp_path / "store"
    docs = []
    for i, scheduler in enumerate((threads_cluster, None)):
        out = tmp_path / f"k{i}.json"
        kappa_command(
            str(MLP), str(MNIST), "deepfool", 6, str(out), store=str(store), scheduler=scheduler
        )
        docs.append(json.loads(out.read_text()) | {"time_s": 0})
    assert docs[0] == docs[1]
    with Store.open(store) as s:
        assert [n for _, n in s.studies()] == [1]
    with pytest.raises(InputError, match="--method"):
        kappa_command(str(MLP), str(MNIST), "analytic", 6, None, store=str(store))
    with pytest.raises(InputError, match="tcp://HOST:PORT"):
        kappa_command(str(MLP), str(MNIST), "deepfool", 6, None, scheduler="localhost:1")


# --------------------------------------------------------------------- progress
@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    from quantcert.report.progress import logging_to_stderr

    stream = io.StringIO()
    with logging_to_stderr(stream=stream):
        yield stream


def test_unit_progress_plain_lines_live_bar_and_quiet(log_stream: io.StringIO) -> None:
    from quantcert.report.progress import UnitProgress, is_quiet, logging_to_stderr

    plain = UnitProgress("sweep", stream=io.StringIO(), every=3600)
    for done in range(5):
        plain(done, 4 if done == 4 else 5)
    lines = log_stream.getvalue().splitlines()
    assert lines[0].startswith("sweep: 0/5 units (0%)") and lines[-1].startswith("sweep: 4/4")
    assert len(lines) == 2  # the rest fall within `every` seconds

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    live = UnitProgress("sweep", stream=term)
    live(1, 3)
    live(3, 3)
    live.close()
    assert "3/3" in term.getvalue() and "\r" in term.getvalue()
    with logging_to_stderr(quiet=True, stream=log_stream):
        assert is_quiet()
        quiet = UnitProgress("hidden", stream=term)
        quiet(1, 1)
    assert "hidden" not in log_stream.getvalue() + term.getvalue()
    assert not is_quiet()


def test_kappa_command_line_takes_store_and_scheduler(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from quantcert.cli import app

    args = ["kappa", str(MLP), "--data", str(MNIST), "--store", str(tmp_path / "s")]
    result = CliRunner().invoke(app, [*args, "--scheduler", "localhost:1"])
    assert isinstance(result.exception, InputError) and "tcp://HOST:PORT" in str(result.exception)
    assert "--store" in CliRunner().invoke(app, ["kappa", "--help"]).output
