"""IR operations: one class per operation, each with forward, interval and backward."""

from quantcert.ops.activations import Identity, LeakyReLU, ReLU, Sigmoid, Tanh
from quantcert.ops.affine import Affine
from quantcert.ops.base import DTYPE, Box, Op
from quantcert.ops.clip import Clip
from quantcert.ops.conv import Conv
from quantcert.ops.heads import Softmax
from quantcert.ops.layout import Concat, Reduce, Slice, Transpose
from quantcert.ops.linear import AvgPool, Pad, Reshape, Scale, Sum
from quantcert.ops.noise import QuantNoise
from quantcert.ops.normalization import BatchNorm
from quantcert.ops.pooling import MaxPool, PaddedAvgPool, PaddedMaxPool
from quantcert.ops.product import Mul
from quantcert.ops.smooth import Elu, Erf, HardSwish, Softplus

__all__ = [
    "DTYPE",
    "Affine",
    "AvgPool",
    "BatchNorm",
    "Box",
    "Clip",
    "Concat",
    "Conv",
    "Elu",
    "Erf",
    "HardSwish",
    "Identity",
    "LeakyReLU",
    "MaxPool",
    "Mul",
    "Op",
    "Pad",
    "PaddedAvgPool",
    "PaddedMaxPool",
    "QuantNoise",
    "ReLU",
    "Reduce",
    "Reshape",
    "Scale",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Softplus",
    "Sum",
    "Tanh",
    "Transpose",
]
