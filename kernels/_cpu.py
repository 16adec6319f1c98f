"""Builds the C++ kernels (kernels/csrc) with torch's JIT extension loader and binds them.

The library has a plain C interface and no torch headers, so the first build
takes seconds. It is cached under ``$DISTILL_KERNELS_BUILD_DIR`` (default
``~/.cache/distill/kernels/<platform>/<source hash>``) and rebuilt when any source changes.

Policy (see ``backend()``):
- a C++ compiler is present -> build; if that fails, raise. A broken build must
  fail tests, not fall back silently.
- no compiler -> warn once, and the ops run the pure-torch reference.
- ``DISTILL_KERNELS_BACKEND=torch`` forces the reference (no build).
- ``DISTILL_KERNELS_ISA=scalar|avx2|avxvnni|avx512`` (x86) or ``scalar|neon|neondot``
  (aarch64) pins the instruction set (default: the best the CPU has).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import threading
import time
import warnings
from pathlib import Path

import torch

CSRC = Path(__file__).parent / "csrc"
SOURCES = [
    "lowbit_api.cpp",
    "lowbit_scalar.cpp",
    "lowbit_avx2.cpp",
    "lowbit_avxvnni.cpp",
    "lowbit_avx512.cpp",
    "lowbit_neon.cpp",
    "lowbit_neondot.cpp",
]
ISAS = {"scalar": 0, "avx2": 1, "avxvnni": 2, "avx512": 3, "neon": 4, "neondot": 5}
# Every path must round as kernels/reference.py does: no fused multiply-adds but the explicit ones
# the spec has (the 3x3 convs' taps; GCC would fuse others by default on AArch64), no errno side
# effects. tests/test_arm.py cross-builds with the same flags.
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_backend: str | None = None
build_seconds: float | None = None  # wall time of this process's build (None if loaded from cache)

_p, _i64, _i32, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float


class Pointwise(ctypes.Structure):
    """lowbit.h's DlPointwise: one 1x1 conv of a fused block (kind: PW_KINDS)."""

    _fields_ = [("w", _p), ("K", _i64), ("N", _i64), ("scale_pos", _p), ("scale_neg", _p), ("bias", _p),
                ("act_lo", _f32), ("act_hi", _f32), ("kind", _i32)]  # fmt: skip


# lowbit.h's DlPointwiseKind: a fused block's 1x1 convs are ternary, or XNOR with or without beta.
PW_TERNARY, PW_XNOR, PW_XNOR_UNIT = 0, 1, 2


_pw = ctypes.POINTER(Pointwise)
_SIGNATURES = {
    "dl_isa_supported": [_i32],
    "dl_get_isa": [],
    "dl_set_isa": [_i32],
    "dl_quantize_rows": [_p, _i64, _i64, _p, _p, _i32],
    "dl_binarize_rows": [_p, _i64, _i64, _p, _p, _i32],
    "dl_ternary_linear": [_p, _i64, _i64, _p, _i64, _p, _p, _p, _p, _i32, _f32, _f32],
    "dl_ternary_mm": [_p, _i64, _i64, _p, _i64, _p, _i32],
    "dl_binary_linear": [_p, _i64, _i64, _p, _i64, _p, _p, _p, _i32, _f32, _f32],
    "dl_binary_mm": [_p, _i64, _i64, _p, _i64, _p, _i32],
    "dl_xnor_linear": [_p, _i64, _i64, _p, _i64, _p, _p, _i32, _p, _i32, _f32, _f32],
    "dl_xnor_mm": [_p, _i64, _i64, _p, _i64, _p, _i32],
    "dl_depthwise3x3_nhwc": [_p, _i64, _i64, _i64, _i64, _i32, _i32, _p, _p, _p, _i32, _f32, _f32],
    "dl_conv3x3_nhwc": [_p, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i32, _i32, _p, _p, _p, _i32, _f32,
                        _f32],
    "dl_inverted_residual_nhwc": [_p, _i64, _i64, _i64, _pw, _p, _p, _i32, _f32, _f32, _pw, _i32, _p, _i32],
}


def compiler_available() -> bool:
    """True when the C++ compiler that torch's extension builder would use is on PATH."""
    return shutil.which(os.environ.get("CXX", "c++")) is not None


