"""Static int8 for each runtime, calibrated on training batches.

- ExecuTorch: PT2E (``torchao.quantization.pt2e``): ``prepare_pt2e`` with ``XNNPACKQuantizer``
  (symmetric, per-channel weights: the XNNPACK int8 kernels' format) inserts observers, the
  calibration batches run through it, ``convert_pt2e`` turns them into quantize/dequantize
  pairs that the XNNPACK partitioner lowers to its int8 kernels.
- onnxruntime: ``onnxruntime.quantization.quantize_static`` on the fp32 ONNX file, QDQ format,
  per-channel int8 weights, uint8 activations (onnxruntime's fast path on x86: U8S8), MinMax
  calibration over the same batches, after its shape-inference pre-processing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import DeployError, require


def pt2e_int8(model: nn.Module, example: Tensor, calibration: Iterable[Tensor]) -> nn.Module:
    """``model`` as a PT2E int8 graph module (q/dq pairs around each conv, linear, add, ReLU)."""
    require("executorch.exir", "ExecuTorch int8")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    # Calibrate at the batch size of the data (a dynamic batch), export later at batch 1.
    two = example[:1].expand(2, *example.shape[1:]).contiguous()
    graph = torch.export.export(model.eval(), (two,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    prepared = prepare_pt2e(graph.module(), quantizer)
    seen = 0
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
            seen += 1
    if not seen:
        raise DeployError("int8 calibration got no batches (output.calibration_batches must be >= 1)")
    return convert_pt2e(prepared)


def onnx_int8(fp32: Path, out: Path, calibration: Iterable[Tensor], input_name: str) -> None:
    """Quantize the fp32 ONNX file ``fp32`` into ``out`` (QDQ int8) on the calibration batches
    (fed as the graph input ``input_name``)."""
    q = require("onnxruntime.quantization", "onnxruntime int8")
    class Batches(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch.numpy()}

    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        q.quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
        q.quantize_static(str(prepped), str(out), Batches(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax)
