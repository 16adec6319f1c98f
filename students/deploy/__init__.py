"""The student in the runtimes people deploy with: ONNX Runtime and ExecuTorch (XNNPACK).

    from students import deploy
    deploy.to_onnx(model, example, "student.onnx")                          # fp32, dynamic batch
    deploy.to_onnx(model, example, "student-int8.onnx", calibration=batches)  # QDQ int8 (onnxruntime)
    info = deploy.to_executorch(model, example, "student.pte")              # XNNPACK delegate, batch 1
    deploy.to_executorch(model, example, "student-int8.pte", calibration=batches)  # PT2E int8 (XNNPACK)
    run = deploy.load("student.onnx", threads=1); logits = run(x)           # in that file's own runtime

``model`` is an eval-mode float student (a ternary/binary one goes through ``portable`` first:
see ``students.deploy.portable``). The runtimes are imported only when used; a missing one is
a one-line ``DeployError``, as is a request a target cannot hold.
"""

from .errors import DeployError, require
from .executorch import Delegation, to_executorch
from .onnx import to_onnx
from .runner import Runner, load, predict

__all__ = ["Delegation", "DeployError", "Runner", "load", "predict", "require", "to_executorch", "to_onnx"]