def build_dir() -> Path:
    """One folder per source version: checkouts of different versions on one machine (worktrees,
    CI jobs) would otherwise rebuild one shared library under each other's feet."""
    default = (
        Path.home() / ".cache" / "distill" / "kernels"
        / f"{platform.system()}-{platform.machine()}".lower() / _source_hash()
    )  # fmt: skip
    return Path(os.environ.get("DISTILL_KERNELS_BUILD_DIR", default))


def _source_hash() -> str:
    h = hashlib.sha256()
    for f in sorted(CSRC.iterdir()):
        if f.suffix in (".cpp", ".h"):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _build() -> ctypes.CDLL:
    """Compile (or reuse the cached build of) the kernels and bind their C entry points."""
    global build_seconds
    from torch.utils import cpp_extension

    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    # Headers are not hashed by torch's versioner: put our own hash of every
    # source and header in the flags so that any change rebuilds.
    flags = [*CFLAGS, f"-DDL_SRC_HASH={_source_hash()}"]
    target = out / "distill_lowbit.so"
    before = target.stat().st_mtime if target.exists() else None
    t0 = time.perf_counter()
    try:
        path = cpp_extension.load(
            name="distill_lowbit",
            sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            build_directory=str(out),
            is_python_module=False,
            verbose=os.environ.get("DISTILL_KERNELS_VERBOSE") == "1",
        )
    except Exception as e:  # the compiler's output is printed above by torch
        raise RuntimeError(
            f"distill kernels: building kernels/csrc in {out} failed ({e}); fix the build, or set "
            "DISTILL_KERNELS_BACKEND=torch to run the pure-torch reference instead"
        ) from e
    if not target.exists() or target.stat().st_mtime != before:
        build_seconds = time.perf_counter() - t0
    lib = ctypes.CDLL(str(path))
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int
    isa = os.environ.get("DISTILL_KERNELS_ISA")
    if isa:
        if isa not in ISAS:
            raise ValueError(f"DISTILL_KERNELS_ISA={isa!r}: expected one of {sorted(ISAS)}")
        if lib.dl_set_isa(ISAS[isa]) < 0:
            raise RuntimeError(f"DISTILL_KERNELS_ISA={isa}: this CPU or compiler does not support it")
    return lib


def backend() -> str:
    """'cpp' when the compiled kernels are in use, 'torch' for the pure-torch fallback."""
    global _backend, _lib
    if _backend is not None:
        return _backend
    with _lock:
        if _backend is not None:
            return _backend
        if os.environ.get("DISTILL_KERNELS_BACKEND", "").lower() == "torch":
            _backend = "torch"
        elif not compiler_available():
            warnings.warn(
                "distill kernels: no C++ compiler found (set CXX or install g++); packed ternary/binary "
                "ops fall back to the pure-torch reference, which is correct but slow",
                RuntimeWarning,
                stacklevel=2,
            )
            _backend = "torch"
        else:
            _lib = _build()  # raises on a broken build: never fall back silently
            _backend = "cpp"
    return _backend


def lib() -> ctypes.CDLL:
    """The loaded kernel library (builds it on first use)."""
    if backend() != "cpp" or _lib is None:
        raise RuntimeError("distill kernels: the compiled C++ kernels are not in use (backend 'torch')")
    return _lib


def isa() -> str:
    """Instruction set the compiled kernels use now."""
    code = lib().dl_get_isa()
    return {v: k for k, v in ISAS.items()}[code]


def supported_isas() -> list[str]:
    return [name for name, code in ISAS.items() if lib().dl_isa_supported(code)]


def set_isa(name: str | None) -> str:
    """Pin the instruction set (None: the best available); returns the one in use."""
    code = -1 if name is None else ISAS[name]
    if lib().dl_set_isa(code) < 0:
        raise RuntimeError(f"instruction set {name!r} is not supported on this CPU or by this compiler")
    return isa()


def ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def check(rc: int, what: str) -> None:
    if rc == -2:
        raise ValueError(f"{what}: the C++ kernel does not support these arguments")
    if rc != 0:
        raise MemoryError(f"{what}: the C++ kernel could not allocate its work buffers")
