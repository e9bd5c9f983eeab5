"""Benchmark: ``quantcert compare --data`` (batched label certificates) on mnist-net_256x2
against its int8 QDQ model, next to onnxruntime's own quantization debugger.

1. Quantize ``mnist-net_256x2.onnx`` with ``onnxruntime.quantization.quantize_static``
   (QDQ, int8 activations and weights, MinMax calibration on MNIST test images 9000-9099,
   disjoint from the certified ones).
2. ``compare_points`` on the first ``--images`` MNIST test images: time, verified /
   falsified / unknown shares, and how many verified images keep their label under any
   float32 evaluation (``verified_float32``).
3. The label changes measured by running both ONNX models in onnxruntime (the QDQ graph as
   written, graph optimisations off; and, for information, with onnxruntime's default
   optimisations, which fuse QDQ into integer kernels). Checked: every measured change (as
   written) is ``falsified`` or ``unknown``, never ``verified``.
4. The peer, ``onnxruntime.quantization.qdq_loss_debug``: per matched activation its SQNR of
   float vs quantized values (``compute_activation_error``, ``xmodel_err``) and the largest
   measured ``|q - f|``, next to our certified bound on ``|q - f|`` at the same tensor on the
   same images (``ort_error``: the float64 values and a bound covering exact arithmetic and
   any float32 evaluation). Checked: measured <= bound elementwise. Weight SQNRs
   (``create_weight_matching``) are listed too.

Usage: .venv/bin/python bench/bench_compare.py [--images 1000] [--model PATH]
Prints a markdown section for docs/benchmarks.md ("Compare: QDQ int8 against float").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime.quantization as oq
import torch
from onnxruntime.quantization import qdq_loss_debug as dbg

from quantcert.analyses.compare import compare_points
from quantcert.analyses.compare_labels import ort_error
from quantcert.intake.onnx_model import from_onnx
from quantcert.intake.qdq import from_qdq
from quantcert.network import Network

ROOT = Path(__file__).resolve().parents[1]
NAME = "mnist-net_256x2.onnx"
CANDIDATES = [
    ROOT / "src" / "quantcert" / "data" / "models" / "mnistfc" / NAME,
    ROOT.parent / "shared" / "models" / "vnncomp2021" / "mnistfc" / NAME,
]
MNIST = ROOT / "src" / "quantcert" / "data" / "mnist_test.npz"
TITLE = "## Compare: QDQ models against float (issue 9)"


class Images(oq.CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, name: str, x: np.ndarray, shape: tuple[int, ...]) -> None:
        self.items = [{name: xi.reshape(1, *shape).astype(np.float32)} for xi in x]
        self.it = iter(self.items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


def session(path: Path, optimise: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimise:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    name = sess.get_inputs()[0].name
    rows = [sess.run(None, {name: xi.reshape(1, *shape).astype(np.float32)})[0] for xi in x]
    return np.concatenate(rows).reshape(len(x), -1)


def match_node(net: Network, values: dict[str, torch.Tensor], ref: np.ndarray) -> str | None:
    """The last IR node whose values at the images equal onnxruntime's tensor (to 1e-4):
    after a Flatten, a quantizer's output rather than its (equal) input."""
    found = None
    for node in net.nodes:
        v = values[node.name].flatten(1).numpy()
        if v.shape == ref.shape and np.abs(v - ref).max() <= 1e-4 * (1 + np.abs(ref).max()):
            found = node.name
    return found


