"""Benchmark: the cost of the load-time self-check (``intake/self_check.py``) on the bundled
ONNX networks, i.e. what ``--no-self-check`` saves.

For each network: the load without the check (``from_onnx(path, self_check=False)``), the
check alone (``check_against_onnxruntime``, default 4 samples: onnxruntime session set-up on
the float64 copy or the stored graph, 4 runs, 4 IR forward passes), and the check relative to
the load. Best of ``--repeat`` runs each. ``--write`` replaces the "Load-time self-check"
section of docs/benchmarks.md.

Usage: .venv/bin/python bench/bench_self_check.py [--repeat 5] [--write]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

from quantcert.intake.onnx_model import from_onnx
from quantcert.intake.self_check import Reference, check_against_onnxruntime

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
MODELS = sorted((ROOT / "src" / "quantcert" / "data" / "models").glob("**/*.onnx")) + sorted(
    (ROOT / "tests" / "data" / "models").glob("*.onnx")
)
TITLE = "## Load-time self-check"


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Fastest of ``repeat`` calls, in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def measure(path: Path, repeat: int) -> dict[str, Any]:
    model = onnx.load(str(path))
    net = from_onnx(path, self_check=False)
    load_ms = best(lambda: from_onnx(path, self_check=False), repeat)
    check_ms = best(lambda: check_against_onnxruntime(model, net), repeat)
    return {
        "name": path.name,
        "params": net.num_params(),
        "load_ms": load_ms,
        "check_ms": check_ms,
        "reference": "float64" if Reference(model, 1e-6).float64 else "float32",
        "diff": check_against_onnxruntime(model, net),
    }


def import_ms() -> float:
    """Importing onnxruntime in a fresh process (paid once per process), in milliseconds."""
    code = "import time; t = time.perf_counter(); import onnxruntime; "
    code += "print(1000 * (time.perf_counter() - t))"
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        for _ in range(3)
    ]
    return min(float(r.stdout) for r in runs)


def section(rows: list[dict[str, Any]], repeat: int, import_cost: float) -> str:
    lines = [
        TITLE,
        "",
        f"`bench/bench_self_check.py --repeat {repeat}`, {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at "
        f"the end), torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
        " (one thread). Best of the runs; `load` is `from_onnx(..., self_check=False)`, "
        "`check` the self-check alone (4 random inputs), i.e. what `--no-self-check` saves.",
        "",
        "| network | params | load ms | check ms | check / load | reference | max rel. diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['load_ms']:.1f} | {r['check_ms']:.1f} | "
            f"{r['check_ms'] / r['load_ms']:.2f} | {r['reference']} | {r['diff']:.1e} |"
        )
    total_load = sum(r["load_ms"] for r in rows)
    total_check = sum(r["check_ms"] for r in rows)
    lines += [
        "",
        f"In all: {total_check:.0f} ms of checks for {total_load:.0f} ms of loading "
        f"({total_check / total_load:.2f}x). The reference is onnxruntime on a float64 copy "
        "of the graph where onnxruntime has float64 kernels (tolerance 1e-6), the float32 "
        "graph otherwise (Conv, AveragePool, LeakyRelu; tolerance 1e-4). Importing "
        f"onnxruntime costs {import_cost:.0f} ms once per process (best of 3 fresh processes), "
        "on top of the table.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace (or append) this section of docs/benchmarks.md."""
    old = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip() + "\n\n" + text
    DOC.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(path, args.repeat) for path in MODELS]
    text = section(rows, args.repeat, import_ms())
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
