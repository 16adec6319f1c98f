"""Loads the ExecuTorch kernels library into this process, once.

The library registers its kernels in libexecutorch.so's operator registry when it is
loaded. That must happen after ``executorch.runtime`` is imported (which loads that
libexecutorch.so; our library links to the same file) and before a program's
``load_method``. A second copy aborts the process ("Re-registering ..."), so ``load()``
loads one build per process and refuses another.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from kernels import _cpu

_lock = threading.Lock()
_loaded: tuple[Path, ctypes.CDLL] | None = None


def load(path: str | Path | None = None) -> ctypes.CDLL:
    """The loaded library (building it first when no path is given)."""
    global _loaded
    with _lock:
        if _loaded is not None:
            if path is not None and Path(path).resolve() != _loaded[0]:
                raise RuntimeError(
                    f"ExecuTorch kernels: {_loaded[0]} is already loaded; a second library ({path}) would "
                    "re-register the same kernels and abort the process"
                )
            return _loaded[1]
        import executorch.runtime  # noqa: F401  (loads libexecutorch.so: its registry gets our kernels)

        from kernels.executorch.build import build_library

        lib_path = Path(path).resolve() if path is not None else build_library().resolve()
        lib = ctypes.CDLL(str(lib_path))
        for name, args in {"distill_et_set_num_threads": [ctypes.c_int], "distill_et_get_num_threads": [],
                           "distill_et_set_isa": [ctypes.c_int], "distill_et_get_isa": []}.items():  # fmt: skip
            getattr(lib, name).argtypes = args
            getattr(lib, name).restype = ctypes.c_int if "get" in name or "isa" in name else None
        _loaded = (lib_path, lib)
        return lib


def set_num_threads(n: int) -> None:
    """Threads for the whole program: ExecuTorch's threadpool, which XNNPACK runs on and whose size
    the packed kernels, unpinned, read at each call (they run on helpers of their own,
    kernels/executorch/spin_pool.cpp). A method loaded before the
    pool is resized must be loaded again (students.deploy.runner: the delegates keep the old pool)."""
    from executorch.extension.pybindings import portable_lib

    pin_kernel_threads(None)
    if portable_lib._threadpool_get_thread_count() != n:
        portable_lib._unsafe_reset_threadpool(int(n))


def pin_kernel_threads(n: int | None) -> int:
    """Pin the packed kernels' thread count (None: follow ExecuTorch's threadpool); returns the count
    in use. More threads than the pool has do not add any: the kernels run on the pool's threads."""
    lib = load()
    lib.distill_et_set_num_threads(0 if n is None else max(1, int(n)))
    return lib.distill_et_get_num_threads()


def set_isa(name: str | None) -> str:
    """Pin the packed kernels' instruction set in the runtime (None: the best the CPU has)."""
    lib = load()
    if lib.distill_et_set_isa(-1 if name is None else _cpu.ISAS[name]) < 0:
        raise RuntimeError(f"instruction set {name!r} is not supported on this CPU or by this compiler")
    return {v: k for k, v in _cpu.ISAS.items()}[lib.distill_et_get_isa()]
