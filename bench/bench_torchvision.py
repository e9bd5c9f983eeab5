"""Benchmark: torchvision CNNs at CIFAR size (issue 11) with int8 weight quantization.

Per architecture (seeded random weights, BatchNorm calibrated, exported at opset 17 as in
``tests/test_torchvision.py``): parameters, load time (with the self-check), and per method
(IBP, crown-ibp, CROWN) the time and peak resident memory of bounding the local epsilon
``max_k |f_theta(x) - f_theta0(x)|_k`` at one random input in [0, 1] (the difference
network, ``engines/pair.py``), every conv/linear weight moved by half its per-output-channel
int8 step (``format_perturbation(net, parse_layer_map("int8:per-channel"))``), and upper
divided by the best witness found (``attack.search_rows``, 20 steps from the nominal weights).

Each (architecture, method) runs in its own process (peak memory is that process's
``ru_maxrss``), one torch thread, under ``--timeout`` seconds. ``--write`` appends (or
replaces) the "torchvision CNNs" section of docs/benchmarks.md.

Usage: .venv/bin/python bench/bench_torchvision.py [--timeout 120] [--arch resnet18 ...] [--write]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
TITLE = "## torchvision CNNs (CIFAR size, int8 per-channel weights; issue 11)"
METHODS = ("ibp", "crown-ibp", "crown")
ARCHS = (
    "squeezenet1_1",
    "shufflenet_v2_x0_5",
    "mobilenet_v3_small",
    "mobilenet_v2",
    "efficientnet_b0",
    "resnet18",
)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(arch: str, method: str, folder: Path) -> dict[str, Any]:
    """Runs in the child process."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "tests"))
    import test_torchvision as tv  # the models exactly as the tests build them
    from quantcert.engines.attack import search_rows
    from quantcert.engines.bounds import bound_spec
    from quantcert.engines.pair import difference_network, pair_radii
    from quantcert.formats.apply import format_perturbation
    from quantcert.formats.parse import parse_layer_map
    from quantcert.intake.onnx_model import from_onnx
    from quantcert.ops import DTYPE, Box

    path = folder / f"{arch}.onnx"
    if not path.exists():
        tv.export(tv.build(arch), path)
    start = time.perf_counter()
    net = from_onnx(path)
    load_s = time.perf_counter() - start
    pert = format_perturbation(net, parse_layer_map("int8:per-channel"))
    x = torch.rand((1, *net.input_shape), generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    before = _rss_mb()
    pair = difference_network(net)
    eye = torch.eye(10, dtype=DTYPE)
    start = time.perf_counter()
    with torch.no_grad():
        upper, _ = bound_spec(
            pair, Box(x, x), pair_radii(pert, pair), torch.cat([eye, -eye]), method
        )  # type: ignore[arg-type]
    bound_s = time.perf_counter() - start
    peak = _rss_mb()

    sign = torch.tensor([[1.0], [-1.0]], dtype=DTYPE)  # ascend +max_k d_k and -min_k d_k

    def objective(xs: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        d = (net(xs, params) - net(xs)).flatten(1) * sign
        return d.max(1).values.unsqueeze(1)

    start = time.perf_counter()
    both = torch.cat([x, x])
    best, _ = search_rows(net, pert, Box(both, both), objective, steps=20)
    return {
        "params": net.num_params(),
        "load_s": load_s,
        "bound_s": bound_s,
        "witness_s": time.perf_counter() - start,
        "rss_before_mb": before,
        "peak_mb": peak,
        "upper": float(upper.max()),
        "lower": float(best.max()),
    }


def run(arch: str, method: str, folder: Path, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", arch, method, str(folder)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:g} s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode or not lines:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:120]}
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def table(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    head = (
        "| architecture | parameters | load (s) | method | bound (s) | peak RSS (MB) | upper "
        "| best witness | upper / witness |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    body = []
    for arch, method, r in rows:
        if "error" in r:
            body.append(f"| {arch} | | | {method} | {r['error']} | | | | |")
            continue
        ratio = r["upper"] / r["lower"] if r["lower"] > 0 else float("inf")
        body.append(
            f"| {arch} | {r['params']:,} | {r['load_s']:.1f} | {method} | {r['bound_s']:.1f} "
            f"| {r['peak_mb']:.0f} | {r['upper']:.3g} | {r['lower']:.3g} | {ratio:.3g} |"
        )
    return head + "\n".join(body) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--arch", nargs="*", default=list(ARCHS))
    ap.add_argument("--method", nargs="*", default=list(METHODS))
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        arch, method, folder = args.child
        print(json.dumps(one(arch, method, Path(folder))))
        return
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            for method in args.method:
                r = run(arch, method, Path(tmp), args.timeout)
                rows.append((arch, method, r))
                print(arch, method, r, flush=True)
    text = table(rows)
    print(text)
    if args.write:
        note = (
            f"{TITLE}\n\n`bench/bench_torchvision.py` (timeout {args.timeout:g} s per run, one "
            f"torch thread, {platform.processor() or platform.machine()}, shared 2-core machine)"
            ". Local epsilon at one random input in [0, 1], every conv/linear weight moved by "
            "half its per-output-channel int8 step; peak RSS includes the loaded model.\n\n"
        )
        doc = DOC.read_text()
        pattern = re.compile(re.escape(TITLE) + r".*?(?=\n## |\Z)", re.S)
        section = note + text
        doc = pattern.sub(section, doc) if TITLE in doc else doc.rstrip() + "\n\n" + section
        DOC.write_text(doc)


if __name__ == "__main__":
    main()
