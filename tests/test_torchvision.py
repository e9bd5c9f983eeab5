"""Issue 11, real models in: torchvision classification CNNs (seeded random weights, CIFAR
size: input 1x3x32x32, 10 classes) export with the TorchScript exporter at opset 17, load
through the ONNX intake with its self-check, match onnxruntime, and get sound bounds.

Bounds: every conv/linear parameter moves by ``DELTA`` of its magnitude and the input by
``DELTA`` around a random image. On the whole network IBP and crown-ibp bound all ten logits
(both are vacuous on these deep random nets, but must stay finite and sound); full CROWN
bounds a few random directions of an early node (the first residual sum, concat, SiLU or
squeeze-excite product), where it is tight enough to mean something. Sampled ``(x, theta)``
in the box never leave any bound. Whole-network CROWN takes minutes per model (over 120 s
for five of the six): ``bench/bench_torchvision.py`` measures it.

BatchNorm's running statistics are calibrated on random images in [-1, 1] (train-mode passes,
the self-check's domain) before ``eval()``, so that activations keep a realistic scale instead
of vanishing, and float32 rounding stays within the self-check's tolerance.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from quantcert.engines import perturbation
from quantcert.engines.bounds import Method, bound_spec, engine_threads
from quantcert.intake.onnx_model import from_onnx
from quantcert.network import Network
from quantcert.ops import DTYPE, Box

DELTA = 1e-6
#: architecture -> (IR op type, occurrence) of the node full CROWN bounds.
ARCHS: dict[str, tuple[str, int]] = {
    "resnet18": ("Sum", 0),
    "mobilenet_v2": ("Clip", 0),
    "squeezenet1_1": ("Concat", 0),
    "shufflenet_v2_x0_5": ("Slice", 1),
    "efficientnet_b0": ("Mul", 0),
    "mobilenet_v3_small": ("Mul", 0),
}
_KEEP: list[Any] = []  # the torch.library definitions below must outlive the import


def torchvision_models() -> Any:
    """``torchvision.models``. The torchvision wheel built against CUDA torch cannot load its
    C ops next to the CPU torch; its import then fails registering fake kernels for
    ``torchvision::nms``/``qnms``. Defining those two schemas first lets the pure-Python
    models import (no C op is used by classification models)."""
    try:
        import torchvision
    except ImportError:
        pytest.skip("torchvision is not installed (the test extra)", allow_module_level=True)
    except RuntimeError:
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(lib)
        import torchvision
    return torchvision.models


MODELS = torchvision_models()


def build(arch: str, seed: int = 11) -> torch.nn.Module:
    """The architecture with seeded random weights, BatchNorm statistics calibrated on
    random images, in ``eval()`` mode."""
    torch.manual_seed(seed)
    model: torch.nn.Module = getattr(MODELS, arch)(weights=None, num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 3, 32, 32) * 2 - 1)  # the self-check samples [-1, 1]
    return model.eval()


def export(model: torch.nn.Module, path: Path) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.rand(1, 3, 32, 32),),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["x"],
        )
    return onnx.load(str(path))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on two shared cores torch's pool costs far more than it gains
    (measured: loading efficientnet_b0 takes 1.0 s on one thread, 17.7 s on two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cache: dict[str, Any] = {}
    yield cache
    cache.clear()


def _get(cache: dict[str, Any], arch: str, folder: Path) -> tuple[onnx.ModelProto, Network]:
    if arch not in cache:
        path = folder / f"{arch}.onnx"
        model = export(build(arch), path)
        cache[arch] = (model, from_onnx(path))  # the self-check against onnxruntime runs here
    return cache[arch]  # type: ignore[no-any-return]


def _first(net: Network, kind: str, occurrence: int) -> str:
    names = [n.name for n in net.nodes if type(n.op).__name__ == kind]
    return names[occurrence]


def _query(net: Network, seed: int) -> tuple[Box, perturbation.Perturbation]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((1, *net.input_shape), generator=gen, dtype=DTYPE)
    return Box(x - DELTA, x + DELTA), perturbation.relative(net, DELTA)


def _samples(
    net: Network, pert: perturbation.Perturbation, box: Box, target: str, n: int, seed: int
) -> torch.Tensor:
    """The target node at the box centre with the nominal weights, then at ``n`` random
    ``(x, theta)``: x uniform in the box, theta at random corners of the radius box (the
    second half inside it), flattened (n + 1, numel)."""
    gen = torch.Generator().manual_seed(seed)
    nominal = net.param_tensors()
    outs = [net.evaluate(box.center, upto=target)[target].flatten(1)]
    for i in range(n):
        x = box.lo + (box.hi - box.lo) * torch.rand(box.lo.shape, generator=gen, dtype=DTYPE)
        params = {}
        for k, r in pert.radius.items():
            u = torch.rand(r.shape, generator=gen, dtype=DTYPE) * 2 - 1
            params[k] = nominal[k] + r * (u.sign() if i < n // 2 + 1 else u)
        outs.append(net.evaluate(x, params, upto=target)[target].flatten(1))
    return torch.cat(outs)


def _bound(
    net: Network,
    pert: perturbation.Perturbation,
    box: Box,
    spec: torch.Tensor,
    method: Method,
    target: str,
) -> torch.Tensor:
    radii = {n.name: pert.for_node(n.name) for n in net.nodes}
    with torch.no_grad(), engine_threads(net):
        upper, _ = bound_spec(net, box, radii, spec, method, target=target)
    assert bool(torch.isfinite(upper).all()), (method, upper)
    return upper[0]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_the_export_loads_and_matches_onnxruntime(
    arch: str, loaded: dict[str, Any], tmp_path: Path
) -> None:
    model, net = _get(loaded, arch, tmp_path)
    assert net.input_shape == (3, 32, 32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(len(arch))
    for _ in range(2):
        x = rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
        ref = np.asarray(sess.run(None, {"x": x})[0], np.float64)
        with torch.no_grad():
            ours = net(torch.as_tensor(x, dtype=DTYPE)).numpy()
        assert ours.shape == ref.shape == (1, 10)
        assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_whole_network_interval_bounds_are_sound(
    arch: str, loaded: dict[str, Any], tmp_path: Path
) -> None:
    _, net = _get(loaded, arch, tmp_path)
    box, pert = _query(net, 1)
    spec = torch.cat([torch.eye(10), -torch.eye(10)]).to(DTYPE)
    out = net.output_node
    values = _samples(net, pert, box, out, 3, 2)
    ibp = _bound(net, pert, box, spec, "ibp", out)
    mixed = _bound(net, pert, box, spec, "crown-ibp", out)
    assert bool((mixed <= ibp).all())
    for upper in (ibp, mixed):
        assert bool((values <= upper[:10]).all()) and bool((-values <= upper[10:]).all())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_crown_on_an_early_node_is_sound_and_tighter(
    arch: str, loaded: dict[str, Any], tmp_path: Path
) -> None:
    _, net = _get(loaded, arch, tmp_path)
    target = _first(net, *ARCHS[arch])
    box, pert = _query(net, 3)
    numel = math.prod(net.shapes()[target])
    rows = torch.randn((3, numel), generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    spec = torch.cat([rows, -rows])
    values = _samples(net, pert, box, target, 4, 5) @ spec.T  # (samples, 6)
    crown = _bound(net, pert, box, spec, "crown", target)
    ibp = _bound(net, pert, box, spec, "ibp", target)
    assert bool((values <= crown).all()), (values.max(0).values, crown)
    assert bool((crown <= ibp).all())
    # Every sampled weight change moves the node: the check is not vacuous.
    assert bool((values[1:] != values[0]).any(1).all())


def test_an_architecture_with_an_unsupported_op_is_refused_naming_op_and_node(
    tmp_path: Path,
) -> None:
    """convnext_tiny needs LayerNormalization, which the IR does not compute (yet)."""
    from quantcert.errors import InputError

    path = tmp_path / "convnext.onnx"
    export(build("convnext_tiny"), path)
    with pytest.raises(InputError) as info:
        from_onnx(path)
    message = str(info.value)
    assert "unsupported ONNX operator LayerNormalization" in message
    assert "node '/features/features.0/features.0.1/LayerNormalization'" in message
    assert len(message.splitlines()) == 1
