"""``quantcert demo``: the seed's cat model, end to end, in the terminal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quantcert.analyses.epsilon import Budget, epsilon, input_box
from quantcert.analyses.flip import flip
from quantcert.analyses.info import describe
from quantcert.cases.builtin import case_domain, case_info, load_case, read_csv
from quantcert.engines import perturbation
from quantcert.report.output import write_json


def run_demo(out: Path, delta: float = 0.005) -> None:
    net = load_case("cat")
    info = case_info("cat")
    print(describe(net).to_text())
    x, y, _ = read_csv(info)
    with torch.no_grad():
        p = net(torch.as_tensor(x[:8], dtype=torch.float64)).numpy().ravel()
    print(f"\npredictions (first 8 cats; {', '.join(info.columns)} -> P(male))")
    for row, prob, label in zip(x[:8], p, y[:8], strict=True):
        print(f"  {np.array2string(row, precision=2):<16} {prob:.4f}  {'M' if label else 'F'}")
    lo, hi = case_domain("cat")
    box = input_box(net, lo, hi)
    pert = perturbation.absolute(net, delta)
    print(f"\nglobal queries over the data's bounding box {lo} .. {hi}, delta = {delta}")
    eps = epsilon(net, pert, box, Budget(gap=1e-5, timeout=30))
    print(eps.to_text())
    flips = flip(net, pert, box, Budget(timeout=30))
    print(flips.to_text())
    out.mkdir(parents=True, exist_ok=True)
    write_json({"epsilon": eps.to_dict(), "flip": flips.to_dict()}, str(out / "cat.json"))
    print(f"\nresults written to {out / 'cat.json'}")
