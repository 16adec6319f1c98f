"""One-line errors for export requests the stack cannot serve, and lazy runtime imports.

The runtimes are optional heavyweights (executorch pulls torchao; importing it costs seconds),
so nothing here imports them at module load: ``require`` does, at the call that needs one, and
turns a missing install into one line that says what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL = {"onnx": "onnx onnxscript", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript",
           "executorch": "executorch"}  # fmt: skip


class DeployError(ValueError):
    """A bad export request or a missing runtime; the message is one line."""


def require(module: str, why: str) -> ModuleType:
    """``import module``, or a DeployError naming the package to install (``why``: what needed it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise DeployError(f"{why} needs {top!r}, which is not installed ({exc.msg}); "
                          f"pip install {INSTALL.get(top, top)}") from None
