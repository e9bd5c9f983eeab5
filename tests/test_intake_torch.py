"""PyTorch intake: the network equals the module's float64 eval-mode forward."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from quantcert.errors import InputError
from quantcert.intake.torch_module import from_torch, load_torch
from quantcert.ops import Affine, Conv, Scale, Sigmoid, Softmax

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky": lambda: nn.LeakyReLU(0.2),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def _randomise_bn(module: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.weight is not None and m.bias is not None:
                with torch.no_grad():
                    m.weight.copy_(torch.randn(n, generator=gen))
                    m.bias.copy_(torch.randn(n, generator=gen))
    return module.eval()


def _check(module: nn.Module, shape: tuple[int, ...], seed: int = 0, batch: int = 6) -> None:
    net = from_torch(module, shape)
    reference = copy.deepcopy(module).double().eval()
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
    x = x.to(torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=0, atol=1e-10)


def _mlp(act: str, head: str | None, n_out: int) -> nn.Sequential:
    layers = [
        nn.Linear(5, 7),
        ACTIVATIONS[act](),
        nn.Linear(7, 6),
        nn.BatchNorm1d(6),
        ACTIVATIONS[act](),
        nn.Dropout(0.5),
        nn.Linear(6, n_out),
    ]
    if head == "sigmoid":
        layers.append(nn.Sigmoid())
    elif head == "softmax":
        layers.append(nn.Softmax(dim=-1))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize(("head", "n_out"), [("sigmoid", 1), ("softmax", 4), (None, 3)])
def test_mlp_matches_module(act: str, head: str | None, n_out: int) -> None:
    torch.manual_seed(0)
    module = _randomise_bn(_mlp(act, head, n_out), 1)
    _check(module, (5,))
    net = from_torch(module, (5,))
    head_ops = {"sigmoid": Sigmoid, "softmax": Softmax}
    if head is None:
        assert net.head is None
    else:
        assert isinstance(net.node(net.head or "").op, head_ops[head])
    # BatchNorm1d folded into the preceding Linear: 3 affine layers, no Scale.
    assert sum(isinstance(n.op, Affine) for n in net) == 3
    assert not any(isinstance(n.op, Scale) for n in net)


def _convnet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding="valid"), nn.BatchNorm2d(6)),
        nn.LeakyReLU(0.1),
        nn.Conv2d(6, 6, 3, padding="same", dilation=1),
        nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        nn.BatchNorm2d(6),  # after a pooling layer: a constant Scale
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 8),
        nn.BatchNorm1d(8),
        nn.Tanh(),
        nn.Linear(8, 3),
        nn.Softmax(dim=1),
    )


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_convnet_with_batchnorm_matches_module(seed: int) -> None:
    torch.manual_seed(seed % 1000)
    module = _randomise_bn(_convnet(), seed)
    _check(module, (2, 16, 16), seed=seed)
    net = from_torch(module, (2, 16, 16))
    assert sum(isinstance(n.op, Conv) for n in net) == 3
    assert sum(isinstance(n.op, Scale) for n in net) == 1  # the BN after the pooling


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=3),
    st.sampled_from(sorted(ACTIVATIONS)),
    st.integers(0, 2**31 - 1),
)
def test_random_mlps(hidden: list[int], act: str, seed: int) -> None:
    torch.manual_seed(seed % 1000)
    sizes = [3, *hidden, 2]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b, bias=bool(b % 2)), ACTIVATIONS[act]()]
    _check(nn.Sequential(*layers[:-1]), (3,), seed=seed)


def test_flatten_partial_and_avgpool_defaults() -> None:
    module = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(2), nn.Flatten())
    _check(module, (3, 4, 6))
    assert from_torch(module, (3, 4, 6)).shapes()["flatten3"] == (18,)


def test_unsupported_layer_is_named() -> None:
    with pytest.raises(InputError, match="GELU"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.GELU()), (2,))

    class Custom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(InputError, match="Custom"):
        from_torch(Custom(), (2,))
    with pytest.raises(InputError, match="final layer"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.Softmax(-1), nn.Linear(2, 1)), (2,))
    with pytest.raises(InputError, match="shape"):
        from_torch(nn.Sequential(nn.Linear(3, 2)), (2,))
    with pytest.raises(InputError, match="padding_mode"):
        from_torch(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")), (1, 5, 5))
    with pytest.raises(InputError, match="no layers"):
        from_torch(nn.Sequential(nn.Dropout()), (2,))


def test_load_torch_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mlp = _randomise_bn(_mlp("relu", "sigmoid", 1), 3)
    torch.save(mlp, tmp_path / "mlp.pt")
    net = load_torch(tmp_path / "mlp.pt")  # input shape from the first Linear
    assert net.input_shape == (5,) and net.name == "mlp"
    conv = _randomise_bn(_convnet(), 4)
    conv.input_shape = (2, 16, 16)  # type: ignore[assignment]
    torch.save(conv, tmp_path / "conv.pt")
    net = load_torch(tmp_path / "conv.pt")
    x = torch.randn(2, 2, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), copy.deepcopy(conv).double()(x), rtol=0, atol=1e-10)


def test_load_torch_errors(tmp_path: Path) -> None:
    conv = _convnet()
    torch.save(conv, tmp_path / "conv.pt")
    with pytest.raises(InputError, match="input shape"):
        load_torch(tmp_path / "conv.pt")
    assert load_torch(tmp_path / "conv.pt", (2, 16, 16)).input_shape == (2, 16, 16)
    torch.save(conv.state_dict(), tmp_path / "state.pt")
    with pytest.raises(InputError, match="state_dict"):
        load_torch(tmp_path / "state.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a readable torch model"):
        load_torch(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="not found"):
        load_torch(tmp_path / "missing.pt")