def per_layer(
    f_path: Path, q_path: Path, fnet: Network, qnet: Network, x: np.ndarray, tmp: Path
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    shape = fnet.input_shape
    name = session(f_path, False).get_inputs()[0].name
    acts = {}
    for tag, path in (("float", f_path), ("qdq", q_path)):
        aug = tmp / f"{tag}.aug.onnx"
        dbg.modify_model_output_intermediate_tensors(str(path), str(aug))
        acts[tag] = dbg.collect_activations(str(aug), Images(name, x, shape))
    matched = dbg.create_activation_matching(acts["qdq"], acts["float"])
    sqnr = dbg.compute_activation_error(matched)
    weights = dbg.compute_weight_error(dbg.create_weight_matching(str(f_path), str(q_path)))
    xt = torch.as_tensor(x.astype(np.float64)).reshape(-1, *shape)
    fv, fe = ort_error(fnet, xt, float32=True)
    qv, qe = ort_error(qnet, xt, float32=True)
    _, fe64 = ort_error(fnet, xt, float32=False)
    _, qe64 = ort_error(qnet, xt, float32=False)
    rows = []
    for tensor, m in matched.items():
        if "float" not in m:
            continue
        f_ref = np.stack([a.ravel() for a in m["float"]]).astype(np.float64)
        q_ref = np.stack([a.ravel() for a in m["post_qdq"]]).astype(np.float64)
        fn, qn = match_node(fnet, fv, f_ref), match_node(qnet, qv, q_ref)
        if fn is None or qn is None:
            continue
        d = (qv[qn] - fv[fn]).flatten(1).abs()
        bound = (d + qe[qn].flatten(1) + fe[fn].flatten(1)).numpy()
        bound64 = (d + qe64[qn].flatten(1) + fe64[fn].flatten(1)).numpy()
        measured = np.abs(q_ref - f_ref)
        rows.append(
            {
                "tensor": tensor,
                "nodes": f"f/{fn}, q/{qn}",
                "sqnr": sqnr[tensor].get("xmodel_err", float("nan")),
                "qdq_sqnr": sqnr[tensor]["qdq_err"],
                "measured": float(measured.max()),
                "bound64": float(bound64.max()),
                "bound": float(bound.max()),
                "covered": bool((measured <= bound).all()),
                "order": [n.name for n in qnet.nodes].index(qn),
            }
        )
    return sorted(rows, key=lambda row: int(row["order"])), weights


def measure(model: Path, n_images: int, tmp: Path, qtype: str) -> dict[str, Any]:
    data = np.load(MNIST)
    images = data["images"].reshape(len(data["images"]), -1).astype(np.float64) / 255.0
    fnet0 = from_onnx(model)
    shape = fnet0.input_shape
    name = session(model, False).get_inputs()[0].name
    if qtype == "QInt4":  # int4 Q/DQ needs opset 21
        upgraded = tmp / "float.opset21.onnx"
        onnx.save(onnx.version_converter.convert_version(onnx.load(str(model)), 21), upgraded)
        model = upgraded
    q_path = tmp / f"mnist-net_256x2.{qtype}.qdq.onnx"
    start = time.perf_counter()
    oq.quantize_static(
        str(model),
        str(q_path),
        Images(name, images[9000:9100], shape),
        quant_format=oq.QuantFormat.QDQ,
        activation_type=getattr(oq.QuantType, qtype),
        weight_type=getattr(oq.QuantType, qtype),
    )
    quant_s = time.perf_counter() - start
    start = time.perf_counter()
    fnet, qnet = from_onnx(model), from_qdq(q_path)
    load_s = time.perf_counter() - start
    x = images[:n_images]
    start = time.perf_counter()
    summary = compare_points(fnet, qnet, x)
    compare_s = time.perf_counter() - start
    changes = {}
    for optimise in (False, True):
        lf = run(session(model, optimise), x, shape).argmax(1)
        lq = run(session(q_path, optimise), x, shape).argmax(1)
        changes[optimise] = [int(i) for i in np.nonzero(lf != lq)[0]]
    falsified = cast(list[int], summary["falsified_images"])
    unknown_idx = cast(list[int], summary["unknown_images"])
    undecided = set(falsified) | set(unknown_idx)
    rows, weights = per_layer(model, q_path, fnet, qnet, x, tmp)
    unknown = torch.as_tensor(x[unknown_idx]).reshape(-1, *shape)
    top = qnet(unknown).flatten(1).sort(1).values if len(unknown) else torch.zeros((0, 2))
    ties = int((top[:, -1] == top[:, -2]).sum())
    return {
        "qtype": qtype,
        "n": n_images,
        "summary": summary,
        "quant_s": quant_s,
        "load_s": load_s,
        "compare_s": compare_s,
        "changes": changes,
        "check": all(i in undecided for i in changes[False]),
        "check_optimised": all(i in undecided for i in changes[True]),
        "ties": ties,
        "confirmed": sum(i in changes[False] for i in falsified),
        "layers": rows,
        "weights": weights,
    }


def share(k: object, n: int) -> str:
    return f"{int(k)} ({100 * int(k) / n:.1f}%)"  # type: ignore[call-overload]


def section(runs: list[dict[str, Any]]) -> str:
    r = runs[0]
    n = r["n"]

    def cells(label: str, value: Any) -> str:
        return f"| {label} | " + " | ".join(value(x) for x in runs) + " |"

    lines = [
        TITLE,
        "",
        f"`bench/bench_compare.py --images {n}`, {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} cores (load average "
        f"{os.getloadavg()[0]:.1f}), torch {torch.__version__}, onnxruntime {ort.__version__}. "
        "mnist-net_256x2 quantized by `quantize_static` (QDQ, activations and weights of "
        "one type, MinMax on test images 9000-9099; int4 on the model converted to opset 21, "
        "a stress case where labels change); `compare_points` on the first "
        f"{n} MNIST test images.",
        "",
        "| compare --data | " + " | ".join(x["qtype"] for x in runs) + " |",
        "|---|" + "---|" * len(runs),
        cells(f"time (compare_points, {n} images)", lambda x: f"{x['compare_s']:.2f} s"),
        cells(
            "load both models / quantize", lambda x: f"{x['load_s']:.2f} s / {x['quant_s']:.2f} s"
        ),
        cells("verified", lambda x: share(x["summary"]["verified"], n)),
        cells("falsified", lambda x: share(x["summary"]["falsified"], n)),
        cells("unknown", lambda x: share(x["summary"]["unknown"], n)),
        cells(
            "verified also under any float32 evaluation",
            lambda x: share(x["summary"]["verified_float32"], n),
        ),
        cells(
            "label changes measured in onnxruntime (QDQ as written)",
            lambda x: str(len(x["changes"][False])),
        ),
        cells(
            "label changes, onnxruntime default optimisations",
            lambda x: str(len(x["changes"][True])),
        ),
        cells("every measured change falsified or unknown", lambda x: str(x["check"])),
        cells("the same for the optimised sessions", lambda x: str(x["check_optimised"])),
        cells("falsified images that change in onnxruntime", lambda x: str(x["confirmed"])),
        cells("unknown images where the quantized top two tie exactly", lambda x: str(x["ties"])),
        "",
        "Per matched activation: "
        "onnxruntime's `qdq_loss_debug` (SQNR float vs quantized, "
        "`xmodel_err`, and the SQNR of its own QDQ step, `qdq_err`; dB, higher is closer), "
        "the largest `|q - f|` measured in onnxruntime over the images, and our certified "
        "bound on `|q - f|` at the same tensor and images: in exact arithmetic, and covering "
        "any float32 evaluation (the check: measured <= that bound at every element).",
        "",
        "| type | tensor | IR nodes | SQNR dB | QDQ SQNR dB | measured max abs "
        "| bound (exact) | bound (any float32) | covered |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in runs:
        for row in x["layers"]:
            lines.append(
                f"| {x['qtype']} | {row['tensor']} | {row['nodes']} | {row['sqnr']:.1f} "
                f"| {row['qdq_sqnr']:.1f} | {row['measured']:.3e} | {row['bound64']:.3e} "
                f"| {row['bound']:.3e} | {row['covered']} |"
            )
    lines.append("")
    for x in runs:
        wl = ", ".join(f"{k} {v:.1f} dB" for k, v in x["weights"].items())
        lines.append(f"Weight SQNR, {x['qtype']} (`create_weight_matching`): {wl}.")
    lines += [
        "",
        "`QDQ SQNR` of tensors 9 and 11 compares the Gemm output before onnxruntime's "
        "quantizer (which absorbed the Relu) with the clipped value after it, so it is low "
        "by construction. A point is `unknown` when a model's top two outputs are within "
        "rounding error of each other; an exact tie (a coarse output quantizer maps both "
        "logits to one level) leaves the label to argmax's tie-break, not to a value.",
        "",
        "At a point the certified bound is the float64 difference plus a stated rounding "
        "bound, so it sits on the measured value; the float32 column is a worst-case "
        "(`gamma_n` per sum) bound, which is why fewer images are verified under it. "
        "Statuses are in exact arithmetic, as `compare`'s bound.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--types", nargs="+", default=["QInt8", "QInt4"])
    args = parser.parse_args()
    model = args.model or next((p for p in CANDIDATES if p.exists()), None)
    if model is None:
        sys.exit(f"{NAME} not found in {[str(p) for p in CANDIDATES]}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(model, args.images, Path(tmp), t) for t in args.types]
    print(section(runs))
    ok = all(r["check"] and all(row["covered"] for row in r["layers"]) for r in runs)
    if not ok:
        sys.exit("check failed: a measured change was verified, or a bound was beaten")


if __name__ == "__main__":
    main()
