"""quantcert: certified robustness of neural networks to lower precision."""

from quantcert.errors import InputError
from quantcert.intake import load
from quantcert.network import INPUT, Network, Node

__all__ = ["INPUT", "InputError", "Network", "Node", "load"]
