"""Run an exported file in its own runtime: ``.onnx`` in onnxruntime, ``.pte`` in ExecuTorch,
``.pt`` (the packed low-bit file) in PyTorch with the project's kernels.

A ``.pte`` that calls the project's low-bit kernels (``distill::`` ops, students.deploy.executorch_lowbit)
gets them registered first (kernels/executorch, built on first use).

``load(path, threads)`` gives a ``Runner``: call it on a float batch, get float logits. Thread
counts are the runtime's own: an onnxruntime session is built with ``intra_op_num_threads``;
ExecuTorch's XNNPACK delegate shares one process-wide threadpool, resized when a runner needs
another size (a runner loaded before a resize loads its program again: ``_executorch_pool``);
the packed file runs on torch's intra-op threads, likewise resized (not restored: a caller
that times several runners sets the count once per block, see distill.commands.deployment).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from .errors import DeployError, require

RUNTIMES = {".onnx": "onnxruntime", ".pte": "executorch", ".pt": "torch"}


class Runner:
    """A loaded exported file. ``batch``: the batch size the file takes (None: any)."""

    def __init__(self, path: Path, runtime: str, fn: Callable[[Tensor], Tensor], batch: int | None) -> None:
        self.path, self.runtime, self._fn, self.batch = path, runtime, fn, batch

    def __call__(self, x: Tensor) -> Tensor:
        return self._fn(x)

    def __repr__(self) -> str:
        return f"Runner({self.path.name}, {self.runtime})"


def load(path: str | Path, threads: int = 1) -> Runner:
    """``path`` loaded in the runtime its suffix names, running on ``threads`` threads."""
    path = Path(path)
    if path.suffix not in RUNTIMES:
        raise DeployError(f"{path}: unknown exported file type {path.suffix!r}; expected one of {list(RUNTIMES)}")
    if not path.is_file():
        raise DeployError(f"{path}: exported file not found")
    return {".onnx": _onnxruntime, ".pte": _executorch, ".pt": _packed}[path.suffix](path, threads)


def predict(runner: Runner | Callable[[Tensor], Tensor], x: Tensor, batch: int = 512) -> Tensor:
    """Logits for every row of ``x``, in chunks the runner takes (batch 1 for a .pte)."""
    step = getattr(runner, "batch", None) or batch
    with torch.inference_mode():
        return torch.cat([runner(chunk).float() for chunk in x.split(step)])


def _onnxruntime(path: Path, threads: int) -> Runner:
    ort = require("onnxruntime", f"running {path.name}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise DeployError(f"{path}: onnxruntime cannot load it: {str(exc).strip().splitlines()[0]}") from None
    name = session.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: x.contiguous().numpy()})[0])

    return Runner(path, "onnxruntime", run, None)


_ET_POOL = {"generation": 0}  # bumped at every resize of ExecuTorch's process-wide threadpool


def _executorch_pool(threads: int) -> int:
    """Resize ExecuTorch's threadpool to ``threads`` if it differs; returns the pool's generation.

    A loaded XNNPACK delegate keeps a pointer to the pool that existed when its method was loaded,
    and ``_unsafe_reset_threadpool`` frees that pool: a method loaded before a resize must not run
    after it (it corrupts the heap). So the runner reloads its program when the generation moved."""
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    if _threadpool_get_thread_count() != threads:
        _unsafe_reset_threadpool(threads)
        _ET_POOL["generation"] += 1
    return _ET_POOL["generation"]


def uses_distill_kernels(path: Path) -> bool:
    """True for a program that calls the project's ``distill::`` kernels (an ``export_lowbit``
    file): the program names each operator it calls, so the name is in its bytes."""
    with open(path, "rb") as f:
        return b"distill::" in f.read()


def _executorch(path: Path, threads: int) -> Runner:
    rt = require("executorch.runtime", f"running {path.name}")
    if uses_distill_kernels(path):  # register the custom kernels first (builds them on first use)
        from kernels.executorch import runtime as distill_kernels
        from kernels.executorch.build import BuildError

        try:
            distill_kernels.load()
        except BuildError as exc:
            raise DeployError(f"{path}: needs the project's ExecuTorch kernels, which did not build: {exc}") from None
    loaded: dict[str, object] = {}

    def load_method() -> None:
        loaded["generation"] = _executorch_pool(threads)  # resize first: the delegates bind the pool now
        try:  # the program owns the method's memory arenas: keep it alive as long as the method
            loaded["program"] = rt.Runtime.get().load_program(path)
            loaded["method"] = loaded["program"].load_method("forward")
        except Exception as exc:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError variants
            raise DeployError(f"{path}: ExecuTorch cannot load it: {str(exc).strip().splitlines()[0]}") from None

    def run(x: Tensor) -> Tensor:
        if loaded["generation"] != _executorch_pool(threads):
            load_method()
        try:
            return loaded["method"].execute([x.contiguous()])[0]
        except RuntimeError as exc:  # the runtime logs its reason above; say which file failed
            raise DeployError(f"{path}: ExecuTorch failed to run it ({str(exc).strip().splitlines()[0]})") from None

    load_method()
    return Runner(path, "executorch", run, 1)


def _packed(path: Path, threads: int) -> Runner:
    from students.export import load_exported

    try:
        model = load_exported(path)
    except (ValueError, RuntimeError, OSError) as exc:
        raise DeployError(f"{path}: not a packed student file: {str(exc).strip().splitlines()[0]}") from None

    def run(x: Tensor) -> Tensor:
        if torch.get_num_threads() != threads:  # torch's pool is process-wide: resized, not restored
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(x)

    return Runner(path, "torch", run, None)
