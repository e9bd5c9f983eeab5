"""Precision questions: formats as certified boxes, accuracy under a quantization scheme, and
the bit-widths each tensor needs (``accuracy``, ``bitwidth``)."""

from quantcert.analyses.precision.accuracy import AccuracyResult, accuracy
from quantcert.analyses.precision.scheme import Quantized, Scheme, prepare

__all__ = ["AccuracyResult", "Quantized", "Scheme", "accuracy", "prepare"]
