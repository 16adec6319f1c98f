"""Quantization schemes, one class per file, found by name (``make_scheme``).

Each file holds one scheme: its options and their checks, the parameters and buffers it adds
to a layer, its training quantizers (the STEs of ``kernels.ste``), its bit widths, its
statistics and its export forms. ``base.Scheme`` documents the interface.
"""

# One line per scheme: importing its file registers it (this order is SCHEMES' order).
from . import binary_connect, xnor, twn, ttq, dorefa, int8  # noqa: F401, I001
from .base import Scheme
from .registry import list_schemes, make_scheme, register_scheme, scheme_class, schemes_with

SCHEMES: tuple[str, ...] = tuple(list_schemes())

__all__ = ["SCHEMES", "Scheme", "list_schemes", "make_scheme", "register_scheme", "scheme_class", "schemes_with"]
