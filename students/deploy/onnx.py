"""ONNX export (``torch.onnx.export(dynamo=True)``) and QDQ int8 for onnxruntime.

One self-contained file (``external_data=False``: the weights inside, as a user ships it) with
a dynamic batch dimension, so validation can score the whole split in a few runs. Input ``x``,
output ``logits``.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import DeployError, require

INPUT, OUTPUT = "x", "logits"


def to_onnx(model: nn.Module, example: Tensor, path: str | Path, *,
            calibration: Iterable[Tensor] | None = None) -> Path:
    """Write ``model`` (eval mode, float) as ONNX at ``path``; with ``calibration`` (training batches),
    as static QDQ int8 calibrated on them (``students.deploy.int8.onnx_int8``)."""
    require("onnxscript", "ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if calibration is None:
        _export(model, example, path)
    else:
        from .int8 import onnx_int8

        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            _export(model, example, fp32)
            onnx_int8(fp32, path, calibration, INPUT)
    _strip(path)
    return path


def _strip(path: Path) -> None:
    """Drop what the exporter records for debugging (each node's source location and FX names, the
    intermediate shapes): on a small student that is half the file; the graph and weights stay."""
    onnx = require("onnx", "ONNX export")
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def _export(model: nn.Module, example: Tensor, path: Path) -> None:
    # Export specializes a dimension whose example size is 0 or 1: trace with two samples.
    example = example[:1].expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, external_data=False,
                              input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=({0: batch},),
                              verbose=False)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; one line for the user
            raise DeployError(f"ONNX export of {type(model).__name__} failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
